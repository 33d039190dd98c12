"""Spreading `memla bench`: shards + merge, and a local Ray cluster, give the serial run's cells exactly.

Serial runs here use one torch thread, as each Ray worker does (`--threads-per-worker 1`):
CPU kernels split their sums by thread, so only equal thread counts are bitwise equal.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_eval_support import small_records
from tiny import save_tiny

from memla.cli import main
from memla.data import load_dataset
from memla.evaluate.runner import plan_units

TARGETS = ["en", "zh"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(small_records(), ensure_ascii=False), encoding="utf-8")
    return path


def bench(data: Path, out: Path, model_dir: str, *extra: str) -> int:
    return main(["bench", "--dataset", str(data), "--methods", "ft", "--source", "en,zh", "--targets", ",".join(TARGETS),
                 "--model", model_dir, "--out", str(out), "--no-progress", *extra])


def cells(run: Path) -> dict[tuple, dict]:
    """The run's lines by cell, without wall-clock fields (the only ones two computations may differ in)."""
    out = {}
    for raw in (run / "results.jsonl").read_text(encoding="utf-8").splitlines():
        line = json.loads(raw)
        key = (line["method"], line["record"], line["ls"], line["lt"])
        assert key not in out, f"cell {key} written twice"
        line.pop("edit_s", None), line.pop("eval_s", None)
        if "edit_info" in line:
            line["edit_info"] = {k: v for k, v in line["edit_info"].items() if not k.startswith("seconds")}
        out[key] = line
    return out


@pytest.fixture
def serial(tmp_path, data, model_dir) -> dict[tuple, dict]:
    """The reference: one process, one thread (the autouse fixture of conftest sets it)."""
    assert bench(data, tmp_path / "serial", model_dir) == 0
    return cells(tmp_path / "serial")


def test_units_partition_into_shards_deterministically():
    records = load_dataset("mkeb-mini")[:5]
    methods, sources = ["unedited", "ft"], ["en", "zh"]
    everything = plan_units(records, sources, methods, TARGETS, set())
    shards = [plan_units(records, sources, methods, TARGETS, set(), shard=(i, 3)) for i in range(3)]
    assert sorted(u.index for s in shards for u in s) == [u.index for u in everything] == list(range(10))
    assert all(u.index % 3 == i for i, s in enumerate(shards) for u in s)
    # a resumed plan keeps the numbering: done cells drop units, they do not shift the partition
    done = {(m, "0", "en", lt) for m in methods for lt in TARGETS}  # record 0 in en finished
    assert [u.index for u in plan_units(records, sources, methods, TARGETS, done, shard=(1, 3))] == [1, 4, 7]
    assert [u.index for u in plan_units(records, sources, methods, TARGETS, done, shard=(0, 3))] == [3, 6, 9]


def test_two_shards_merged_equal_the_serial_run(tmp_path, data, model_dir, serial, capsys):
    assert bench(data, tmp_path / "s0", model_dir, "--shard", "0/2") == 0
    assert bench(data, tmp_path / "s1", model_dir, "--shard", "1/2") == 0
    assert {k[1:3] for k in cells(tmp_path / "s0")}.isdisjoint({k[1:3] for k in cells(tmp_path / "s1")})
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]) == 0
    assert "complete" in capsys.readouterr().out
    assert cells(tmp_path / "merged") == serial
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "shard" not in manifest and len(manifest["sessions"]) == 2
    assert manifest["timings"]["ft"]["edits"] == 6
    assert main(["report", str(tmp_path / "merged"), "--quiet", "--format", "md"]) == 0


