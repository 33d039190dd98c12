"""The options of `memla bench` that spread a run: ``--ray`` (a pool of workers) and ``--shard I/N``.

Examples::

    memla bench ... --out runs/x --ray --workers 2 --threads-per-worker 1     # local Ray instance
    memla bench ... --out runs/x --ray ray://head:10001 --workers 16 --gpus-per-worker 1
    memla bench ... --out runs/x-0 --shard 0/2   # and --shard 1/2 elsewhere, then:
    memla bench merge runs/x-0 runs/x-1 --out runs/x
"""

from __future__ import annotations

import argparse
import re

from memla.errors import MemlaError

LOCAL = "local"


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ray``, ``--workers``, ``--threads-per-worker``, ``--gpus-per-worker`` and ``--shard``."""
    group = parser.add_argument_group("running at scale")
    group.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                       help="run the units (record x source, all methods) on a pool of Ray workers, each loading the "
                       "model once; ADDRESS of a running cluster (e.g. ray://head:10001), or none for a local Ray "
                       "instance (needs pip install 'memla[ray]'); results equal a serial run's")
    group.add_argument("--workers", type=int, default=2, help="Ray workers (default: %(default)s)")
    group.add_argument("--threads-per-worker", type=int, default=1,
                       help="torch threads of each Ray worker (default: %(default)s); a serial run with as many "
                       "threads gives bitwise the same scores on CPU")
    group.add_argument("--gpus-per-worker", type=float, default=0.0,
                       help="GPUs each Ray worker reserves (default: %(default)s)")
    group.add_argument("--shard", default=None, metavar="I/N",
                       help="run only shard I of N (units i with i %% N == I, a fixed partition), e.g. one per SLURM "
                       "array task; join the shard folders with `memla bench merge`")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/4"`` -> ``(1, 4)``; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise MemlaError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4, got {text!r}")
    return int(match[1]), int(match[2])


def check_scale(args: argparse.Namespace) -> tuple[int, int] | None:
    """Refuse inconsistent scale options before anything loads; returns the shard."""
    shard = parse_shard(args.shard)
    if args.ray is None:
        changed = [flag for flag, value, default in (("--workers", args.workers, 2),
                                                      ("--threads-per-worker", args.threads_per_worker, 1),
                                                      ("--gpus-per-worker", args.gpus_per_worker, 0.0))
                   if value != default]
        if changed:
            raise MemlaError(f"{', '.join(changed)} only apply with --ray")
    else:
        from memla.evaluate.parallel import import_ray

        if args.workers < 1 or args.threads_per_worker < 1 or args.gpus_per_worker < 0:
            raise MemlaError("--workers and --threads-per-worker must be at least 1, --gpus-per-worker at least 0")
        on_gpu = str(getattr(args, "device", "cpu")).startswith("cuda") or getattr(args, "device_map", None)
        if on_gpu and args.gpus_per_worker == 0:
            raise MemlaError("--ray on GPUs needs --gpus-per-worker (Ray hides the GPUs from workers that reserve none)")
        import_ray()
    if args.sequential is not None and (args.ray is not None or shard is not None):
        raise MemlaError("--sequential edits one model in order; it cannot be spread with --ray or --shard")
    return shard


def scale_flags(args: argparse.Namespace) -> list[str]:
    """The shard, spelled out for the canonical command line (the Ray options do not change results)."""
    return [] if args.shard is None else ["--shard", args.shard]


def make_executor(args: argparse.Namespace, model, *, methods: list[str], configs: dict, targets: list[str]):
    """The `memla.evaluate.parallel.RayExecutor` asked for by ``--ray``, or None for a serial run.

    The workers load the driver's model on the driver's device (or device map) and dtype;
    they check its weights fingerprint against the driver's.
    """
    if args.ray is None:
        return None
    from memla.evaluate.parallel import RayExecutor, WorkerSpec
    from memla.evaluate.store import compute_settings
    from memla.models import model_fingerprint

    spec = WorkerSpec(model=args.model or "default", dtype=args.dtype, device=compute_settings(model)["device"],
                      device_map=args.device_map, threads=args.threads_per_worker, methods=tuple(methods),
                      configs=configs, targets=tuple(targets), seed=args.seed, f1_unit=args.f1_unit,
                      fingerprint=model_fingerprint(model))
    return RayExecutor(spec, workers=args.workers, address=None if args.ray == LOCAL else args.ray,
                       gpus_per_worker=args.gpus_per_worker)
