"""patch: one gated neuron per edit (memla.editors.patch)."""

import pytest
import torch
from tiny import tiny_model

from memla.data import load_dataset
from memla.editors import EditRequest, apply, get_editor, pristine
from memla.editors.kv.keys import locate_request
from memla.editors.patch import PatchConfig, fit_gate, fit_up, mlp_inputs, token_inputs
from memla.errors import EditError
from memla.models import arch_spec
from memla.tokens import encode_pair, encode_text
from test_memla_editor import mean_logp
from test_memla_editor import request as france_request

# few tokens: separable in a tiny model's 32 dimensions; the gate at the prompt's last token, where one neuron moves
# a tiny random model's answer directly (its near-uniform attention carries little from the subject's token)
FAST = {"gate_at": "last", "gate_margin": 4.0, "anchor_subjects": 1, "anchor_generic": False, "after_target": 2,
        "steps": 25, "stop_prob": None}


def first_logp(model, tok, prompt, target) -> float:
    """log P(first token of ``target`` | ``prompt``)."""
    enc = encode_pair(tok, prompt, target, "en")
    with torch.no_grad():
        logits = model(torch.tensor([enc.prompt_ids])).logits[0, -1].float()
    return float(logits.log_softmax(-1)[enc.target_ids[0]])


@pytest.fixture(params=["llama", "gemma3_text"])
def tiny2(request):
    return tiny_model(request.param)


def test_fit_gate_separates_and_has_no_bias():
    """The bias-free logistic regression puts every positive above 0 and every negative below 0 on data separable
    through the origin, and scaling the inputs only rescales ``g``; with ``bias`` it separates data that needs one."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    fire = (x[:, 0] > 0).double()
    g, b = fit_gate(x, fire, l2=1e-4)
    assert float(b) == 0.0 and ((x @ g > 0).double() == fire).all()
    assert torch.allclose(fit_gate(2 * x, fire, l2=1e-4)[0] * 2, g, atol=1e-6)
    shifted = (x[:, 0] > 1.0).double()  # a threshold away from the origin in a 1-d problem: needs the bias
    g1, b1 = fit_gate(x[:, :1], shifted, l2=1e-6, bias=True)
    assert ((x[:, :1] @ g1 + b1 > 0).double() == shifted).all() and float(b1) < 0


def test_fit_up_reads_one_on_every_token(tiny2):
    """``u·x ≈ 1`` on the tokens it was fitted on (a shared direction of the normed MLP inputs carries it), so the
    repurposed neuron's activation has the sign of its gate's; ``token_inputs`` keeps every unpadded token."""
    model, tok = tiny2
    texts = ["The capital of France is", "Paris", "The weather today is fine and warm"]
    seqs = [encode_text(tok, t) for t in texts]
    x, first = token_inputs(model, tok, seqs, 1)
    assert x.shape[0] == sum(map(len, seqs)) and first.tolist() == [0, len(seqs[0]), len(seqs[0]) + len(seqs[1])]
    last = first + torch.tensor([len(q) - 1 for q in seqs])
    assert torch.allclose(x[last], mlp_inputs(model, tok, texts, [1])[1])
    u = fit_up(x, ridge=1e-6)
    assert (x @ u - 1).abs().mean() < 0.02 and (x @ u).min() > 0.5


def test_patch_edits_the_fact_and_changes_one_neuron(tiny2):
    """The edit raises the new object; its deltas touch one row of the gate and up projections and one column of the
    down projection of one layer; the gate fires on the fact's prompts and not on its anchors."""
    model, tok = tiny2
    req = france_request()
    before = first_logp(model, tok, req.text, "Tokyo")
    result = get_editor("patch", FAST).edit(model, tok, req)
    info, spec = result.info, arch_spec(model)
    layer, neuron = info["layer"], info["neuron"]
    assert info["fires_fact"] == 1.0 and info["fires_other"] < 0.05
    gate, up = (spec.path(p, layer) + ".weight" for p in spec.mlp_in)
    assert set(result.deltas) == {gate, up, spec.down_weight_name(layer)}
    for name, delta in result.deltas.items():
        rows, cols = delta.nonzero(as_tuple=True)
        changed = cols if name == spec.down_weight_name(layer) else rows
        assert set(changed.tolist()) == {neuron}
    with apply(model, result):
        after = first_logp(model, tok, req.text, "Tokyo")
        # the neuron acts at the prompt's last token, on the new object's first token; a tiny random model's
        # final norm bounds how far one neuron can move it
        assert after > before + 0.2


def test_patch_merged_weights_are_what_training_saw(tiny2):
    """The value was trained through a hook that swaps the neuron; merging the deltas gives the same P(new)."""
    model, tok = tiny2
    req = france_request()
    result = get_editor("patch", FAST).edit(model, tok, req)
    with apply(model, result):
        merged = mean_logp(model, tok, req.text, "Tokyo")
    assert abs(float(torch.tensor(merged).exp()) - result.info["p_new"][-1]) < 1e-5
    assert len(result.info["p_new"]) == FAST["steps"] + 1 and result.info["p_new"][-1] > result.info["p_new"][0]


