"""MEMIT (Meng et al. 2023) on tiny random models: single and batch edits, Eq. 14, restore, config.

See tests/test_rome.py for why the tiny-model settings differ from the paper's.
"""

from __future__ import annotations

import pytest
import torch
from edit_support import KV_TINY
from tiny import tiny_model

from memla.config import dump_config, load_config
from memla.editors import EditRequest, apply, get_editor
from memla.editors.kv import group_mean, memit_update, prefix_groups, residual_to_down
from memla.editors.layers import scaled_layers
from memla.editors.memit import MemitConfig, MemitEditor
from memla.errors import EditError, MemlaError
from memla.evaluate.scoring import score_targets
from memla.models import arch_spec, get_module

TINY = KV_TINY
# Ten facts whose subjects are single tokens of the tiny tokenizer (distinct keys).
SUBJECTS = ["France", "Italy", "Japan", "Francia", "Frankreich", "Francji", "Parigi", "Paryż", "Франции", "França"]
NEW = ["Tokyo", "Paris", "Rome", "Париж", "파리", "Hauptstadt", "capitale", "Stolicą", "capital", "东京"]


def requests(n: int = 10) -> list[EditRequest]:
    true = NEW[1:] + NEW[:1]
    return [EditRequest(prompt="The capital of {}", subject=s, target_new=a, target_true=b, lang="en")
            for s, a, b in list(zip(SUBJECTS, NEW, true))[:n]]


def margins(model, tok, reqs) -> list[float]:
    items = [(r.text, t, r.lang) for r in reqs for t in (r.target_new, r.target_true)]
    scores = score_targets(model, tok, items)
    return [scores[2 * i].mean - scores[2 * i + 1].mean for i in range(len(reqs))]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3_text"])
