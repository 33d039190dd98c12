"""IG attribution (memla.neurons): fast path == reference, completeness, determinism, errors, disk cache."""

import pytest
import torch

from memla.errors import DataError
from memla.hooks import trace
from memla.models import arch_spec, mlp_dims
from memla.neurons import NeuronSet, attribute
from memla.neurons import cache as disk
from memla.neurons._common import Head

PROMPT = "The capital of France is"


def assert_agree(fast, ref, *, thresholds=(0.1, 0.2, 0.3)):
    """The issue's agreement rule: max |diff| <= 1e-4 max |score| and the same thresholded sets."""
    assert fast.shape == ref.shape
    assert (fast - ref).abs().max() <= 1e-4 * ref.abs().max()
    for thr in thresholds:
        assert NeuronSet.from_scores(fast, threshold=thr) == NeuronSet.from_scores(ref, threshold=thr)


@pytest.mark.parametrize("target", ["Paris", "Paris. The capital"], ids=["single", "multi"])
def test_fast_matches_reference(tiny, target):
    model, tok = tiny
    fast = attribute(model, tok, PROMPT, target, steps=6)
    ref = attribute(model, tok, PROMPT, target, steps=6, method="reference")
    assert fast.shape == (2, mlp_dims(model)[1])
    assert_agree(fast, ref)


@pytest.mark.parametrize("point,baseline", [("mlp_in", "zero"), ("down_in", "sig_mean")])
def test_fast_matches_reference_options(tiny, point, baseline):
    model, tok = tiny
    kw = dict(steps=4, point=point, baseline=baseline)
    ref = attribute(model, tok, PROMPT, "Paris Rome", method="reference", **kw)
    assert_agree(attribute(model, tok, PROMPT, "Paris Rome", **kw), ref)
    assert_agree(attribute(model, tok, PROMPT, "Paris Rome", max_rows=7, **kw), ref)  # paths split over chunks


def test_fast_matches_reference_long_prompt_chunks_and_layer_subset(tiny):
    """A prompt past the tiny Gemma's 16-token sliding window, rows split over chunks, one layer."""
    model, tok = tiny
    prompt = "The capital of Italy is Rome. The capital of Japan is Tokyo. La capitale de la France est"
    assert len(tok(prompt).input_ids) > 16
    ref = attribute(model, tok, prompt, "Paris", steps=5, method="reference")
    assert_agree(attribute(model, tok, prompt, "Paris", steps=5, max_rows=3), ref)
    target = "Paris. The capital of Italy"  # teacher forcing past the window: the prefix cache is cut back further
    assert_agree(attribute(model, tok, prompt, target, steps=3),
                 attribute(model, tok, prompt, target, steps=3, method="reference"))
    one = attribute(model, tok, prompt, "Paris", steps=5, layers=[1], max_rows=4)
    assert one.shape[0] == 1
    assert (one[0] - ref[1]).abs().max() <= 1e-4 * ref[1].abs().max()


def test_single_token_prompt_without_prefix(tiny):
    """The tiny tokenizer adds no BOS: a one-token prompt leaves an empty prefix cache."""
    model, tok = tiny
    assert len(tok("The").input_ids) == 1
    assert_agree(attribute(model, tok, "The", "capital", steps=4),
                 attribute(model, tok, "The", "capital", steps=4, method="reference"))


def test_head_blocks_match_autograd(tiny):
    """The blocked online-softmax head gives P(target) and dP/dh as autograd does (Gemma 2: soft-capped)."""
    model, _ = tiny
    spec = arch_spec(model)
    lm_head = model.get_submodule(spec.lm_head)
    h = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    prob, grad = Head(model, block=100)(h, 321)  # 512-token vocabulary: 6 blocks
    x = h.clone().requires_grad_(True)
    logits = lm_head(x).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    p = torch.softmax(logits, -1)[:, 321]
    (expected,) = torch.autograd.grad(p.sum(), x)
    torch.testing.assert_close(prob, p.detach(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-9)


def _prob(model, ids, target, zero_layer=None):
    """P(target | ids), optionally with one layer's down-projection input zeroed at the last position."""
    spec = arch_spec(model)

    def zero(x, _name):
        x = x.clone()
        x[:, -1] = 0
        return x

    with torch.no_grad():
        if zero_layer is None:
            logits = model(torch.tensor([ids])).logits
        else:
            with trace(model, spec.path(spec.mlp_down, zero_layer), edit_input=zero, retain_output=False):
                logits = model(torch.tensor([ids])).logits
    return torch.softmax(logits[0, -1].float(), -1)[target].item()


@pytest.mark.parametrize("layer", [0, 1])
def test_completeness(tiny, layer):
    """Sum of one layer's attributions -> P(x) - P(baseline) as the steps grow (right Riemann sum, O(1/m))."""
    model, tok = tiny
    ids = tok(PROMPT).input_ids
    target = tok(PROMPT + " Paris").input_ids[len(ids)]
    delta = _prob(model, ids, target) - _prob(model, ids, target, zero_layer=layer)
    errors = [abs(attribute(model, tok, PROMPT, "Paris", layers=[layer], steps=s).sum().item() - delta)
              for s in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] <= 0.05 * abs(delta)


def test_deterministic(tiny):
    model, tok = tiny
    a = attribute(model, tok, PROMPT, "Paris Rome", steps=4, baseline="sig_mean")
    b = attribute(model, tok, PROMPT, "Paris Rome", steps=4, baseline="sig_mean")
    assert torch.equal(a, b)


def test_parameters_untouched_and_no_grads(tiny):
    model, tok = tiny
    before = {n: p.clone() for n, p in model.state_dict().items()}
    attribute(model, tok, PROMPT, "Paris", steps=3)
    attribute(model, tok, PROMPT, "Paris", steps=3, method="reference")
    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n]), n
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    for module in model.modules():  # no hooks left behind
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_errors(tiny):
    model, tok = tiny
    with pytest.raises(DataError, match="empty target"):
        attribute(model, tok, PROMPT, "  ")
    with pytest.raises(DataError, match="empty prompt"):
        attribute(model, tok, "", "Paris")
    if getattr(model.config, "max_position_embeddings", None):  # BLOOM (ALiBi) has no context limit
        with pytest.raises(DataError, match="longer than the model's context"):
            attribute(model, tok, "Paris " * 4200, "Paris")
    with pytest.raises(ValueError, match="point"):
        attribute(model, tok, PROMPT, "Paris", point="up")
    with pytest.raises(ValueError, match="layers"):
        attribute(model, tok, PROMPT, "Paris", layers=[5])


def test_disk_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    model, tok = tiny
    first = attribute(model, tok, PROMPT, "Paris", steps=3, cache=True)
    files = list((tmp_path / "neurons").glob("*.safetensors"))
    assert len(files) == 1

    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr("memla.neurons.attribution.attribute_fast", boom)
    assert torch.equal(attribute(model, tok, PROMPT, "Paris", steps=3, cache=True), first)
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: another key
        attribute(model, tok, PROMPT, "Paris", steps=4, cache=True)
    files[0].write_bytes(b"garbage")  # an unreadable file is recomputed, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    assert torch.equal(attribute(model, tok, PROMPT, "Paris", steps=3, cache=True), first)
    assert disk.load(files[0].stem) is not None
