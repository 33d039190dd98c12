"""The error type of the dataset-construction pipeline (MKEB §3.1).

A `BuildError` is a `MemlaError`, so the CLI prints it on one line and exits
with status 2: an unreachable endpoint, a rejected API key, a stage cache that
cannot be read.
"""

from __future__ import annotations

from memla.errors import MemlaError


class BuildError(MemlaError):
    """A dataset-construction stage failed (network, remote service or cache)."""


class ServiceError(BuildError):
    """A remote service (SPARQL, LLM, translation API) failed after all retries.

    Attributes:
        service: the client's name (``"sparql"``, ``"llm"``, ``"baidu"``).
        status: the last HTTP status, or ``None`` for timeouts and connection errors.
    """

    def __init__(self, message: str, *, service: str, status: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
