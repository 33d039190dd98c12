"""Atomic writes (`memla.atomic`) and the cache of model-sampled texts (`memla.samples.cached_samples`)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny import tiny_model

from memla.atomic import atomic_path, write_atomic, write_json_atomic
from memla.models import down_param_names
from memla.samples import cached_samples, sample_texts


def test_write_replaces_the_file_keeps_its_mode_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "data.json"
    write_json_atomic(path, {"城市": "東京"}, indent=2)
    assert json.loads(path.read_text(encoding="utf-8")) == {"城市": "東京"}
    assert path.read_text(encoding="utf-8").endswith("}\n") and "東京" in path.read_text(encoding="utf-8")
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    os.chmod(path, 0o640)
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_cached_samples_draw_once_per_model_and_recipe_and_survive_an_edit():
    model, tok = tiny_model("llama")
    calls = []

    def draw(seed):
        def run():
            calls.append(seed)
            return sample_texts(model, tok, ["The", "Le"], new_tokens=4, seed=seed)
        return run

    first = cached_samples(model, tok, {"kind": "test", "seed": 0}, draw(0))
    assert len(first) == 2 and first[0].startswith("The") and first[1].startswith("Le")
    assert cached_samples(model, tok, {"kind": "test", "seed": 0}, draw(0)) == first and calls == [0]
    cached_samples(model, tok, {"kind": "test", "seed": 1}, draw(1))
    assert calls == [0, 1]  # another recipe draws its own texts
    downs = down_param_names(model)
    down = next(n for n, _ in model.named_parameters() if n in downs)
    other = next(n for n, _ in model.named_parameters() if n not in downs)
    with torch.no_grad():
        model.get_parameter(down).add_(1.0)  # an edit of a down-projection keeps the cached texts
    assert cached_samples(model, tok, {"kind": "test", "seed": 0}, draw(0)) == first and calls == [0, 1]
    with torch.no_grad():
        model.get_parameter(other).add_(1.0)  # another model: sampled afresh
    cached_samples(model, tok, {"kind": "test", "seed": 0}, draw(0))
    assert calls == [0, 1, 0]
