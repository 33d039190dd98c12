"""Data-parallel `memla bench` on Ray: a pool of actors, each loading the model once, runs the units.

The driver (`memla.evaluate.runner.run_bench`) plans the units (record × ls × the methods
still to run), hands them to `RayExecutor`, and stays the only writer of ``results.jsonl``:
a worker returns a unit's lines and the driver appends them, so every cell is written
exactly once.  Each worker builds the same `memla.evaluate.runner.UnitRunner` a serial run
uses, and every edit is seeded from the run seed alone, so the lines equal a serial run's
(bitwise on CPU with the same torch thread count per worker).

Faults: a worker killed mid-unit is restarted by Ray (a new process, which reloads the
model) and the unit runs again there; nothing reaches ``results.jsonl`` twice, since only
a finished unit's lines come back.  A unit that kills its worker `MAX_ATTEMPTS` times
stops the run.  A killed driver loses the units in flight only; the same command resumes.

Ray is an optional dependency (``pip install 'memla[ray]'``).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memla.errors import MemlaError
from memla.evaluate.runner import Unit, UnitRunner, resolve_methods

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a unit whose worker dies this many times is a bug, not bad luck
INSTALL_HINT = "Ray is not installed; install the extra: pip install 'memla[ray]'"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the driver's setting: the model, the methods and the run settings.

    Attributes:
        model: model name or path, as given to `memla.models.load_model`.
        dtype: weight dtype name ("float32", ...).
        device: device(s) of the driver's model as `compute_settings` spells them ("cpu", "cuda:0", ...).
        device_map: ``"auto"`` to split the model over the worker's GPUs (then ``device`` is only recorded).
        threads: torch threads per worker.
        methods: method names, "unedited" first.
        configs: ``{method: config dict}``.
        targets: target languages.
        seed: run seed.
        f1_unit: NS/QS F1 unit.
        fingerprint: the driver's model fingerprint; a worker whose model differs refuses to start.
    """

    model: str
    dtype: str
    device: str
    device_map: str | None
    threads: int
    methods: tuple[str, ...]
    configs: Mapping[str, Any]
    targets: tuple[str, ...]
    seed: int
    f1_unit: str
    fingerprint: str


class Worker:
    """A Ray actor body: loads the model once and runs units with a `UnitRunner`."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from memla.models import load_model, model_fingerprint

        torch.set_num_threads(spec.threads)
        device = "cpu" if spec.device_map else spec.device  # with a device map, accelerate places the layers
        model, tokenizer = load_model(spec.model, dtype=getattr(torch, spec.dtype), device=device,
                                      device_map=spec.device_map)
        if model_fingerprint(model) != spec.fingerprint:
            raise MemlaError(f"worker on {os.uname().nodename}: model {spec.model!r} differs from the driver's "
                             "(weights fingerprint); every node must see the same model files")
        resolved = resolve_methods(spec.methods, spec.configs)
        self.runner = UnitRunner(model, tokenizer, resolved, targets=spec.targets, seed=spec.seed,
                                 f1_unit=spec.f1_unit, fingerprint=spec.fingerprint)

    def run(self, unit: Unit) -> list[tuple[str, Any, str, list[dict[str, Any]]]]:
        """All ``(method, record, ls, lines)`` of one unit."""
        return list(self.runner.run(unit))

    def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()

    def echo(self, payload: Any) -> Any:
        """Return ``payload``: one round trip, to measure scheduling and transfer overhead."""
        return payload


def import_ray():
    """The ``ray`` module, or a `MemlaError` with the install hint."""
    try:
        import ray
    except ImportError:
        raise MemlaError(INSTALL_HINT) from None
    return ray


def start_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    """Connect to the cluster at ``address`` or start a local Ray instance (``address`` None); reuse a running one."""
    ray = import_ray()
    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as err:
        raise MemlaError(f"--ray {address}: cannot connect to the Ray cluster ({err})") from None


def spawn_workers(spec: WorkerSpec, workers: int, *, gpus_per_worker: float = 0.0) -> list:
    """``workers`` Ray actors running `Worker`: Ray restarts a dead one and runs its unit again there."""
    ray = import_ray()
    actor = ray.remote(Worker).options(num_cpus=spec.threads, num_gpus=gpus_per_worker, max_restarts=-1,
                                       max_task_retries=MAX_ATTEMPTS - 1)
    return [actor.remote(spec) for _ in range(workers)]


class RayExecutor:
    """Runs units on Ray actors and yields their lines as units finish (an ``executor`` for `run_bench`).

    Args:
        spec: what every worker loads.
        workers: number of actors.
        address: Ray cluster address, or None for a local Ray instance.
        gpus_per_worker: GPUs each actor reserves (0 on CPU).
        on_unit: called with each finished `Unit` (before its lines are yielded).
    """

    def __init__(self, spec: WorkerSpec, *, workers: int, address: str | None = None, gpus_per_worker: float = 0.0,
                 on_unit: Callable[[Unit], None] | None = None) -> None:
        if workers < 1:
            raise MemlaError(f"--workers must be at least 1, got {workers}")
        self.spec, self.workers, self.address = spec, workers, address
        self.gpus_per_worker, self.on_unit = gpus_per_worker, on_unit
        self.actors: list = []

    @property
    def session_info(self) -> dict[str, Any]:
        """What the run's manifest records of this executor: the workers' threads and the pool."""
        return {"torch_threads": self.spec.threads, "device": self.spec.device,
                "ray": {"address": self.address or "local", "workers": self.workers,
                        "gpus_per_worker": self.gpus_per_worker}}

    def __call__(self, units: Sequence[Unit]) -> Iterator[tuple[str, Any, str, list[dict[str, Any]]]]:
        ray = import_ray()
        from ray.exceptions import RayActorError, WorkerCrashedError

        start_ray(self.address, num_cpus=self.workers * self.spec.threads if self.address is None else None)
        self.actors = spawn_workers(self.spec, self.workers, gpus_per_worker=self.gpus_per_worker)
        queue, in_flight = deque(units), {}

        def submit(actor) -> None:
            if queue:
                unit = queue.popleft()
                in_flight[actor.run.remote(unit)] = (unit, actor)

        for actor in self.actors:
            submit(actor)
        try:
            while in_flight:
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                unit, actor = in_flight.pop(ref)
                try:
                    groups = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as err:
                    cause = " ".join(str(getattr(err, "cause", None) or err).split())[:300]
                    raise MemlaError(f"a worker failed on record {unit.record.example_id} ({unit.ls}) after "
                                     f"{MAX_ATTEMPTS} attempts ({type(err).__name__}: {cause}); the run stops here "
                                     "and resumes with the same command") from None
                if self.on_unit is not None:
                    self.on_unit(unit)
                yield from groups
                submit(actor)
        finally:
            for actor in self.actors:
                ray.kill(actor)
