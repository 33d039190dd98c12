"""NeuronSet algebra, the Eq. 3-4 split, knowledge_neurons() and locate() (memla.neurons)."""

import types

import pytest
import torch

from memla.errors import DataError
from memla.neurons import NeuronSet, attribute, knowledge_neurons, locate, split_language_neurons
from memla.neurons.locate import _combine


def ns(*pairs):
    return NeuronSet(pairs)


def test_neuronset_algebra_and_views():
    a = ns((0, 1), (0, 5), (3, 2))
    b = ns((0, 5), (3, 2), (4, 7))
    assert a | b == ns((0, 1), (0, 5), (3, 2), (4, 7))
    assert a & b == ns((0, 5), (3, 2))
    assert a - b == ns((0, 1))
    assert len(a) == 3 and (0, 5) in a and (1, 5) not in a
    assert list(b) == [(0, 5), (3, 2), (4, 7)]
    assert a.by_layer() == {0: (1, 5), 3: (2,)}
    assert a.layer(0) == (1, 5) and a.layer(9) == ()
    assert a.layers == (0, 3) and a.counts() == {0: 2, 3: 1}
    assert not NeuronSet() and bool(a)
    assert hash(a) == hash(ns((3, 2), (0, 1), (0, 5)))
    mask = a.mask(4, 8)
    assert mask.shape == (4, 8) and mask.sum() == 3 and mask[0, 5] and mask[3, 2]
    with pytest.raises(TypeError):
        a | {(0, 1)}


def test_neuronset_json_round_trip():
    a = ns((0, 1), (0, 5), (17, 2047))
    assert NeuronSet.from_json(a.to_json()) == a
    assert NeuronSet.from_dict(a.to_dict()) == a
    assert a.to_dict() == {"layers": {"0": [1, 5], "17": [2047]}}
    assert NeuronSet.from_json(NeuronSet().to_json()) == NeuronSet()


def test_from_scores_threshold():
    scores = torch.tensor([[1.0, 0.3, -2.0], [0.31, 0.0, 0.5]])
    assert NeuronSet.from_scores(scores, threshold=0.3) == ns((0, 0), (1, 0), (1, 2))  # strictly above 0.3 x max
    assert NeuronSet.from_scores(scores, threshold=0.3, layers=[4, 9]) == ns((4, 0), (9, 0), (9, 2))
    assert NeuronSet.from_scores(-scores.abs(), threshold=0.3) == NeuronSet()  # no positive score
    with pytest.raises(ValueError):
        NeuronSet.from_scores(scores, threshold=1.5)


def test_split_language_neurons():
    per = {"en": ns((0, 1), (0, 2), (1, 3)), "zh": ns((0, 1), (1, 3), (1, 4)), "fr": ns((0, 1), (1, 3), (2, 2))}
    independent, specific = split_language_neurons(per, "en")
    assert independent == ns((0, 1), (1, 3))  # Eq. 3
    assert specific == ns((0, 2))  # Eq. 4
    assert split_language_neurons(per, "zh")[1] == ns((1, 4))
    assert split_language_neurons({"en": per["en"]}, "en") == (per["en"], NeuronSet())
    with pytest.raises(ValueError, match="source language"):
        split_language_neurons(per, "de")


def test_combine_union_and_share():
    sets = [ns((0, 1), (0, 2)), ns((0, 1), (1, 1)), ns((0, 1), (0, 2), (2, 2))]
    assert _combine(sets, None) == ns((0, 1), (0, 2), (1, 1), (2, 2))
    assert _combine(sets, 0.5) == ns((0, 1), (0, 2))
    assert _combine(sets, 1.0) == ns((0, 1))


def test_knowledge_neurons_on_tiny(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    model, tok = tiny
    prompts = ["The capital of France is", "La capitale de la France est"]
    kw = dict(steps=3, progress=False)
    union = knowledge_neurons(model, tok, prompts, "Paris", **kw)
    each = [NeuronSet.from_scores(attribute(model, tok, p, "Paris", steps=3), threshold=0.3) for p in prompts]
    assert union == each[0] | each[1]
    assert knowledge_neurons(model, tok, prompts, "Paris", share=1.0, **kw) == each[0] & each[1]
    assert knowledge_neurons(model, tok, prompts[0], "Paris", **kw) == each[0]
    loose = knowledge_neurons(model, tok, prompts, "Paris", lang="en", thresholds={"en": 0.1}, **kw)
    assert all(pair in loose for pair in union) and len(loose) >= len(union)
    with pytest.raises(DataError):
        knowledge_neurons(model, tok, [], "Paris", **kw)


def _record():
    def edit(prompt, subject, true):
        return types.SimpleNamespace(prompt=prompt, subject=subject, target_true=true, target_new="Rome")

    return types.SimpleNamespace(
        example_id=7,
        langs=("en", "fr", "zh"),
        edit={"en": edit("The capital of {} is", "France", "Paris"),
              "fr": edit("La capitale de {} est", "la France", "Paris"),
              "zh": edit("{}的首都是", "法国", "巴黎")},
        paraphrase_prompts={"en": ["The capital city of France is"], "fr": []},
    )


def test_locate_on_tiny(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    model, tok = tiny
    rec = _record()
    found = locate(model, tok, rec, "en", langs=("en", "zh", "fr", "de"), steps=3, progress=False)
    assert found.missing == ("de",)
    assert set(found.per_language) == {"en", "zh", "fr"}
    en = knowledge_neurons(model, tok, ["The capital of France is", "The capital city of France is"], "Paris",
                           lang="en", steps=3, progress=False)
    zh = knowledge_neurons(model, tok, ["法国的首都是"], "巴黎", lang="zh", steps=3, progress=False)
    assert found.per_language["en"] == en and found.per_language["zh"] == zh
    assert found.independent == en & zh & found.per_language["fr"]
    assert found.specific == en - found.independent
    assert found.to_dict()["ls"] == "en"
    every = locate(model, tok, rec, "fr", langs="all", paraphrases=False, steps=3, progress=False)
    assert set(every.per_language) == {"en", "fr", "zh"} and every.ls == "fr"
    with pytest.raises(DataError, match="source language"):
        locate(model, tok, rec, "de", steps=3, progress=False)
