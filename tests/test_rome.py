"""ROME (Meng et al. 2022) and the machinery it shares with MEMIT / PMET, on tiny random models.

Tiny random models have hidden states of norm ~0.01 and nearly uniform attention, so the
tests use a prompt whose subject ends it (δ at the subject token then reaches the
prediction directly), a learning rate scaled to those norms, no weight decay (its
‖δ‖/‖v₀‖² form explodes for tiny ‖v₀‖) and a loose clamp.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from edit_support import KV_TINY
from tiny import ARCHS, tiny_model

from memla.config import dump_config, load_config
from memla.editors import EditRequest, apply, get_editor
from memla.editors.kv import (TargetRunner, context_prefixes, head_logits, kl_rows, locate, locate_request,
                              rank_one_update, rewriting_rows)
from memla.editors.kv import keys as K
from memla.editors.kv import values as V
from memla.editors.rome import RomeConfig, RomeEditor
from memla.errors import EditError, MemlaError
from memla.evaluate.scoring import score_targets
from memla.models import arch_spec

TINY = KV_TINY


def request(**kw) -> EditRequest:
    base = dict(prompt="The capital of {}", subject="France", target_new="Tokyo", target_true="Paris", lang="en")
    return EditRequest(**{**base, **kw})


def new_minus_true(model, tok, req: EditRequest) -> float:
    new, true = score_targets(model, tok, [(req.text, req.target_new, req.lang), (req.text, req.target_true, req.lang)])
    return new.mean - true.mean


@pytest.mark.parametrize("arch", ARCHS)
def test_edit_raises_new_over_true_and_restores_exactly(arch):
    model, tok = tiny_model(arch)
    req = request()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    margin = new_minus_true(model, tok, req)
    result = get_editor("rome", TINY).edit(model, tok, req)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # edit() does not mutate
    (name, delta), = result.deltas.items()
    assert name == arch_spec(model).down_weight_name(result.info["layer"])
    sv = torch.linalg.svdvals(delta.double())
    assert sv[1] < 1e-5 * sv[0]  # rank one
    with apply(model, result):
        assert new_minus_true(model, tok, req) > max(margin, 0.0)
        assert torch.equal(model.get_parameter(name), (before[name].float() + delta.float()).to(before[name].dtype))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert result.info["p_new"][-1] > result.info["p_new"][0]
    assert result.info["subject_fallback"] is False


def test_rank_one_update_maps_key_to_v_star():
    gen = torch.Generator().manual_seed(0)
    W, k = torch.randn(6, 10, generator=gen).double(), torch.randn(10, generator=gen).double()
    v_star, A = torch.randn(6, generator=gen).double(), torch.randn(10, 10, generator=gen).double()
    C = A @ A.T + torch.eye(10)
    for cov in (None, C):
        delta = rank_one_update(v_star, W @ k, k, k, cov)  # r-ROME: one key in numerator and denominator
        torch.testing.assert_close((W + delta) @ k, v_star)
    k2 = torch.randn(10, generator=gen).double()  # ROME 2022: C⁻¹k* direction, but still (W + Δ) k = v*
    delta = rank_one_update(v_star, W @ k, k2, k, C)
    torch.testing.assert_close((W + delta) @ k, v_star)


@pytest.mark.parametrize("key", ["prompt", "prefix", "original"])
def test_key_modes(key):
    model, tok = tiny_model("gpt2")
    result = get_editor("rome", {**TINY, "key": key}).edit(model, tok, request())
    with apply(model, result):
        assert new_minus_true(model, tok, request()) > 0
    assert result.info["key"] == key


def test_layer_default_is_scaled_and_configurable():
    model, tok = tiny_model("llama")
    assert RomeEditor(RomeConfig()).layer(model) == 0  # GPT-J 5/28 of 2 layers
    assert RomeEditor(RomeConfig(layer=1)).layer(model) == 1
    with pytest.raises(EditError, match="0..1"):
        RomeEditor(RomeConfig(layer=7)).layer(model)


def test_subject_fallback_recorded_for_question_prompts():
    model, tok = tiny_model("llama")
    question = request(prompt="Which city is the capital of the French Republic?", templated=False)
    result = get_editor("rome", {**TINY, "steps": 3}).edit(model, tok, question)
    assert result.info["subject_fallback"] is True
    loc = locate_request(tok, question)
    assert loc.fallback and loc.pos == len(loc.prompt_ids) - 1
    verbatim = request(prompt="What is the capital of France?", templated=False)
    assert get_editor("rome", {**TINY, "steps": 3}).edit(model, tok, verbatim).info["subject_fallback"] is False


def test_locate_finds_the_subjects_last_token():
    _, tok = tiny_model("llama")
    cases = [("The capital of France is", "France"), ("法国的首都是", "法国"), ("La capitale de la France est", "France")]
    for text, subject in cases:
        end = text.index(subject) + len(subject)
        loc = locate(tok, text, end)
        assert not loc.fallback
        upto = tok.decode(list(loc.prompt_ids[:loc.pos + 1]))
        assert upto.endswith(subject[-1]) or subject in upto
        assert subject not in tok.decode(list(loc.prompt_ids[:loc.pos]))  # the previous token does not finish it


def test_rows_teacher_force_target_and_kl_rows_stop_at_subject():
    model, tok = tiny_model("llama")
    req = request(prompt="The capital of {} is")
    prefixes = context_prefixes(model, tok, ((4, 2),))
    assert prefixes[0] == "" and len(prefixes) == 3 and all(p.endswith(". ") for p in prefixes[1:])
    assert context_prefixes(model, tok, ((4, 2),)) is prefixes  # memoised
    rows, fallback = rewriting_rows(tok, req, prefixes)
    assert not fallback and len(rows) == 3
    for row in rows:
        assert [t for _, t in row.targets][:-1] == list(row.ids[len(row.ids) - len(row.targets) + 1:])
        assert row.targets[0][0] > row.pos
    (kl,) = kl_rows(tok, req, ("{} is a",))
    assert kl.kl and kl.pos == len(kl.ids) - 1


@pytest.mark.parametrize("arch", ["gpt2", "bloom", "gemma3_text"])
def test_cached_prefix_forward_matches_full_forward(arch):
    model, tok = tiny_model(arch)
    req = request(prompt="The capital of {} is")
    rows, _ = rewriting_rows(tok, req, context_prefixes(model, tok, ((4, 3),)))
    rows += kl_rows(tok, req, ("{} is a",))
    runner = TargetRunner(model, tok, rows)
    assert runner.cache is not None
    spec = arch_spec(model)
    site = spec.path(spec.mlp_down, 0)
    delta = torch.randn(model.config.hidden_size) * 0.1
    h, _ = runner.hidden({site: delta})
    for i, row in enumerate(rows):
        def add(out, name, pos=row.pos):
            out = out.clone()
            out[0, pos] += delta
            return out
        from memla.hooks import trace
        with torch.no_grad(), trace(model, [site], edit=add):
            full = model(input_ids=torch.tensor([row.ids])).logits[0].float()  # (T, V)
        p = row.targets[0][0] if row.targets else row.pos
        got = head_logits(model, h[i, runner.column(i, p)][None])[0]
        torch.testing.assert_close(got, full[p], atol=1e-4, rtol=1e-4)


def test_low_precision_head_copy_is_released_with_the_model():
    model, _ = tiny_model("llama")
    head_logits(model, torch.randn(2, model.config.hidden_size), dtype=torch.bfloat16)
    ((_, copy),) = V._HEAD_COPY.values()  # one copy at a time
    assert copy.dtype == torch.bfloat16
    released = weakref.ref(copy)
    del model, copy
    gc.collect()
    assert released() is None and not V._HEAD_COPY


def test_prefix_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(K, "_MEMO_SIZE", 2)
    model, tok = tiny_model("llama")
    for seed in range(4):
        context_prefixes(model, tok, ((2, 1),), seed=seed)
    assert len(K._PREFIX_MEMO) == 2


def test_config_round_trips_through_yaml(tmp_path):
    cfg = RomeConfig(layer=3, key="prefix", context_lengths=((5, 10), (10, 10)), kl_prompts=("{} is a", "{} ist ein"))
    dump_config(cfg, tmp_path / "rome.yaml")
    assert load_config(RomeConfig, tmp_path / "rome.yaml") == cfg
    dump_config(RomeConfig(), tmp_path / "default.yaml")
    assert load_config(RomeConfig, tmp_path / "default.yaml") == RomeConfig()


@pytest.mark.parametrize("bad", [{"key": "mean"}, {"covariance": "diag"}, {"layer": -1}, {"steps": 0},
                                 {"kl_prompts": ["no slot"]}, {"stats_dtype": "int8"}, {"context_lengths": [[0, 3]]}])
def test_config_validation(bad):
    with pytest.raises(MemlaError):
        load_config(RomeConfig, bad)


@pytest.mark.slow
def test_rome_on_the_default_model(default_model):
    model, tok = default_model
    req = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris", lang="en")
    assert new_minus_true(model, tok, req) < 0
    result = get_editor("rome").edit(model, tok, req)
    with apply(model, result):
        assert new_minus_true(model, tok, req) > 0
    assert result.info["layer"] == 3 and result.info["subject_fallback"] is False
