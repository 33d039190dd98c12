"""FT-L (Zhu et al. 2020): the L∞ bound, the unconstrained variant, layer scaling, apply/restore, configs."""

from __future__ import annotations

import pytest
import torch
from edit_support import margin
from tiny import tiny_model

from memla.config import dump_config, load_config
from memla.editors import EditRequest, apply, editor_entry, get_editor
from memla.editors.ft import FTConfig, FTEditor, FTUnconstrainedConfig
from memla.editors.layers import scaled_layer
from memla.errors import EditError, MemlaError
from memla.models import arch_spec

TINY = dict(norm_constraint=0.05, lr=0.01, objective="target_new")


def request() -> EditRequest:
    return EditRequest(prompt="The capital of {} is", subject="France", target_new="Tokyo", target_true="Paris", lang="en")


@pytest.fixture(params=["gpt2", "llama", "gemma3_text"])
def tiny3(request):
    return tiny_model(request.param)


def test_edit_raises_new_over_true_and_restores_exactly(tiny3):
    model, tok = tiny3
    req = request()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = get_editor("ft", TINY).edit(model, tok, req)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # edit() does not mutate
    (name, delta), = result.deltas.items()
    assert name == arch_spec(model).down_weight_name(result.info["layer"])
    unedited = margin(model, tok, req)
    assert result.info["steps"] >= 1
    with apply(model, result):
        assert margin(model, tok, req) > max(unedited, 0.0)
        assert torch.equal(model.get_parameter(name), before[name] + delta)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
def test_linf_bound_holds_exactly(tiny3, objective):
    model, tok = tiny3
    eps = 1e-3
    result = get_editor("ft", {"norm_constraint": eps, "lr": 0.01, "objective": objective}).edit(model, tok, request())
    (name, delta), = result.deltas.items()
    assert delta.dtype == torch.float32
    assert float(delta.abs().max()) <= eps  # exact: Δ itself is clamped after every step
    assert float(delta.abs().max()) > eps * (1 - 1e-6)  # the clamp was active
    w0 = model.get_parameter(name).detach().clone()
    with apply(model, result):
        moved = (model.get_parameter(name).double() - w0.double()).abs()
    ulp = torch.finfo(torch.float32).eps * (w0.abs().double() + eps)  # one rounding of W + Δ
    assert bool((moved <= eps + ulp).all())


def test_unconstrained_variant_moves_further():
    model, tok = tiny_model("llama")
    req = request()
    constrained = get_editor("ft", {"norm_constraint": 1e-3, "lr": 0.01, "layer": 1}).edit(model, tok, req)
    free = get_editor("ft-unconstrained", {"lr": 0.01, "layer": 1}).edit(model, tok, req)
    same = get_editor("ft", {"norm_constraint": None, "lr": 0.01, "layer": 1}).edit(model, tok, req)
    assert free.info["norm_constraint"] is None and free.info["method"] == "ft-unconstrained"
    assert float(free.deltas["model.layers.1.mlp.down_proj.weight"].abs().max()) > 1e-3
    # ft with norm_constraint=None is the same computation as ft-unconstrained
    for name in free.deltas:
        assert torch.allclose(free.deltas[name], same.deltas[name])
    assert constrained.info["delta_max_abs"] <= 1e-3


def test_registry_and_defaults():
    assert editor_entry("ft").config_cls is FTConfig
    assert editor_entry("ft-unconstrained").config_cls is FTUnconstrainedConfig
    assert FTConfig().norm_constraint == 5e-4 and FTConfig().lr == 5e-4 and FTConfig().steps == 25
    assert FTUnconstrainedConfig().norm_constraint is None
    assert isinstance(get_editor("ft-unconstrained").config, FTUnconstrainedConfig)


def test_layer_choice():
    model, _ = tiny_model("gpt2")  # 2 layers
    assert FTEditor(FTConfig()).layer(model) == 0
    assert FTEditor(FTConfig(layer_fraction=1.0)).layer(model) == 1
    assert FTEditor(FTConfig(layer=-1)).layer(model) == 1
    with pytest.raises(EditError, match="out of range"):
        FTEditor(FTConfig(layer=5)).edit(model, tiny_model("gpt2")[1], request())

    # reference layers carried to other depths: 0/48 -> 0, 1/47 -> round(17/47) = 0 of 18, 1 of 48
    for fraction, n, want in ((0.0, 18, 0), (1 / 47, 18, 0), (1 / 47, 48, 1), (1.0, 18, 17)):
        assert scaled_layer(n, fraction) == want


@pytest.mark.parametrize("cls", [FTConfig, FTUnconstrainedConfig])
def test_config_roundtrips_through_yaml(tmp_path, cls):
    config = cls(layer=3, lr=1e-3, steps=7, objective="target_new")
    path = tmp_path / "ft.yaml"
    dump_config(config, path)
    assert load_config(cls, path) == config


def test_bad_config_is_rejected():
    with pytest.raises(MemlaError, match="objective"):
        load_config(FTConfig, {"objective": "nope"})
    with pytest.raises(MemlaError, match="norm_constraint"):
        load_config(FTConfig, {"norm_constraint": 0})
    with pytest.raises(MemlaError, match="unknown"):
        load_config(FTConfig, {"epsilon": 1e-3})


@pytest.mark.slow
def test_ft_on_default_model(default_model):
    from memla.data import load_dataset

    model, tok = default_model
    req = EditRequest.from_record(load_dataset("mkeb-mini", split="test")[0], "en")
    before = margin(model, tok, req)
    result = get_editor("ft").edit(model, tok, req)
    assert result.info["layer"] == 0 and result.info["delta_max_abs"] <= 5e-4
    with apply(model, result):
        after = margin(model, tok, req)
    assert after > before and after > 0
