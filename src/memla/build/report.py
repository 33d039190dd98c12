"""The build report: counts per stage, drop reasons, requests made (MKEB §3.1).

Written as JSON next to the dataset (``data.json`` -> ``data.report.json``) and
printed as tables by ``memla build``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memla.atomic import write_json_atomic


@dataclass
class BuildReport:
    """What a build did.

    Attributes:
        config: the build settings.
        stages: ``{stage: {"count": ..., "cached": bool, ...}}`` in pipeline order.
        drops: ``{"stage:reason": count}``.
        dropped: one entry per drop: ``{"stage", "item", "reason"}`` (and ``"lang"``
            for translation drops).
        requests: ``{service: RequestStats.as_dict()}`` for this run.
        validation: errors and warnings `memla.data.validate` found.
        languages: records per language in the output.
        records: records written.
        output: the dataset file.
    """

    config: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    drops: Counter = field(default_factory=Counter)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation: dict[str, int] = field(default_factory=lambda: {"errors": 0, "warnings": 0})
    languages: dict[str, int] = field(default_factory=dict)
    records: int = 0
    output: str | None = None

    def drop(self, stage: str, item: Any, reason: str, **extra: Any) -> None:
        """Record one dropped item and count its reason."""
        self.drops[f"{stage}:{reason}"] += 1
        self.dropped.append({"stage": stage, "item": item, "reason": reason, **extra})

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "output": self.output,
            "records": self.records,
            "languages": dict(self.languages),
            "stages": self.stages,
            "drops": dict(sorted(self.drops.items())),
            "requests": self.requests,
            "validation": dict(self.validation),
            "config": self.config,
            "dropped": self.dropped,
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically); returns the path."""
        path = Path(path)
        write_json_atomic(path, self.as_dict(), indent=2)
        return path


def report_path(out: str | os.PathLike[str]) -> Path:
    """Where the report of a dataset goes: ``data.json`` -> ``data.report.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.report.json")
