"""Shared helpers of the evaluation tests (no tests here): small datasets and test-only editors.

The editors are registered per test through the `fake_editors` fixture (and
removed afterwards), so the real registry is left as it was.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from memla.data import Record
from memla.editors import base
from memla.editors.base import EditResult
from memla.errors import EditError
from memla.models import arch_spec


def _fact(prompt, subject, new, true):
    return {"prompt": prompt, "subject": subject, "target_new": new, "target_true": true}


def small_records() -> list[dict]:
    """Three records in en / zh / ja / th (+ fr for two): one question-form, one without fr."""
    base_record = {
        "relation": "P36",
        "relation_description": "capital",
        "edit": {
            "en": _fact("The capital of {} is", "France", "Rome", "Paris"),
            "zh": _fact("{}的首都是", "法国", "罗马", "巴黎"),
            "ja": _fact("{}の首都は", "フランス", "ローマ", "パリ"),
            "th": _fact("เมืองหลวงของ{}คือ", "ฝรั่งเศส", "โรม", "ปารีส"),
            "fr": _fact("La capitale de {} est", "la France", "Rome", "Paris"),
        },
        "paraphrase_prompts": {"en": ["France's capital is", "The capital city of France is"], "zh": ["法国首都是"],
                               "ja": ["フランスの首都の名前は"], "th": ["เมืองหลวงของประเทศฝรั่งเศสคือ"],
                               "fr": ["La capitale française est"]},
        "neighborhood_prompts": {"en": ["The capital of Japan is"], "zh": ["日本的首都是"], "ja": ["日本の首都は"],
                                 "th": ["เมืองหลวงของญี่ปุ่นคือ"], "fr": ["La capitale du Japon est"]},
        "neighborhood_answers": {"en": ["Tokyo"], "zh": ["东京"], "ja": ["東京"], "th": ["โตเกียว"], "fr": ["Tokyo"]},
        "multi_hop_questions": {"en": ["The capital of the country of the Eiffel Tower is"], "zh": ["埃菲尔铁塔所在国家的首都是"]},
        "multi_hop_new_answer": {"en": "Rome", "zh": "罗马"},
    }
    r0 = {"example_id": 0, **copy.deepcopy(base_record)}
    r1 = {"example_id": 1, **copy.deepcopy(base_record)}
    r1["edit"]["en"] = _fact("The capital of {} is", "Italy", "Paris", "Rome")
    del r1["edit"]["fr"]
    r2 = {"example_id": 2, **copy.deepcopy(base_record), "templated": False}
    r2["edit"] = {k: _fact(v["prompt"].replace("{}", v["subject"]), v["subject"], v["target_new"], v["target_true"])
                  for k, v in r2["edit"].items()}
    return [r0, r1, r2]


def small_dataset(tmp_path: Path) -> Path:
    """Write `small_records` to ``tmp_path/small.json``."""
    path = tmp_path / "small.json"
    path.write_text(json.dumps(small_records(), ensure_ascii=False), encoding="utf-8")
    return path


def as_records(raw: list[dict]) -> list[Record]:
    """Build `Record` objects directly (no validation)."""
    return [Record.from_dict(d) for d in raw]


@dataclass(frozen=True)
class ShiftConfig:
    """Config of the test-only random-shift editor.

    Attributes:
        scale: standard deviation of the random ΔW.
        layer: layer whose down-projection moves.
        sleep_s: pause per edit (to catch a run mid-way).
    """

    scale: float = 0.05
    layer: int = 0
    sleep_s: float = 0.0


class ShiftEditor:
    """Test-only editor: a seeded random ΔW on one down-projection; refuses question-form records."""

    name = "test-shift"

    def __init__(self, config: ShiftConfig) -> None:
        self.config = config

    def edit(self, model, tokenizer, request) -> EditResult:
        if not request.templated:
            raise EditError("test-shift needs the subject position (question-form record)")
        time.sleep(self.config.sleep_s)
        name = arch_spec(model).down_weight_name(self.config.layer)
        weight = dict(model.named_parameters())[name]
        delta = torch.randn(weight.shape) * self.config.scale  # (d_model, d_ff) or (d_ff, d_model)
        return EditResult(deltas={name: delta}, info={"norm": float(delta.norm()), "lang": request.lang})


@dataclass(frozen=True)
class PrefixConfig:
    """Config of the test-only in-context editor (no fields)."""


class PrefixEditor:
    """Test-only IKE-style editor: a demonstration prefix, no weight change."""

    name = "test-prefix"

    def __init__(self, config: PrefixConfig) -> None:
        self.config = config

    def edit(self, model, tokenizer, request) -> EditResult:
        return EditResult(prefix=f"{request.text} {request.target_new}.\n")


@dataclass(frozen=True)
class MutateConfig:
    """Config of the misbehaving test editor (no fields)."""


class MutateEditor:
    """Test-only editor that (wrongly) changes the model in place."""

    name = "test-mutate"

    def __init__(self, config: MutateConfig) -> None:
        self.config = config

    def edit(self, model, tokenizer, request) -> EditResult:
        next(model.parameters()).data.add_(1.0)
        return EditResult()


TEST_EDITORS = {
    "test-shift": (ShiftEditor, ShiftConfig),
    "test-prefix": (PrefixEditor, PrefixConfig),
    "test-mutate": (MutateEditor, MutateConfig),
}


def register_test_editors(registry: dict) -> None:
    """Put the test editors into a registry dict (the real one or a monkeypatched copy)."""
    for name, (cls, cfg) in TEST_EDITORS.items():
        registry[name] = base.EditorEntry(name, cls, cfg, cls.__doc__.splitlines()[0])


@pytest.fixture
def fake_editors(monkeypatch):
    """Register the test-only editors for one test."""
    base.registry()  # discover the real editors first, so discovery cannot run later and miss ours
    for name, (cls, cfg) in TEST_EDITORS.items():
        monkeypatch.setitem(base._REGISTRY, name, base.EditorEntry(name, cls, cfg, cls.__doc__.splitlines()[0]))
    return TEST_EDITORS
