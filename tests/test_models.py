"""ArchSpec paths resolve on every architecture; load_model errors; the real default model."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
from tiny import ARCHS, tiny_config, tiny_model, tiny_tokenizer

from memla import hub, models
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


def _pickle_only_dir(path):
    """A tiny GPT-2 directory with config, tokenizer and a pickle ``pytorch_model.bin`` (no safetensors)."""
    model, tok = tiny_model("gpt2")
    model.config.save_pretrained(path)
    tok.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return model


def test_pickle_only_directory_names_the_checkpoint(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    _pickle_only_dir(tmp_path)

    def no_weights_read(*args, **kwargs):
        raise AssertionError("from_pretrained must not run")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights_read)
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle=True") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_pickle_only_directory_loads_with_allow_pickle(tmp_path):
    saved = _pickle_only_dir(tmp_path)
    model, _ = load_model(tmp_path, allow_pickle=True)
    assert torch.equal(model.lm_head.weight, saved.lm_head.weight)


def test_directory_without_weights_says_so(tmp_path):
    tiny_model("gpt2")[0].config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="holds no model weights"):
        load_model(tmp_path)


def _tiny_gguf(path):
    """A small well-formed GGUF file (llama metadata, one F32 tensor); returns its bytes."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _cache_folders():
    """Entries under the (per-test) cache's models folder."""
    root = models.cache_dir() / "models"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize(
    "cut, reason",
    [(None, "header runs past the end"), (-8, "header describes"), (20, "header runs past the end")],
    ids=["junk-after-magic", "truncated-data", "truncated-header"],
)
def test_corrupt_gguf_names_the_file_and_leaves_no_cache(tmp_path, cut, reason):
    bad = tmp_path / "bad.gguf"
    if cut is None:
        bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    else:
        bad.write_bytes(_tiny_gguf(tmp_path / "good.gguf")[:cut])
    with pytest.raises(ModelLoadError, match=f"GGUF file .*bad.gguf is corrupt or truncated \\(its {reason}") as err:
        load_model(bad)
    assert "\n" not in str(err.value)
    assert _cache_folders() == []


def test_file_without_gguf_magic(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelLoadError, match="model.gguf is not a GGUF file \\(magic b'PK\\\\x03\\\\x04'"):
        load_model(bad)


def test_failed_gguf_conversion_leaves_no_cache(tmp_path):
    good = tmp_path / "tiny.gguf"
    _tiny_gguf(good)  # a well-formed header whose single tensor does not make a llama model
    with pytest.raises(ModelLoadError, match="cannot load GGUF file .*tiny.gguf"):
        load_model(good)
    assert _cache_folders() == []


@pytest.mark.parametrize("var, value", [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "true")])
def test_offline_hub_id_fails_fast_without_network(monkeypatch, var, value):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(var, value)

    def no_probe():
        raise AssertionError("offline mode must not probe the network")

    monkeypatch.setattr(hub, "_hub_reachable", no_probe)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match=f"not a local model directory or .gguf file.*switched off \\({var}"):
        load_model("some-org/unknown-model")
    assert time.monotonic() - start < 5


def test_unreachable_hub_fails_after_one_probe_without_transformers(monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM

    def not_called(*args, **kwargs):
        raise AssertionError("transformers must not be asked")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(hub, "_hub_reachable", lambda: probes.append(1) or False)
    monkeypatch.setattr(hub, "_hub_cached_dir", lambda repo_id: None)
    monkeypatch.setattr(AutoConfig, "from_pretrained", not_called)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", not_called)
    with pytest.raises(ModelLoadError, match="cannot reach model 'some-org/unknown-model'.*works offline"):
        load_model("some-org/unknown-model")
    assert probes == [1]


def test_offline_hub_id_loads_from_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--some-org--tiny" / "snapshots" / "abc"
    model, tok = tiny_model("llama")
    model.save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (tmp_path / "models--some-org--tiny" / "refs").mkdir()
    (tmp_path / "models--some-org--tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, _ = load_model("some-org/tiny")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_hub_probe_connects_once_to_the_endpoint(monkeypatch):
    from huggingface_hub import constants

    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub._hub_reachable()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # closed now: refused at once
    assert not hub._hub_reachable()


def test_path_like_name_is_not_sent_to_the_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: pytest.fail("a path must not probe the hub"))
    with pytest.raises(ModelLoadError, match="model path does not exist"):
        load_model("./nonexistent-dir")
