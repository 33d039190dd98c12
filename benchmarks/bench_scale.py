"""Serial vs Ray vs shards on the same records and methods: wall time, cells/s, and Ray's per-unit overhead.

    python benchmarks/bench_scale.py                       # 8 records x ft,memla,rome, en -> en,zh
    python benchmarks/bench_scale.py --records 4 --methods ft --model tests-tiny-dir

Three ways to run one `memla bench` (each a fresh process that loads the model):

- serial: one process, 2 torch threads;
- Ray: `--ray --workers 2 --threads-per-worker 1` (a local Ray instance);
- shards: `--shard 0/2` and `--shard 1/2` at the same time (1 thread each), then `memla bench merge`.

Ray and the shards both compute every cell with one thread, so their cells must be bitwise
equal; the script checks it.  Then, on one Ray worker holding the model: the round trip of
a unit-sized result (scheduling + transfer, `Worker.echo`, median of 50) and the driver's
own time per unit (appending the lines, rewriting the manifest), and the efficiency they
imply at 8 and 64 workers: ``u / (u + o_worker) * min(1, u / (W * o_driver))`` with ``u`` the
median unit time of the serial run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_cmd(args, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "memla", "bench", "--dataset", "mkeb-mini", "--split", "test", "--sample",
            str(args.records), "--methods", args.methods, "--source", "en", "--targets", args.targets,
            "--model", args.model, "--out", str(out), "--no-progress", *extra]


def run_timed(cmds: list[list[str]], threads: int) -> float:
    """Start the commands together; seconds until the last one ends."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p, c in zip(procs, cmds):
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(c)}\n{err[-2000:]}")
    return time.perf_counter() - t0


def cells(run: Path) -> dict:
    out = {}
    for raw in (run / "results.jsonl").read_text(encoding="utf-8").splitlines():
        line = json.loads(raw)
        for key in ("edit_s", "eval_s"):
            line.pop(key, None)
        if "edit_info" in line:
            line["edit_info"] = {k: v for k, v in line["edit_info"].items() if not k.startswith("seconds")}
        out[(line["method"], line["record"], line["ls"], line["lt"])] = line
    return out


def unit_seconds(run: Path) -> list[float]:
    """Edit + evaluation seconds of every (record, ls) unit of a run (all its methods)."""
    per_group = {}
    for raw in (run / "results.jsonl").read_text(encoding="utf-8").splitlines():
        line = json.loads(raw)
        if line["status"] == "ok":
            per_group[(line["record"], line["ls"], line["method"])] = line["edit_s"] + line["eval_s"]
    units = {}
    for (record, ls, _), seconds in per_group.items():
        units[(record, ls)] = units.get((record, ls), 0.0) + seconds
    return list(units.values())


def overheads(args, serial: Path) -> tuple[float, float]:
    """(median Ray round trip of one unit's lines, median driver time per unit) in seconds."""
    import ray

    from memla.evaluate.parallel import Worker, WorkerSpec
    from memla.evaluate.store import ResultStore, read_manifest, write_manifest

    lines = [json.loads(x) for x in (serial / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    first = (lines[0]["record"], lines[0]["ls"])
    payload = [x for x in lines if (x["record"], x["ls"]) == first]  # one unit's lines
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        echo = ray.remote(Worker).options(num_cpus=1)
        manifest = read_manifest(serial)
        spec = WorkerSpec(model=args.model, dtype="float32", device="cpu", device_map=None, threads=1,
                          methods=tuple(args.methods.split(",")), configs={}, targets=tuple(manifest["targets"]),
                          seed=0, f1_unit="tokens", fingerprint=manifest["model_fingerprint"])
        worker = echo.remote(spec)
        ray.get(worker.echo.remote(payload))  # warm up
        trips = []
        for _ in range(50):
            t0 = time.perf_counter()
            ray.get(worker.echo.remote(payload))
            trips.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    driver = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "results.jsonl")
        with store.writer():
            for _ in range(20):
                t0 = time.perf_counter()
                for line in payload:
                    store.append(line)
                write_manifest(tmp, manifest)
                driver.append(time.perf_counter() - t0)
    return statistics.median(trips), statistics.median(driver)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=8)
    p.add_argument("--methods", default="ft,memla,rome")
    p.add_argument("--targets", default="en,zh")
    p.add_argument("--model", default="default")
    p.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one)")
    args = p.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    base.mkdir(parents=True, exist_ok=True)

    walls = {"serial (1 process x 2 threads)": run_timed([bench_cmd(args, base / "serial")], threads=2)}
    walls["Ray (2 workers x 1 thread)"] = run_timed(
        [bench_cmd(args, base / "ray", "--ray", "--workers", "2", "--threads-per-worker", "1")], threads=1)
    shards = [bench_cmd(args, base / f"shard{i}", "--shard", f"{i}/2") for i in range(2)]
    merge = [[sys.executable, "-m", "memla", "bench", "merge", str(base / "shard0"), str(base / "shard1"),
              "--out", str(base / "merged")]]
    walls["2 shards (2 processes x 1 thread) + merge"] = run_timed(shards, threads=1) + run_timed(merge, threads=1)

    n_cells = len(cells(base / "serial"))
    same = cells(base / "ray") == cells(base / "merged")
    reference = walls["serial (1 process x 2 threads)"]
    print(f"{args.records} records x {args.methods} (+ unedited), en -> {args.targets}: {n_cells} cells; "
          f"model {args.model}; one run each (wall time includes process start and model loading)\n")
    print("| run | wall s | cells/s | speed-up vs serial |")
    print("|---|---:|---:|---:|")
    for name, wall in walls.items():
        print(f"| {name} | {wall:.1f} | {n_cells / wall:.2f} | {reference / wall:.2f}x |")
    print(f"\nRay and shard cells bitwise identical (both 1 thread per process): {'yes' if same else 'NO'}")

    units = unit_seconds(base / "serial")
    u = statistics.median(units)
    trip, driver = overheads(args, base / "serial")
    print(f"\nmedian unit (record x ls, all methods) in the serial run: {u:.2f} s over {len(units)} units")
    print(f"Ray round trip of one unit's lines (median of 50): {1000 * trip:.2f} ms; "
          f"driver time per unit (append + manifest, median of 20): {1000 * driver:.2f} ms\n")
    print("| workers | efficiency u/(u+o) x min(1, u/(W*o_driver)) |")
    print("|---:|---:|")
    for w in (8, 64):
        eff = u / (u + trip) * min(1.0, u / (w * driver))
        print(f"| {w} | {eff:.4f} |")


if __name__ == "__main__":
    main()