def test_edit_raises_new_over_true_and_restores_exactly(arch):
    model, tok = tiny_model(arch)
    (req,) = requests(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (margin,) = margins(model, tok, [req])
    result = get_editor("memit", TINY).edit(model, tok, req)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    spec = arch_spec(model)
    assert set(result.deltas) == {spec.down_weight_name(layer) for layer in result.info["layers"]}
    with apply(model, result):
        assert margins(model, tok, [req])[0] > max(margin, 0.0)
        for name, delta in result.deltas.items():
            assert torch.equal(model.get_parameter(name), (before[name].float() + delta.float()).to(before[name].dtype))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert result.info["subject_fallback"] is False and result.info["edits"] == 1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_of_ten_edits_in_one_update(arch):
    model, tok = tiny_model(arch)
    reqs = requests(10)
    before = margins(model, tok, reqs)
    result = MemitEditor(MemitConfig(**TINY)).edit_batch(model, tok, reqs)
    assert result.info["edits"] == 10 and len(result.info["p_new"]) == 10
    assert len(result.deltas) == len(result.info["layers"])  # one update per layer for all ten edits
    for delta in result.deltas.values():
        sv = torch.linalg.svdvals(delta.double())
        assert (sv > 1e-6 * sv[0]).sum() <= 10  # rank <= number of edits
    with apply(model, result):
        after = margins(model, tok, reqs)
    assert sum(a > 0 for a in after) >= 9
    assert sum(a > b for a, b in zip(after, before)) >= 9


def test_batch_on_post_ffn_norm_model_mostly_succeeds():
    model, tok = tiny_model("gemma3_text")
    reqs = requests(10)
    before = margins(model, tok, reqs)
    with apply(model, get_editor("memit", TINY).edit_batch(model, tok, reqs)):
        after = margins(model, tok, reqs)
    assert sum(a > b for a, b in zip(after, before)) >= 6


def test_memit_update_solves_eq14():
    gen = torch.Generator().manual_seed(0)
    R, K = torch.randn(5, 3, generator=gen).double(), torch.randn(8, 3, generator=gen).double()
    A = torch.randn(8, 8, generator=gen).double()
    C = A @ A.T + torch.eye(8, dtype=torch.float64)
    delta = memit_update(R, K, C, 2.0)
    torch.testing.assert_close(delta @ (2.0 * C + K @ K.T), R @ K.T)  # normal equations of Eq. 14
    torch.testing.assert_close(memit_update(R, K, C, 1e-9) @ K, R, atol=1e-6, rtol=1e-6)  # λ → 0: exact fit


def test_residual_to_down_inverts_the_post_ffn_norm_to_first_order():
    model, _ = tiny_model("gemma3_text")
    spec = arch_spec(model)
    norm = get_module(model, spec.path(spec.post_ffn_norm, 1))
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(32, 2, generator=gen)
    with torch.no_grad():
        nv = norm(v.T).T  # (d, 2)
    with torch.no_grad():  # a reachable change of the norm's output
        r = norm((v + 1e-3 * torch.randn(32, 2, generator=gen)).T).T - nv
    dv = residual_to_down(model, 1, v, r)
    with torch.no_grad():
        got = norm((v + dv.float()).T).T - nv
    assert (got - r).norm() < 0.02 * r.norm()
    llama, _ = tiny_model("llama")
    torch.testing.assert_close(residual_to_down(llama, 1, v, r), r.double())  # no post-FFN norm: identity


def test_defaults_scale_with_depth_and_lambda_with_width():
    model, _ = tiny_model("llama")
    assert scaled_layers((3, 4, 5, 6, 7, 8), model) == (0, 1)
    editor = MemitEditor(MemitConfig())
    assert editor.layers(model) == (0, 1)
    assert editor.lam(model) == pytest.approx(15000 * 64 / 16384)
    assert MemitEditor(MemitConfig(mom2_update_weight=7.0)).lam(model) == 7.0
    with pytest.raises(EditError, match="out of range"):
        MemitEditor(MemitConfig(layers=(0, 5))).layers(model)


def test_key_average_follows_memit_compute_ks():
    keys = torch.arange(5.0)[:, None]  # bare prompt 0, then prefixes 1..4
    groups = prefix_groups(((10, 4),))
    assert groups == [[0], [1, 2, 3, 4]]
    assert group_mean(keys, groups).item() == pytest.approx((0 + 2.5) / 2)


def test_fallback_recorded_per_edit():
    model, tok = tiny_model("llama")
    reqs = requests(2)
    reqs[1] = EditRequest(prompt="Which city is the capital of the French Republic?", subject="France",
                          target_new="Tokyo", target_true="Paris", templated=False)
    info = get_editor("memit", {**TINY, "steps": 2}).edit_batch(model, tok, reqs).info
    assert info["subject_fallback"] is True and info["subject_fallback_edits"] == [1]


def test_config_round_trips_through_yaml(tmp_path):
    cfg = MemitConfig(layers=(2, 3, 4), mom2_update_weight=1875.0, covariance="identity", stats_corpus=("a.txt", "builtin"))
    dump_config(cfg, tmp_path / "memit.yaml")
    assert load_config(MemitConfig, tmp_path / "memit.yaml") == cfg
    dump_config(MemitConfig(), tmp_path / "default.yaml")
    assert load_config(MemitConfig, tmp_path / "default.yaml") == MemitConfig()
    with pytest.raises(MemlaError):
        load_config(MemitConfig, {"layers": []})
    with pytest.raises(MemlaError, match="unknown"):
        load_config(MemitConfig, {"layer": 3})


def test_empty_batch_is_an_error():
    model, tok = tiny_model("llama")
    with pytest.raises(EditError, match="no edit requests"):
        MemitEditor().edit_batch(model, tok, [])


@pytest.mark.slow
def test_memit_on_the_default_model(default_model):
    model, tok = default_model
    req = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris", lang="en")
    result = get_editor("memit").edit(model, tok, req)
    with apply(model, result):
        assert margins(model, tok, [req])[0] > 0
    assert result.info["layers"] == [2, 3, 4, 5]
