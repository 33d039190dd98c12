"""PMET (Li et al. 2024) on tiny random models: joint targets, square-root spreading, restore, config.

See tests/test_rome.py for why the tiny-model settings differ from the paper's.
"""

from __future__ import annotations

import math

import pytest
import torch
from edit_support import KV_TINY, margin
from tiny import tiny_model

from memla.config import dump_config, load_config
from memla.editors import EditRequest, apply, get_editor
from memla.editors.kv import capture, context_prefixes, kl_rows, locate_request, optimise_targets, rewriting_rows
from memla.editors.pmet import PmetConfig, PmetEditor
from memla.errors import MemlaError
from memla.models import arch_spec

TINY = KV_TINY


def request() -> EditRequest:
    return EditRequest(prompt="The capital of {}", subject="France", target_new="Tokyo", target_true="Paris", lang="en")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3_text"])
def test_edit_raises_new_over_true_and_restores_exactly(arch):
    model, tok = tiny_model(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m0 = margin(model, tok, request())
    result = get_editor("pmet", TINY).edit(model, tok, request())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    spec = arch_spec(model)
    assert set(result.deltas) == {spec.down_weight_name(layer) for layer in result.info["layers"]}  # MLPs only
    with apply(model, result):
        assert margin(model, tok, request()) > max(m0, 0.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert result.info["method"] == "pmet" and result.info["subject_fallback"] is False


def test_targets_are_optimised_jointly_at_attention_and_mlp():
    model, tok = tiny_model("llama")
    editor = PmetEditor(PmetConfig(**TINY))
    sites = editor.target_sites(model, 1)
    assert sites == ["model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"]
    rows, _ = rewriting_rows(tok, request(), context_prefixes(model, tok, ((4, 4),)))
    found = editor.optimise(model, tok, rows + kl_rows(tok, request(), ("{} is a",)), sites)
    assert set(found.delta) == set(sites) and all(d.norm() > 0 for d in found.delta.values())
    assert found.p_new[-1] > found.p_new[0]


def test_square_root_spreading():
    model, tok = tiny_model("llama")
    editor = PmetEditor(PmetConfig(**TINY))
    bare = [locate_request(tok, request())]
    z = torch.randn(32, 1)
    site = editor.target_sites(model, 1)[-1]
    cur = capture(model, tok, [bare[0].prompt_ids], [bare[0].pos], [site], inputs=False)[site].T
    for left in (1, 2, 4):
        r = editor.residuals(model, tok, bare, z, 1, 0, left, torch.zeros(32, 1))
        torch.testing.assert_close(r, ((z - cur) / math.sqrt(left)).double())


def test_pmet_schedule_stops_once_the_target_is_argmax_and_kl_is_small():
    model, tok = tiny_model("llama")
    rows, _ = rewriting_rows(tok, request(), ("",))
    site = arch_spec(model).path(arch_spec(model).mlp_down, 1)
    kw = dict(steps=60, lr=0.5, weight_decay=0.0, kl_factor=0.0, clamp_norm_factor=1e4, stop_loss=0.0)
    plain = optimise_targets(model, tok, rows, [site], **kw)
    sched = optimise_targets(model, tok, rows, [site], pmet_schedule=True, **kw)
    assert len(plain.loss) == 60 and len(sched.loss) < 60


def test_config_round_trips_through_yaml(tmp_path):
    cfg = PmetConfig(layers=(1, 2), nll_factor=0.5, kl_factor=0.5)
    dump_config(cfg, tmp_path / "pmet.yaml")
    assert load_config(PmetConfig, tmp_path / "pmet.yaml") == cfg
    dump_config(PmetConfig(), tmp_path / "default.yaml")
    loaded = load_config(PmetConfig, tmp_path / "default.yaml")
    assert loaded == PmetConfig() and (loaded.steps, loaded.lr, loaded.kl_factor) == (30, 0.2, 1.0)
    with pytest.raises(MemlaError):
        load_config(PmetConfig, {"nll_factor": 0})


@pytest.mark.slow
def test_pmet_on_the_default_model(default_model):
    model, tok = default_model
    req = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris", lang="en")
    with apply(model, get_editor("pmet").edit(model, tok, req)):
        assert margin(model, tok, req) > 0
