"""IKE (Zheng et al. 2023): no weight changes, demonstration kinds, retrieval, prefix layout, configs."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from memla.config import dump_config, load_config
from memla.data import load_dataset
from memla.editors import EditRequest, apply, get_editor
from memla.editors.ike import DEMO_TEMPLATE, CharTfidf, IKEConfig, IKEEditor, kind_counts
from memla.errors import EditError, MemlaError
from memla.langs import join
from memla.tokens import encode_text


@pytest.fixture(scope="module")
def mkeb_test_records():
    return load_dataset("mkeb-mini", split="test")


@pytest.fixture(scope="module")
def dev_records():
    return {r.example_id: r for r in load_dataset("mkeb-mini", split="dev")}


def test_no_weight_changes_and_prefix_layout(mkeb_test_records):
    model, tok = tiny_model("llama")
    req = EditRequest.from_record(mkeb_test_records[0], "en")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = get_editor("ike", {"k": 8}).edit(model, tok, req)
    assert dict(result.deltas) == {}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with apply(model, result):  # nothing to apply
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert result.prefix.endswith(f"New Fact: {req.text} {req.target_new}\nPrompt: ")
    assert result.prefix.count("New Fact: ") == 9 and result.info["k"] == 8


def test_prefix_built_from_the_right_kinds(mkeb_test_records, dev_records):
    model, tok = tiny_model("llama")  # 4096 positions: the 16 demonstrations fit (gpt2's 128 do not)
    req = EditRequest.from_record(mkeb_test_records[3], "en")
    editor = IKEEditor(IKEConfig(k=16))
    demos = editor.demonstrations(model, tok, req)
    result = editor.edit(model, tok, req)
    assert result.info["kinds"] == kind_counts(16, (4, 12, 16)) == {"copy": 2, "update": 6, "retain": 8}
    assert result.prefix == "".join(d[3] for d in demos) + f"New Fact: {join(req.text, req.target_new, 'en')}\nPrompt: "
    for fact, kind, _, text in demos:
        record = dev_records[fact.record_id]
        e = record.edit["en"]
        new_fact = join(e.filled(), e.target_new, "en")
        assert text.startswith(f"New Fact: {new_fact}\nPrompt: ") and text.endswith("\n\n")
        prompt = text[len(f"New Fact: {new_fact}\nPrompt: "):-2]
        if kind == "copy":
            assert prompt == new_fact
        elif kind == "update":  # a paraphrase answered with the new target
            assert prompt in {join(p, e.target_new, "en") for p in record.paraphrase_prompts["en"]}
        else:  # retain: a neighbourhood prompt answered with its true answer
            pairs = zip(record.neighborhood_prompts["en"], record.neighborhood_answers["en"])
            assert prompt in {join(p, a, "en") for p, a in pairs}
    # pool facts come from the dev split only, never the request's own subject, the most similar last
    assert all(d[0].record_id in dev_records and d[0].subject != req.subject for d in demos)
    sims = [d[2] for d in demos]
    assert sims == sorted(sims)


def test_source_language_pool_and_join_rule(mkeb_test_records):
    model, tok = tiny_model("llama")
    req = EditRequest.from_record(mkeb_test_records[0], "zh")
    result = get_editor("ike", {"k": 4}).edit(model, tok, req)
    assert result.prefix.endswith(f"New Fact: {req.text}{req.target_new}\nPrompt: ")  # zh: no separator
    assert "The capital" not in result.prefix


def test_kind_counts():
    assert kind_counts(32, (4, 12, 16)) == {"copy": 4, "update": 12, "retain": 16}
    assert kind_counts(8, (4, 12, 16)) == {"copy": 1, "update": 3, "retain": 4}
    for k in range(0, 40):
        assert sum(kind_counts(k, (1, 3, 4)).values()) == k
    assert kind_counts(5, (1, 0, 0)) == {"copy": 5, "update": 0, "retain": 0}


def test_char_tfidf_similarity():
    docs = ["The capital of France is Rome", "The currency of Japan is the euro", "法国的首都是罗马", "Die Hauptstadt von Frankreich ist Rom"]
    tfidf = CharTfidf(docs)
    sims = tfidf.similarity("The capital of France is Rome")
    assert sims[0] == pytest.approx(1.0) and sims.argmax() == 0
    assert sims[1] < sims[0] and sims[2] == pytest.approx(0.0)
    zh = tfidf.similarity("法国的首都是东京")
    assert zh.argmax() == 2 and 0 < zh[2] < 1
    assert tfidf.similarity("qqqq").max() == 0.0


def test_hidden_state_retriever_leaves_weights_alone(mkeb_test_records):
    model, tok = tiny_model("gemma3_text")
    req = EditRequest.from_record(mkeb_test_records[0], "en")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    editor = get_editor("ike", {"k": 6, "retriever": "hidden"})
    result = editor.edit(model, tok, req)
    assert result.info["retriever"] == "hidden" and result.info["k"] == 6
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert editor.edit(model, tok, req).prefix == result.prefix  # cached pool embeddings, deterministic


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_hidden_embeddings_of_a_padded_batch_are_each_text_alone(arch):
    """`IKEEditor._hidden`: the L2-normalised mean of layer ``hidden_layer``'s states over each
    text's own tokens, whatever the other texts of its left-padded batch."""
    model, tok = tiny_model(arch)
    texts = ["The capital of Japan is Tokyo.", "Rome", "Le temps aujourd'hui est beau, et demain aussi."]
    editor = IKEEditor(IKEConfig(retriever="hidden"))
    batch = editor._hidden(model, tok, texts)  # (3, d_model)
    for i, text in enumerate(texts):
        ids = torch.tensor([encode_text(tok, text)])
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states[editor.config.hidden_layer][0]
        alone = torch.nn.functional.normalize(states.float().mean(0), dim=-1).numpy()
        assert abs(batch[i] - alone).max() < 1e-4


