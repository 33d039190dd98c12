"""ArchSpec paths resolve on every architecture; load_model errors; the real default model."""

from __future__ import annotations

import os

import pytest
import torch
from tiny import ARCHS, tiny_config, tiny_tokenizer

from memla.errors import ModelLoadError
from memla.models import ARCH_SPECS, arch_spec, describe, get_module, load_model, mlp_dims, model_fingerprint, num_layers


def test_every_arch_has_a_tiny_model():
    assert set(ARCHS) == set(ARCH_SPECS)


def test_spec_paths_resolve_and_shapes_match_layout(tiny):
    model, _ = tiny
    spec = arch_spec(model)
    d_model, d_ff = mlp_dims(model)
    assert d_model == model.config.hidden_size
    for layer in range(num_layers(model)):
        down = get_module(model, spec.path(spec.mlp_down, layer))
        expected = (d_ff, d_model) if spec.down_layout == "conv1d" else (d_model, d_ff)
        assert tuple(down.weight.shape) == expected
        assert model.get_parameter(spec.down_weight_name(layer)) is down.weight
        for name in spec.mlp_in:
            get_module(model, spec.path(name, layer))
        get_module(model, spec.path(spec.attn_out, layer))
        if spec.post_ffn_norm:
            get_module(model, spec.path(spec.post_ffn_norm, layer))
    get_module(model, spec.final_norm)
    get_module(model, spec.embed)
    assert get_module(model, spec.lm_head).weight.shape[0] == model.config.vocab_size


def test_weight_layout_helpers_give_the_linear_orientation(tiny):
    model, _ = tiny
    spec = arch_spec(model)
    d_model, d_ff = mlp_dims(model)
    weight = get_module(model, spec.path(spec.mlp_down, 1)).weight
    linear = spec.down_weight(model, 1)
    assert tuple(linear.shape) == (d_model, d_ff)
    assert torch.equal(spec.to_linear(weight), linear) and spec.down_module(model, 1).weight is weight
    assert spec.from_linear(linear).shape == weight.shape and torch.equal(spec.from_linear(linear), weight)
    down = spec.down_module(model, 1)
    x = torch.randn(3, d_ff)
    with torch.no_grad():
        torch.testing.assert_close(down(x), x @ linear.T + (0 if down.bias is None else down.bias))  # y = W x (+ b)


def test_down_projection_input_has_d_ff_features(tiny):
    from memla.hooks import trace

    model, tok = tiny
    spec = arch_spec(model)
    _, d_ff = mlp_dims(model)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    name = spec.path(spec.mlp_down, 1)
    with trace(model, name, retain_input=True) as tr:
        model(ids)
    assert tr[name].input.shape == (1, ids.shape[1], d_ff)


def test_describe_reports_sizes(tiny):
    model, _ = tiny
    info = describe(model)
    assert info["layers"] == 2 and info["d_model"] == 32
    assert info["model type"] == model.config.model_type


def test_fingerprint_changes_with_weights(tiny):
    model, _ = tiny
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    assert model_fingerprint(model) != before


def test_missing_path_error():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/model-dir")


def test_missing_gguf_error(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(tmp_path / "absent.gguf")


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import AutoModelForCausalLM, GPTNeoConfig

    config = GPTNeoConfig(num_layers=1, hidden_size=16, num_heads=2, attention_types=[[["global"], 1]], vocab_size=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not supported.*gpt2.*llama"):
        load_model(tmp_path)


def test_unreachable_hub_id_says_local_path_works():
    with pytest.raises(ModelLoadError, match="local model directory"):
        load_model("memla-test/surely-not-a-model")


def test_local_directory_loads_in_eval_mode_without_grads(tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(tiny_config("llama", 512)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, tok = load_model(tmp_path)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tok("hi").input_ids


@pytest.mark.slow
def test_default_model_cold_cache_prefers_paris(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    model, tok = load_model()
    assert (tmp_path / "models" / "gemma-3-270m" / "model.safetensors").is_file()
    assert not [p for p in os.listdir(tmp_path / "models") if p.startswith(".tmp")]
    info = describe(model)
    assert (info["layers"], info["d_model"], info["d_ff"]) == (18, 640, 2048)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logp = model(ids).logits[0, -1].log_softmax(-1)
    paris, london = (tok(" Paris", add_special_tokens=False).input_ids[0], tok(" London", add_special_tokens=False).input_ids[0])
    assert logp[paris] > logp[london]


def test_fingerprint_sees_a_single_changed_weight(tiny):
    model, _ = tiny
    spec = arch_spec(model)
    before = model_fingerprint(model)
    weight = model.get_parameter(spec.down_weight_name(0))
    with torch.no_grad():
        weight.view(-1)[1] += 1e-3  # an element the strided sample skips
    assert model_fingerprint(model) != before