def test_patch_gate_is_shut_by_the_margin_and_the_neuron_reads_the_gain(tiny2):
    """The merged neuron's gate pre-activation is at most ``−gate_margin`` at every fitted token but the fact
    prompts' last ones (the tokens of ``target_new`` and of the continuation after it included), and its
    activation there is ``gain`` on average."""
    model, tok = tiny2
    req = france_request()
    editor = get_editor("patch", {**FAST, "gain": 3.0, "gate_margin": 5.0})
    seqs, fire = editor.sequences(model, tok, req)
    result = editor.edit(model, tok, req)
    assert result.info["gate_tokens"] == sum(map(len, seqs))
    spec = arch_spec(model)
    layer, neuron = result.info["layer"], result.info["neuron"]
    with apply(model, result):  # the layer's input is upstream of the patched neuron
        x, first = token_inputs(model, tok, seqs, layer)
        gate, up = (model.get_submodule(spec.path(p, layer)).weight[neuron].double() for p in spec.mlp_in)
        act = model.get_submodule(spec.path(spec.mlp, layer)).act_fn
    pre = x @ gate  # (N,)
    facts = first[: len(fire)] + torch.tensor(fire)
    others = torch.ones(len(x), dtype=torch.bool)
    others[facts] = False
    assert float(pre[others].max()) <= -5.0 + 1e-4  # float32 weights
    assert abs(float((act(pre[facts]) * (x[facts] @ up)).mean()) - 3.0) < 0.5


def test_stop_prob_ends_training_once_the_edit_holds(tiny2):
    model, tok = tiny2
    first = get_editor("patch", FAST).edit(model, tok, france_request()).info["p_new"]
    stop = (first[0] + first[-1]) / 2  # reached partway
    info = get_editor("patch", {**FAST, "stop_prob": stop}).edit(model, tok, france_request()).info
    assert info["p_new"][-1] > stop and all(p <= stop for p in info["p_new"][:-1])
    assert info["steps"] == len(info["p_new"]) - 1 < FAST["steps"]


def test_a_sequential_run_never_takes_a_neuron_twice(tiny2):
    model, tok = tiny2
    req = france_request()
    editor = get_editor("patch", {**FAST, "steps": 2})
    with pristine(model), editor.sequence():
        first = editor.edit(model, tok, req)
        second = editor.edit(model, tok, req)
    assert first.info["neuron"] != second.info["neuron"]
    assert editor.used is None
    assert editor.edit(model, tok, req).info["neuron"] == first.info["neuron"]  # outside a run: no memory


def test_patch_refuses_a_fact_no_gate_can_single_out():
    """With far more anchor tokens than a tiny model has dimensions, no bias-free gate shuts on all of them (the
    seeded tiny llama; the real model's 640 dimensions separate ~2000 tokens)."""
    model, tok = tiny_model("llama")
    with pytest.raises(EditError, match="separates"):
        get_editor("patch", {**FAST, "anchor_subjects": 16, "anchor_generic": True}).edit(model, tok, france_request())


def test_patch_refuses_an_mlp_without_a_gate():
    model, tok = tiny_model("gpt2")
    with pytest.raises(EditError, match="gated MLP"):
        get_editor("patch", FAST).edit(model, tok, france_request())


@pytest.mark.parametrize("bad, match", [({"layer": -1}, "layer"), ({"gain": 0.0}, "gain"),
                                        ({"anchor_subjects": 0, "anchor_generic": False}, "negatives"),
                                        ({"anchor_facts": -1}, "anchor_facts"), ({"after_target": -1}, "after_target"),
                                        ({"gate_threshold": 1.0}, "gate_threshold"), ({"gate_at": "first"}, "gate_at"),
                                        ({"steps": -1}, "steps"), ({"stop_prob": 1.0}, "stop_prob")])
def test_patch_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        PatchConfig(**bad)


def test_patch_layer_defaults_to_romes_at_the_subject_and_two_thirds_of_the_depth_at_the_last_token(tiny2):
    model, _ = tiny2
    from memla.models import num_layers
    assert get_editor("patch").config.gate_at == "subject"
    assert get_editor("patch").layer(model) == get_editor("rome").layer(model)
    assert get_editor("patch", {"gate_at": "last"}).layer(model) == 2 * num_layers(model) // 3


def test_the_gate_is_fitted_on_the_prompt_then_target_new_and_its_continuation(tiny2):
    """With ``after_target`` each gate language's sequence is its prompt, ``target_new`` and ``after_target``
    greedy tokens (EOS may end it sooner), and the gate fires at the prompt's last token; without, the bare prompts."""
    model, tok = tiny2
    req = france_request()
    seqs, fire = get_editor("patch", {**FAST, "after_target": 3}).sequences(model, tok, req)
    for j, k in enumerate(req.among(("all",))):
        enc = encode_pair(tok, req.in_lang(k).text, req.in_lang(k).target_new, k)
        n = len(enc.prompt_ids) + len(enc.target_ids)
        assert seqs[j][:n] == list(enc.prompt_ids + enc.target_ids) and n < len(seqs[j]) <= n + 3
        assert fire[j] == len(enc.prompt_ids) - 1
    bare, fire0 = get_editor("patch", {**FAST, "after_target": 0}).sequences(model, tok, req)
    assert bare[: len(fire0)] == [encode_text(tok, req.in_lang(k).text) for k in req.among(("all",))]
    assert fire0 == [len(q) - 1 for q in bare[: len(fire0)]] and bare[len(fire0):] == seqs[len(fire):]