def test_pool_exclusion_and_small_pools(tmp_path, mkeb_test_records):
    from memla.data import save_dataset

    record = mkeb_test_records[0]
    path = save_dataset([record, mkeb_test_records[1]], tmp_path / "pool.json")
    model, tok = tiny_model("gpt2")
    req = EditRequest.from_record(record, "en")
    result = get_editor("ike", {"k": 8, "pool": str(path), "pool_split": None}).edit(model, tok, req)
    assert result.info["k"] == 1  # its own record is left out; only one other fact remains
    with pytest.raises(EditError, match="no 'en' facts"):
        get_editor("ike", {"k": 8, "pool": str(save_dataset([record], tmp_path / "one.json")), "pool_split": None}).edit(model, tok, req)
    assert get_editor("ike", {"k": 0}).edit(model, tok, req).prefix == f"New Fact: {req.text} {req.target_new}\nPrompt: "


def test_sentence_retriever_needs_a_model():
    with pytest.raises(MemlaError, match="sentence_model"):
        load_config(IKEConfig, {"retriever": "sentence"})
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        model, tok = tiny_model("gpt2")
        req = EditRequest(prompt="The capital of {} is", subject="Peru", target_new="Rome", target_true="Lima")
        with pytest.raises(EditError, match="sentence-transformers"):
            get_editor("ike", {"retriever": "sentence", "sentence_model": "all-MiniLM-L6-v2"}).edit(model, tok, req)


def test_config_roundtrips_through_yaml(tmp_path):
    config = IKEConfig(k=12, ratio=(1, 1, 2), retriever="hidden", ngram_range=(1, 3), pool_split=None, seed=3)
    path = tmp_path / "ike.yaml"
    dump_config(config, path)
    assert load_config(IKEConfig, path) == config
    with pytest.raises(MemlaError, match="ratio"):
        load_config(IKEConfig, {"ratio": [0, 0, 0]})
    with pytest.raises(MemlaError, match="retriever"):
        load_config(IKEConfig, {"retriever": "bm25"})


def test_template():
    assert DEMO_TEMPLATE.format(fact="A is B", prompt="C is D") == "New Fact: A is B\nPrompt: C is D\n\n"


@pytest.mark.slow
def test_ike_on_default_model(default_model, mkeb_test_records):
    """The new fact in context flips the edit prompt; the demonstrations keep most of the gain."""
    from memla.evaluate.scoring import score_targets

    model, tok = default_model
    req = EditRequest.from_record(mkeb_test_records[0], "en")

    def margin(prefix: str) -> float:
        new, true = score_targets(model, tok, [(req.text, req.target_new, "en"), (req.text, req.target_true, "en")], prefix=prefix)
        return new.mean - true.mean

    unedited = margin("")
    assert margin(get_editor("ike", {"k": 0}).edit(model, tok, req).prefix) > 0 > unedited
    assert margin(get_editor("ike", {"k": 8}).edit(model, tok, req).prefix) > unedited


def test_a_prefix_longer_than_the_context_is_an_edit_error(mkeb_test_records):
    """gpt2's learned positions stop at 128: 16 demonstrations would index past them, so the edit is refused."""
    model, tok = tiny_model("gpt2")
    req = EditRequest.from_record(mkeb_test_records[3], "en")
    with pytest.raises(EditError, match=r"IKE's 16 demonstrations and the prompt take \d+ tokens, more than the model's "
                                        r"context of 128; lower IKEConfig.k"):
        IKEEditor(IKEConfig(k=16)).edit(model, tok, req)
