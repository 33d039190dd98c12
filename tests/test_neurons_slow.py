"""memla.neurons on the real default model (Gemma 3 270M): fast path == reference, sensible neurons."""

import pytest

from memla.neurons import NeuronSet, attribute, knowledge_neurons

pytestmark = pytest.mark.slow


def test_fast_matches_reference_on_default_model(default_model):
    """Gemma 3 details (sliding-window layers, post-FFN norm, scaled embedding, tied head) are reproduced."""
    model, tok = default_model
    layers = [0, 5, 11, 17]  # sliding and full-attention layers, bottom to top
    for target in ("Paris", "Paris, the city of light"):
        fast = attribute(model, tok, "The capital of France is", target, layers=layers, steps=10)
        ref = attribute(model, tok, "The capital of France is", target, layers=layers, steps=10,
                        method="reference")
        assert (fast - ref).abs().max() <= 2e-4 * ref.abs().max()  # fp32, summed in another order (seen: 1.2e-4)
        for thr in (0.1, 0.2, 0.3):
            assert NeuronSet.from_scores(fast, threshold=thr) == NeuronSet.from_scores(ref, threshold=thr)


def test_knowledge_neurons_on_default_model(default_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    model, tok = default_model
    found = knowledge_neurons(model, tok, ["The capital of France is"], "Paris", lang="en", progress=False)
    assert 0 < len(found) < 200
    assert max(found.layers) <= 17