def test_gate_at_subject_fires_at_the_subjects_last_token(tiny2):
    """With ``gate_at: subject`` the sequences are the same and the gate fires at the subject's last token
    (ROME's key), the prompt's last where the subject is not in the prompt; the layer defaults to ROME's."""
    model, tok = tiny2
    req = france_request()
    seqs, last = get_editor("patch", FAST).sequences(model, tok, req)
    same, fire = get_editor("patch", {**FAST, "gate_at": "subject"}).sequences(model, tok, req)
    assert same == seqs and len(fire) == len(last)
    for j, k in enumerate(req.among(("all",))):
        fact = req.in_lang(k)
        prompt = encode_text(tok, fact.text)
        assert fire[j] == locate_request(tok, fact, ids=prompt).pos <= last[j] == len(prompt) - 1
        if k == "en":
            assert fire[j] < last[j] and tok.decode(prompt[: fire[j] + 1]).endswith("France")


def test_a_subject_gate_edits_the_fact(tiny2):
    """The neuron fires at the subject's last token; its value reaches the answer only through the attention
    of the layers above (a tiny random model's is near uniform, so the rise is small, but it is there)."""
    model, tok = tiny2
    req = france_request()
    before = first_logp(model, tok, req.text, "Tokyo")
    result = get_editor("patch", {**FAST, "gate_at": "subject", "layer": 0}).edit(model, tok, req)
    assert result.info["fires_fact"] == 1.0 and result.info["fires_other"] < 0.05
    with apply(model, result):
        assert first_logp(model, tok, req.text, "Tokyo") > before + 0.02


def test_anchor_facts_adds_prompts_of_other_facts_in_every_gate_language(tiny2):
    model, tok = tiny2
    req = france_request()
    _, quiet = get_editor("patch", FAST).prompts(model, tok, req)
    _, more = get_editor("patch", {**FAST, "anchor_facts": 4}).prompts(model, tok, req)
    extra = [q for q in more if q not in quiet]
    assert len(extra) == 4 * len(req.among(("all",))) and not any("France" in q or "法国" in q for q in extra)


def test_gate_threshold_moves_the_gate_along_the_up_row(tiny2):
    """With ``gate_threshold`` the gate row is the plain one less a multiple of ``u`` (the up row's direction):
    a bias read through ``u·x ≈ 1``; the fact's prompts still open it."""
    model, tok = tiny2
    req = france_request()
    spec = arch_spec(model)
    rows = {}
    for tau in (0.0, 0.5):
        result = get_editor("patch", {**FAST, "steps": 1, "gate_threshold": tau}).edit(model, tok, req)
        layer, neuron = result.info["layer"], result.info["neuron"]
        gate, up = (result.deltas[spec.path(p, layer) + ".weight"][neuron].double() for p in spec.mlp_in)
        old_gate, old_up = (model.get_submodule(spec.path(p, layer)).weight[neuron].double() for p in spec.mlp_in)
        rows[tau] = (gate + old_gate, up + old_up)
        assert result.info["fires_fact"] == 1.0
    basis = torch.stack([rows[0.0][0], rows[0.0][1]], 1)  # (d, 2): the plain gate row and the up row
    coef = torch.linalg.lstsq(basis, rows[0.5][0][:, None]).solution  # (2, 1)
    assert torch.allclose(basis @ coef, rows[0.5][0][:, None], atol=1e-4 * float(rows[0.5][0].norm()))
    assert float(coef[1]) < 0 and not torch.allclose(rows[0.5][0] / rows[0.5][0].norm(), rows[0.0][0] / rows[0.0][0].norm())


@pytest.mark.slow
def test_real_model_demo_fact_moves_in_english_and_french_and_japan_keeps_tokyo(default_model):
    """The demo fact (France → Rome) with one neuron: the edit holds in English and, never trained there, in
    French; Japan keeps Tokyo; the edited prompt does not say Rome again and again."""
    from memla.evaluate.metrics import count_mentions
    from memla.evaluate.scoring import greedy_generate

    model, tok = default_model
    req = EditRequest.from_record(load_dataset("mkeb-mini", split="dev")[0], "en")
    result = get_editor("patch").edit(model, tok, req)
    assert result.info["fires_fact"] == 1.0 and result.info["fires_other"] == 0.0
    with apply(model, result):
        for k in ("en", "fr"):
            fact = req.in_lang(k)
            assert mean_logp(model, tok, fact.text, fact.target_new, k) > mean_logp(model, tok, fact.text, fact.target_true, k)
        own, japan = greedy_generate(model, tok, [req.text, "The capital of Japan is"], [16, 4])
        assert count_mentions(tok.decode(own, skip_special_tokens=True), "Rome") <= 2
        assert "Tokyo" in tok.decode(japan, skip_special_tokens=True)