def test_merge_reports_missing_and_duplicate_cells_and_refuses_mixed_runs(tmp_path, data, model_dir, capsys):
    assert bench(data, tmp_path / "s0", model_dir, "--shard", "0/3") == 0
    assert bench(data, tmp_path / "s1", model_dir, "--shard", "1/3") == 0
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 2
    out = capsys.readouterr().out
    assert "8 cell(s) missing" in " ".join(out.split())  # shard 2 of 3: 2 units x 2 methods x 2 targets
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["status"] == "incomplete"
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "s0"), str(tmp_path / "s1"),
                 "--out", str(tmp_path / "m2")]) == 2
    assert "(8 duplicate cell(s) dropped)" in " ".join(capsys.readouterr().out.split())
    assert bench(data, tmp_path / "seed1", model_dir, "--shard", "2/3", "--seed", "1") == 0
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "seed1"), "--out", str(tmp_path / "m3")]) == 2
    assert "are not shards of one run: seed 1 != 0" in capsys.readouterr().err
    assert not (tmp_path / "m3").exists()


def test_a_resume_must_use_the_same_shard(tmp_path, data, model_dir, capsys):
    assert bench(data, tmp_path / "s0", model_dir, "--shard", "0/2") == 0
    assert bench(data, tmp_path / "s0", model_dir, "--shard", "1/2") == 2
    assert "shard '0/2' != '1/2'" in capsys.readouterr().err
    assert bench(data, tmp_path / "s0", model_dir, "--shard", "0/2") == 0  # the same shard resumes
    assert bench(data, tmp_path / "s1", model_dir, "--shard", "1/2") == 0
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    assert bench(data, tmp_path / "m", model_dir, "--shard", "0/2") == 2  # a merged run is not a shard
    assert "shard None != '0/2'" in capsys.readouterr().err


# --------------------------------------------------------------------------- Ray (a local cluster)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def ray_bench(data: Path, out: Path, model_dir: str, *, on_unit=None, pools: list | None = None) -> int:
    """`memla bench --ray --workers 2 --threads-per-worker 1`, with a hook on finished units."""
    from memla.evaluate import parallel

    real = parallel.RayExecutor

    def executor(*args, **kwargs):
        pool = real(*args, **kwargs, on_unit=on_unit)
        (pools if pools is not None else []).append(pool)
        return pool

    parallel.RayExecutor = executor  # the CLI imports it from memla.evaluate.parallel when it runs
    try:
        return bench(data, out, model_dir, "--ray", "--workers", "2", "--threads-per-worker", "1")
    finally:
        parallel.RayExecutor = real


def test_ray_pool_equals_the_serial_run(tmp_path, data, model_dir, serial, local_ray):
    assert ray_bench(data, tmp_path / "ray", model_dir) == 0
    assert cells(tmp_path / "ray") == serial
    session = json.loads((tmp_path / "ray" / "manifest.json").read_text())["sessions"][-1]
    assert session["torch_threads"] == 1 and session["ray"]["workers"] == 2 and session["status"] == "complete"


def test_a_killed_worker_is_replaced_and_its_unit_retried(tmp_path, data, model_dir, serial, local_ray):
    pools = []

    finished, killed, later = [], [], set()

    def kill_a_worker(unit):
        finished.append(unit)
        actor = pools[0].actors[0]
        if len(finished) == 1:  # SIGKILL a worker process; it holds a unit in flight or gets the next one
            killed.append(ray.get(actor.pid.remote()))
            os.kill(killed[0], signal.SIGKILL)
        elif len(finished) == 6:
            later.add(ray.get(actor.pid.remote()))

    assert ray_bench(data, tmp_path / "ray", model_dir, on_unit=kill_a_worker, pools=pools) == 0
    assert len(finished) == 6 and later and killed[0] not in later  # the actor lives on in a new process
    assert cells(tmp_path / "ray") == serial  # every cell once, the same values


def test_a_killed_driver_resumes(tmp_path, data, model_dir, serial, local_ray):
    finished = []

    def stop(unit):
        finished.append(unit)
        if len(finished) == 2:  # the driver dies after writing its first unit
            raise KeyboardInterrupt

    assert ray_bench(data, tmp_path / "ray", model_dir, on_unit=stop) == 130
    assert 0 < len(cells(tmp_path / "ray")) < len(serial)
    assert ray_bench(data, tmp_path / "ray", model_dir) == 0
    assert cells(tmp_path / "ray") == serial
