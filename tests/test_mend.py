"""MEND (Mitchell et al. 2022): train, save, load, edit; hook/dense agreement; checkpoint keys; CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edit_support import margin
from tiny import save_tiny, tiny_model

from memla.config import dump_config, load_config
from memla.data import load_dataset
from memla.editors import EditRequest, apply, get_editor
from memla.editors._train import added_outputs, down_name, teacher_batch
from memla.editors.mend import (
    GradientTransform,
    LowRankBlock,
    MendConfig,
    MendNet,
    default_checkpoint_dir,
    gradient_factors,
    load_checkpoint,
    resolve_layers,
)
from memla.editors.mend_train import checkpoint_meta, save_checkpoint, train_mend
from memla.errors import EditError, MemlaError
from memla.models import arch_spec, mlp_dims, model_fingerprint

FAST = dict(rank=16, edit_lr=0.05, steps=4, save_every=2, train_langs=("en",))


def request() -> EditRequest:
    return EditRequest(prompt="The capital of {} is", subject="France", target_new="Tokyo", target_true="Paris", lang="en")


@pytest.fixture(scope="module")
def train_records():
    return load_dataset("mkeb-mini", split="dev")[:12]


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3_text"])
def trained(request, tmp_path_factory, train_records):
    model, tok = tiny_model(request.param)
    out = tmp_path_factory.mktemp(f"mend-{request.param}")
    result = train_mend(model, tok, train_records, config=MendConfig(**FAST), out=out, progress=False, dataset="mkeb-mini:dev")
    return model, tok, result


def test_train_save_load_edit(trained):
    model, tok, result = trained
    assert (result.directory / "mend.safetensors").is_file() and (result.directory / "mend.json").is_file()
    assert result.steps == 4 and result.history and result.history[-1]["step"] == 4
    net, meta = load_checkpoint(result.directory)
    assert meta["model_fingerprint"] == model_fingerprint(model) and meta["steps"] == 4
    assert net.layers == resolve_layers(model, None) and not net.training
    assert all(float(g.count) > 1 for g in net.transforms)  # normalisation statistics were saved

    req = request()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unedited = margin(model, tok, req)
    out = get_editor("mend", {"checkpoint": str(result.directory)}).edit(model, tok, req)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # edit() does not mutate
    spec = arch_spec(model)
    assert set(out.deltas) == {spec.down_weight_name(layer) for layer in net.layers}
    with apply(model, out):
        assert margin(model, tok, req) > max(unedited, 0.0)
        for name, delta in out.deltas.items():
            assert torch.equal(model.get_parameter(name), before[name] + delta)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_training_hook_matches_the_dense_delta(arch, tmp_path):
    """The low-rank term used in training equals applying ``ΔW = −α Σ δ̃ ũᵀ`` (conv1d and linear layouts)."""
    model, tok = tiny_model(arch)
    d_model, d_ff = mlp_dims(model)
    layers = resolve_layers(model, None)
    names = [down_name(model, layer) for layer in layers]
    net = MendNet(layers, d_model, d_ff, rank=8, n_hidden=1, edit_lr=0.1)
    for block in (b for g in net.transforms for b in g.blocks):  # leave the identity init
        torch.nn.init.normal_(block.u, std=0.1)
    req = request()
    edit = teacher_batch(tok, [(req.text, req.target_new, "en")])
    factors, _, _ = gradient_factors(model, edit, names)
    net.train()
    net.transform(factors)  # collect statistics
    net.eval()
    probe = teacher_batch(tok, [("Die Hauptstadt von Frankreich ist", "Paris", "de"), (req.text, "Rome", "en")])
    with torch.no_grad():
        transformed = net.transform(factors)
        with added_outputs(model, dict(zip(names, transformed))):
            hooked = probe.logits(model)
    save_checkpoint(tmp_path, net, checkpoint_meta(model, net, MendConfig(rank=8, n_hidden=1)))
    result = get_editor("mend", {"checkpoint": str(tmp_path)}).edit(model, tok, req)
    with apply(model, result), torch.no_grad():
        applied = probe.logits(model)
    assert torch.allclose(hooked, applied, atol=1e-4, rtol=1e-4)


def test_missing_checkpoint_names_the_train_command():
    model, tok = tiny_model("gpt2")
    with pytest.raises(EditError, match="memla train-mend"):
        get_editor("mend").edit(model, tok, request())


def test_checkpoint_is_keyed_by_model_fingerprint(train_records):
    model, tok = tiny_model("llama")
    result = train_mend(model, tok, train_records, config=MendConfig(**{**FAST, "steps": 2}), progress=False)
    assert result.directory == default_checkpoint_dir(model_fingerprint(model))
    assert get_editor("mend").edit(model, tok, request()).info["trained_steps"] == 2  # found without a path
    other, _ = tiny_model("llama", seed=1)
    with pytest.raises(EditError, match="memla train-mend"):  # another model has no checkpoint
        get_editor("mend").edit(other, tok, request())
    with pytest.raises(EditError, match="trained for model"):
        get_editor("mend", {"checkpoint": str(result.directory)}).edit(other, tok, request())


def test_identity_init_and_running_statistics():
    block = LowRankBlock(12, 4, relu=True)
    z = torch.randn(5, 12)
    assert torch.equal(block(z), z)
    g = GradientTransform(7, 5, rank=3, n_hidden=1)
    batches = [torch.randn(n, 12) * 3 + 1 for n in (1, 4, 9)]
    g.train()
    for b in batches:
        g(b[:, :7], b[:, 7:])
    allz = torch.cat(batches).double().numpy()
    assert np.allclose(g.mean.numpy(), allz.mean(0), atol=1e-5)
    assert np.allclose((g.m2 / (g.count - 1)).numpy(), allz.var(0, ddof=1), atol=1e-4)
    u_t, d_t = g.eval()(batches[0][:, :7], batches[0][:, 7:])  # identity MLP: the standardised inputs
    std = np.sqrt(allz.var(0, ddof=1))
    assert np.allclose(u_t.detach().numpy(), ((batches[0].numpy() - allz.mean(0)) / std)[:, :7], atol=1e-4)
    assert d_t.shape == (1, 5)


def test_config_roundtrips_through_yaml(tmp_path):
    config = MendConfig(layers=(0, 1), rank=32, steps=10, train_langs=("en", "zh"), checkpoint=str(tmp_path))
    path = tmp_path / "mend.yaml"
    dump_config(config, path)
    assert load_config(MendConfig, path) == config
    with pytest.raises(MemlaError, match="rank"):
        load_config(MendConfig, {"rank": 0})
    with pytest.raises(MemlaError, match="unknown"):
        load_config(MendConfig, {"meta_lr": 1e-3})


def test_cli_train_mend(tmp_path):
    from memla.cli import main

    model_dir = save_tiny("gpt2", tmp_path / "tiny-gpt2")
    cfg = tmp_path / "mend.yaml"
    dump_config(MendConfig(**FAST), cfg)
    out = tmp_path / "ckpt"
    argv = ["train-mend", "--model", str(model_dir), "--steps", "2", "--out", str(out), "--config", str(cfg), "--no-progress"]
    assert main(argv) == 0
    _, meta = load_checkpoint(out)
    assert meta["steps"] == 2 and meta["dataset"] == "mkeb-mini:dev" and meta["config"]["rank"] == 16
    assert main(["train-mend", "--model", str(model_dir), "--steps", "0", "--out", str(out)]) == 2


@pytest.mark.slow
def test_mend_on_default_model(default_model, tmp_path):
    """A 2-step training run on the real model, saved, loaded and used for one edit."""
    model, tok = default_model
    records = load_dataset("mkeb-mini", split="dev")
    result = train_mend(model, tok, records, config=MendConfig(steps=2, save_every=0), out=tmp_path, progress=False)
    req = EditRequest.from_record(load_dataset("mkeb-mini", split="test")[0], "en")
    before = model_fingerprint(model)
    out = get_editor("mend", {"checkpoint": str(result.directory)}).edit(model, tok, req)
    assert out.info["layers"] == [15, 16, 17] and len(out.deltas) == 3
    with apply(model, out):
        assert np.isfinite(margin(model, tok, req))
    assert model_fingerprint(model) == before
