"""MEMLA editor (§4.2): masks, Eq. 8 scaling, gradients, ablations, apply/restore, adapters."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from memla.editors import EditRequest, apply, apply_, get_editor
from memla.editors.adapter import load_edit, save_edit
from memla.editors.memla import MemlaConfig, MemlaEditor, norm_ratio_scale, train_lora
from memla.errors import EditError
from memla.models import arch_spec
from memla.tokens import encode_pair

FAST = dict(ig_steps=4, max_steps=25, lr=0.05, threshold=0.5)


def request() -> EditRequest:
    zh = EditRequest(prompt="{}的首都是", subject="法国", target_new="东京", target_true="巴黎", lang="zh")
    fr = EditRequest(prompt="La capitale de la {} est", subject="France", target_new="Tokyo", target_true="Paris", lang="fr")
    return EditRequest(prompt="The capital of {} is", subject="France", target_new="Tokyo", target_true="Paris",
                       lang="en", translations={"zh": zh, "fr": fr})


def mean_logp(model, tok, prompt, target, lang="en") -> float:
    enc = encode_pair(tok, prompt, target, lang)
    ids = torch.tensor([enc.prompt_ids + enc.target_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    n = len(enc.prompt_ids)
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(enc.target_ids)) / len(enc.target_ids))


@pytest.fixture(params=["gpt2", "llama", "gemma3_text"])
def tiny3(request):
    return tiny_model(request.param)


def test_edit_raises_new_over_true_and_restores_exactly(tiny3):
    model, tok = tiny3
    req = request()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = get_editor("memla", {**FAST, "scale_constant": 1.0}).edit(model, tok, req)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # edit() does not mutate
    assert result.deltas and result.info["steps"] >= 1
    with apply(model, result):
        assert mean_logp(model, tok, req.text, "Tokyo") > mean_logp(model, tok, req.text, "Paris")
        for name, delta in result.deltas.items():
            assert torch.equal(model.get_parameter(name), (before[name].float() + delta.float()).to(before[name].dtype))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_restore_is_exact_when_block_raises(tiny3):
    model, tok = tiny3
    result = get_editor("memla", FAST).edit(model, tok, request())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError):
        with apply(model, result):
            raise RuntimeError("inside the edit")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_weights_outside_masks_bitwise_unchanged(tiny3):
    model, tok = tiny3
    editor = MemlaEditor(MemlaConfig(**FAST))
    _, independent, specific = editor.locate(model, tok, request())
    result = editor.edit(model, tok, request())
    spec = arch_spec(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_(model, result)
    neurons = specific | independent
    for layer in range(model.config.num_hidden_layers):
        name = spec.down_weight_name(layer)
        w_before, w_after = before[name], model.get_parameter(name)
        keep = torch.ones(w_before.shape[0] if spec.down_layout == "conv1d" else w_before.shape[1], dtype=torch.bool)
        keep[list(neurons.layer(layer))] = False  # the neurons' rows (Conv1D) / columns (Linear) may move
        outside = (lambda w: w[keep]) if spec.down_layout == "conv1d" else (lambda w: w[:, keep])
        assert torch.equal(outside(w_before), outside(w_after))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(result.deltas)


@pytest.mark.parametrize("scale", ["constant", "norm_ratio"])
def test_final_update_is_c_times_sum_of_editors_eq8(scale):
    model, tok = tiny_model("llama")
    cfg = MemlaConfig(**FAST, scale=scale, scale_constant=0.25)
    editor = MemlaEditor(cfg)
    result = editor.edit(model, tok, request())
    _, independent, specific = editor.locate(model, tok, request())
    editors = editor.build_editors(model, independent, specific)  # same seed: the same initial factors
    spec = arch_spec(model)
    train_lora(model, tok, request(), {spec.path(spec.mlp_down, l): list(e.values()) for l, e in editors.items()}, cfg)
    assert set(result.deltas) == {spec.down_weight_name(l) for l in editors}
    for layer, eds in editors.items():
        with torch.no_grad():
            delta = sum(e.delta() for e in eds.values())
            weight = model.get_parameter(spec.down_weight_name(layer))
            x = float(delta.norm() / weight.norm())
            expected = 0.25 if scale == "constant" else 0.65 * math.exp(-x * x / 2) + 0.4 * (1 / (1 + math.exp(-2 * x)))
            c = result.info["scale"][str(layer)]
            assert c == pytest.approx(expected, rel=1e-12)
            torch.testing.assert_close(result.deltas[spec.down_weight_name(layer)], c * delta, rtol=0, atol=0)


def test_norm_ratio_scale_values():
    w = torch.ones(4, 4)
    assert norm_ratio_scale(torch.zeros(4, 4), w) == pytest.approx(0.65 + 0.2)
    big = norm_ratio_scale(100 * w, w)
    assert big == pytest.approx(0.4, abs=1e-6)
    # Interior points, by hand: c(x) = 0.65·exp(−x²/2) + 0.4·sigmoid(2x) with x = ‖Δ‖/‖W‖.
    #   x = 0.5: exp(−0.125) = 0.8824969026 -> 0.5736229867; sigmoid(1) = 0.7310585786 -> 0.2924234314; c = 0.8660464181
    #   x = 1:   exp(−0.5)   = 0.6065306597 -> 0.3942449288; sigmoid(2) = 0.8807970780 -> 0.3523188312; c = 0.7465637600
    #   x = 2:   exp(−2)     = 0.1353352832 -> 0.0879679341; sigmoid(4) = 0.9820137900 -> 0.3928055160; c = 0.4807734501
    for ratio, c in ((0.5, 0.8660464181), (1.0, 0.7465637600), (2.0, 0.4807734501)):
        assert norm_ratio_scale(ratio * w, w) == pytest.approx(c, abs=1e-9)


def test_only_lora_parameters_get_gradients():
    model, tok = tiny_model("gemma3_text")
    editor = MemlaEditor(MemlaConfig(**{**FAST, "max_steps": 2, "stop_prob": 1.1}))
    _, independent, specific = editor.locate(model, tok, request())
    editors = editor.build_editors(model, independent, specific)
    spec = arch_spec(model)
    loras = {spec.path(spec.mlp_down, l): list(e.values()) for l, e in editors.items()}
    losses, _ = train_lora(model, tok, request(), loras, editor.config)
    assert len(losses) == 2
    assert all(p.grad is None for p in model.parameters())
    for eds in loras.values():
        for e in eds:
            assert e.A.grad is not None and e.B.grad is not None
            assert not e.mask.requires_grad and "mask" in dict(e.named_buffers())


@pytest.mark.parametrize(
    "switches, kinds, masked",
    [
        ({}, {"lse", "lie"}, {"lse": True, "lie": True}),
        ({"use_lse": False}, {"lie"}, {"lie": True}),
        ({"use_lie": False}, {"lse"}, {"lse": True}),
        ({"mask_lse": False}, {"lse", "lie"}, {"lse": False, "lie": True}),
        ({"mask_lie": False}, {"lse", "lie"}, {"lse": True, "lie": False}),
    ],
)
def test_ablation_switches_build_the_right_editors(switches, kinds, masked):
    from memla.neurons import NeuronSet

    model, _ = tiny_model("llama")
    editor = MemlaEditor(MemlaConfig(**switches))
    independent, specific = NeuronSet([(0, 1), (1, 2)]), NeuronSet([(0, 5), (0, 7)])
    editors = editor.build_editors(model, independent, specific)
    found = {k for e in editors.values() for k in e}
    assert found == kinds
    for e in editors.values():
        for kind, lora in e.items():
            assert bool((lora.mask == 0).any()) is masked[kind]
            assert lora.rank == 4 * len(lora.neurons)
    if "lse" in kinds:
        assert editors[0]["lse"].neurons == (5, 7) and editors[0]["lse"].rank == 8


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_round_trip_with_peft(arch, tmp_path):
    from peft import PeftModel

    model, tok = tiny_model(arch)
    result = get_editor("memla", FAST).edit(model, tok, request())
    assert save_edit(result, model, tmp_path / "adapter") == "lora"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad(), apply(model, result):
        edited = model(ids).logits
    base, _ = tiny_model(arch)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    with torch.no_grad():
        loaded = peft_model(ids).logits
    assert (loaded - edited).abs().max() <= 1e-4
    again = load_edit(tmp_path / "adapter", model)
    for name, delta in result.deltas.items():
        torch.testing.assert_close(again.deltas[name], delta, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="The capital of France is"), "exactly one"),
        (dict(target_new=" "), "empty target_new"),
        (dict(target_new="Paris"), "equals target_true"),
        (dict(lang="xx"), "unknown language"),
        (dict(subject=""), "empty subject"),
    ],
)
def test_bad_requests_fail_before_any_work(kwargs, message):
    fields = dict(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris", lang="en")
    with pytest.raises(EditError, match=message):
        EditRequest(**{**fields, **kwargs})


def test_config_rejects_unknown_key_and_bad_values(tmp_path):
    with pytest.raises(Exception, match="unknown MemlaConfig key"):
        get_editor("memla", {"rank": 3})
    with pytest.raises(Exception, match="scale"):
        get_editor("memla", {"scale": "weird"})
    path = tmp_path / "memla.yaml"
    path.write_text("rank_per_neuron: 2\nlocate_langs: [en, zh]\n")
    editor = get_editor("memla", path)
    assert editor.config.rank_per_neuron == 2 and editor.config.locate_langs == ("en", "zh")


def test_unknown_method_suggests_closest():
    with pytest.raises(EditError, match="did you mean 'memla'"):
        get_editor("memlaa")


@pytest.mark.slow
def test_real_model_english_edit_prefers_new(default_model):
    model, tok = default_model
    req = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris", lang="en")
    result = get_editor("memla", {"locate_langs": ("en",)}).edit(model, tok, req)
    with apply(model, result):
        assert mean_logp(model, tok, req.text, "Rome") > mean_logp(model, tok, req.text, "Paris")


def test_ablations_are_registered_methods():
    expected = {"memla-wo-lsm": ("mask_lse", False), "memla-wo-lse": ("use_lse", False),
                "memla-wo-lim": ("mask_lie", False), "memla-wo-lie": ("use_lie", False)}
    for name, (field, value) in expected.items():
        editor = get_editor(name)
        assert editor.name == name
        assert getattr(editor.config, field) is value
        others = {"use_lse", "use_lie", "mask_lse", "mask_lie"} - {field}
        assert all(getattr(editor.config, f) is True for f in others)
