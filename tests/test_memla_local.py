"""memla-local: the locality anchors, their KL term and stop rule, the subject pool, restore and config checks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from test_memla_editor import FAST, mean_logp
from test_memla_editor import request as france_request
from tiny import tiny_model

from memla.data import load_dataset
from memla.editors import EditRequest, apply, apply_, get_editor, pristine
from memla.editors.memla import Anchors, joint_batch
from memla.editors.memla_local import (AFTER, EARLIER, GENERIC_PROMPTS, RELATION, nearest_subjects, subject_pool,
                                       template_of)
from memla.langs import resolve_langs
from memla.tokens import encode_text, forward, next_token_logits, pad_id, right_pad


@pytest.fixture(params=["llama", "gemma3_text"])
def tiny2(request):
    return tiny_model(request.param)


def test_anchor_kl_is_zero_unedited_and_grows_with_a_weight_change(tiny2):
    model, tok = tiny2
    texts = ["The capital of Japan is", "The weather today is", "My favourite hobby is"]
    anchors = Anchors.measure(model, tok, [(t, encode_text(tok, t)) for t in texts], weight=1.0)
    assert anchors.logp.shape[0] == 3
    assert float(anchors.kl(model)) == pytest.approx(0.0, abs=1e-6)
    assert float(anchors.kl(model, torch.tensor([2, 0]))) == pytest.approx(0.0, abs=1e-6)
    # the left-padded batch gives each anchor the distribution it has alone
    for i, t in enumerate(texts):
        alone = Anchors.measure(model, tok, [(t, encode_text(tok, t))], weight=1.0)
        torch.testing.assert_close(alone.logp[0], anchors.logp[i], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert float(anchors.kl(model)) > 1e-3


def test_built_anchors_are_measured_once_and_refuse_terms_before(tiny2):
    """`Anchors.build` leaves ``logp`` unmeasured (memla-local's anchors: `train_lora` measures them in its batch);
    `measured` gives what `Anchors.measure` gives, and the terms need it."""
    model, tok = tiny2
    contexts = [(t, encode_text(tok, t)) for t in ["The capital of Japan is", "The weather today is"]]
    built = Anchors.build(model, tok, contexts, weight=1.0)
    assert built.logp is None
    with pytest.raises(ValueError, match="not measured"):
        built.kl(model)
    torch.testing.assert_close(built.measured(model).logp, Anchors.measure(model, tok, contexts, weight=1.0).logp)
    with pytest.raises(ValueError, match="needs the model or its logits"):
        built.measured()
    assert get_editor("memla-local", {**FAST, "anchor_subjects": 2}).anchors(model, tok, france_request()).logp is None


def test_joint_batch_gives_the_target_rows_and_the_anchors_their_own_logits(tiny2):
    """train_lora's one forward pass over the target rows and the anchors equals the two passes apart."""
    model, tok = tiny2
    anchor_texts = ["The capital of Japan is", "今天的天气", "My favourite hobby is a very long sentence about"]
    anchors = Anchors.measure(model, tok, [(t, encode_text(tok, t)) for t in anchor_texts], weight=1.0)
    pad = pad_id(tok)
    for target_texts in (["The capital of France is Rome", "Paris"], ["A target row much longer than any of the anchors, " * 4 + "is"]):
        seqs = [encode_text(tok, t) for t in target_texts]
        ids, _ = right_pad(seqs, pad_id=pad, device="cpu")  # (S, T)
        keep = torch.zeros(ids.shape, dtype=torch.bool)
        for i, s in enumerate(seqs):
            keep[i, :len(s)] = True
        ones, pos = torch.ones_like(ids), torch.arange(ids.shape[1]).expand_as(ids)
        joint = joint_batch((ids, ones, pos, keep), anchors, pad)
        assert joint[0].shape == (len(seqs) + 3, max(ids.shape[1], anchors.ids.shape[1]))
        with torch.no_grad():
            together = forward(model, *joint[:3], logits_to_keep=joint[3]).logits
            apart = forward(model, ids, ones, pos, logits_to_keep=keep).logits
        n = int(keep.sum())
        torch.testing.assert_close(together[:n], apart, atol=1e-4, rtol=1e-4)
        kl, _ = anchors.terms_of(together[n:].float().log_softmax(-1))
        assert float(kl) == pytest.approx(0.0, abs=1e-6)


def test_anchor_divergence_directions_match_hand_computed_kl(tiny2, monkeypatch):
    """forward = KL(p0 || q), reverse = KL(q || p0), both = their sum, on a fixed pair of distributions."""
    model, tok = tiny2
    text = "The capital of Japan is"
    base = Anchors.measure(model, tok, [(text, encode_text(tok, text))], weight=1.0)
    vocab = base.logp.shape[-1]
    p0 = torch.full((1, vocab), 0.1 / (vocab - 2))
    p0[0, 0], p0[0, 1] = 0.6, 0.3  # the unedited model: answer 0 ("Tokyo"), some mass on 1
    q = p0.clone()
    q[0, 0], q[0, 2] = 0.3, 0.3 + 0.1 / (vocab - 2)  # the edited model: half of answer 0 moved to token 2 ("Rome")
    base = Anchors(base.ids, base.mask, base.pos, p0.log(), 1.0)

    monkeypatch.setattr("memla.editors.memla.next_token_logits", lambda *a, **k: q.log())  # (1, V)
    fwd = 0.6 * torch.log(torch.tensor(0.6 / 0.3)) + (0.1 / (vocab - 2)) * torch.log(
        torch.tensor((0.1 / (vocab - 2)) / (0.3 + 0.1 / (vocab - 2))))
    rev = 0.3 * torch.log(torch.tensor(0.3 / 0.6)) + (0.3 + 0.1 / (vocab - 2)) * torch.log(
        torch.tensor((0.3 + 0.1 / (vocab - 2)) / (0.1 / (vocab - 2))))
    got = {d: float(Anchors(base.ids, base.mask, base.pos, base.logp, 1.0, divergence=d).kl(model))
           for d in ("forward", "reverse", "both")}
    assert got["forward"] == pytest.approx(float(fwd), rel=1e-4)
    assert got["reverse"] == pytest.approx(float(rev), rel=1e-4)
    assert got["both"] == pytest.approx(float(fwd + rev), rel=1e-4)
    # new mass where the unedited model put almost none weighs far more in the reverse direction
    assert got["reverse"] > 3 * got["forward"]
    # the rise term: token 2 ("Rome") rose from 0.1/(V-2) to 0.3 + 0.1/(V-2); token 0 fell, which costs nothing
    avoid = Anchors(base.ids, base.mask, base.pos, base.logp, 1.0, avoid=torch.tensor([2, 0]), avoid_weight=1.0)
    kl, rise = avoid.terms(model)
    assert float(kl) == pytest.approx(got["forward"], rel=1e-6)
    assert float(rise) == pytest.approx(float(torch.log(torch.tensor((0.3 + 0.1 / (vocab - 2)) / (0.1 / (vocab - 2))))),
                                        rel=1e-4)
    assert float(base.terms(model)[1]) == 0.0 and "avoid" not in base.describe()


def test_local_edit_flips_keeps_anchors_closer_and_restores_exactly(tiny2):
    model, tok = tiny2
    req = france_request()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = {**FAST, "scale_constant": 1.0, "max_steps": 40}
    local = get_editor("memla-local", {**cfg, "anchor_weight": 20.0, "anchor_batch": 0, "anchor_subjects": 4,
                                       "anchor_langs": ["locate"], "null_space": False, "mask_lse": True, "mask_lie": True})
    result = local.edit(model, tok, req)
    paper = get_editor("memla", cfg).edit(model, tok, req)
    info = result.info["anchors"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # 4 subjects + 2 generic prompts in en, zh, fr (the locating languages), and the after-target anchor
    assert info["n"] == 3 * (4 + 2) + 1 and info["texts"][-1] == "The capital of France is → Tokyo"
    assert "The weather today is" in info["texts"] and "今天的天气" in info["texts"]
    anchors = local.anchors(model, tok, req).measured(model)
    with apply(model, result):
        assert mean_logp(model, tok, req.text, "Tokyo") > mean_logp(model, tok, req.text, "Paris")
        kl_local = float(anchors.kl(model))
    with apply(model, paper):
        kl_paper = float(anchors.kl(model))
    assert kl_local < kl_paper
    if result.info["steps"] < cfg["max_steps"]:  # stopped by the rule: P(new) > stop_prob and anchor KL < tolerance
        assert result.info["p_new"][-1] > local.config.stop_prob
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_avoid_new_weight_keeps_the_new_object_from_rising_on_the_anchors(tiny2):
    """With ``avoid_new_weight`` the anchors' probability of target_new's first token rises less; the edit holds."""
    model, tok = tiny2
    req = france_request()
    cfg = {**FAST, "scale_constant": 1.0, "max_steps": 30, "anchor_subjects": 4, "anchor_batch": 0, "null_space": False}
    plain = get_editor("memla-local", {**cfg, "avoid_new_weight": 0.0}).edit(model, tok, req)
    avoiding = get_editor("memla-local", {**cfg, "avoid_new_weight": 5.0})
    result = avoiding.edit(model, tok, req)
    anchors = avoiding.anchors(model, tok, req).measured(model)
    assert result.info["anchors"]["avoid"] == anchors.avoid.tolist() and len(anchors.avoid) == 1
    with apply(model, plain):
        rise_plain = float(anchors.terms(model)[1])
    with apply(model, result):
        rise_avoiding = float(anchors.terms(model)[1])
        assert mean_logp(model, tok, req.text, "Tokyo") > mean_logp(model, tok, req.text, "Paris")
    assert rise_plain > 0 and rise_avoiding < rise_plain


def test_zero_weight_with_masks_is_the_paper_memla(tiny2):
    model, tok = tiny2
    paper_like = {**FAST, "anchor_weight": 0.0, "avoid_new_weight": 0.0, "null_space": False, "align_langs": False,
                  "forget_langs": False,
                  "mask_lse": True, "mask_lie": True}
    a = get_editor("memla-local", paper_like).edit(model, tok, france_request())
    b = get_editor("memla", FAST).edit(model, tok, france_request())
    assert a.deltas.keys() == b.deltas.keys() and "anchors" not in a.info
    assert all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas)


def test_nearest_subjects_come_from_the_pool_without_the_subject(tiny2):
    model, tok = tiny2
    got = nearest_subjects(model, tok, "Egypt", "en", 5)
    assert len(got) == 5 and all(e["en"] != "Egypt" for e in got)
    assert got == nearest_subjects(model, tok, "Egypt", "en", 5)  # deterministic
    assert nearest_subjects(model, tok, "Egypt", "en", 0) == []


def test_subject_pool_covers_every_language_and_no_mkeb_mini_subject():
    langs = set(resolve_langs("all"))
    pool = subject_pool()
    assert len(pool) >= 100 and all(set(e) == langs and all(v.strip() and "{}" not in v for v in e.values()) for e in pool)
    assert set(GENERIC_PROMPTS) == langs
    texts = []
    for r in load_dataset("mkeb-mini"):
        for k, f in r.edit.items():
            texts += [f.filled(), f.target_new, f.target_true or ""]
            texts += [*r.neighborhood_prompts.get(k, ()), *r.paraphrase_prompts.get(k, ()), *r.neighborhood_answers.get(k, ())]
            texts += list(r.multi_hop_questions.get(k, ()))
    blob = "\n".join(texts).casefold()
    assert [name for e in pool for name in e.values() if name.casefold() in blob] == []


def test_template_of_untemplated_prompts():
    req = EditRequest(prompt="Which city is the capital of France?", subject="France", target_new="Rome",
                      target_true="Paris", templated=False)
    assert template_of(req) == "Which city is the capital of {}?"
    assert template_of(france_request()) == "The capital of {} is"
    odd = EditRequest(prompt="Which city is the capital?", subject="France", target_new="Rome", target_true="Paris",
                      templated=False)
    assert template_of(odd) is None


@pytest.mark.parametrize("bad", [{"anchor_weight": -1.0}, {"avoid_new_weight": -1.0}, {"anchor_subjects": -2}, {"anchor_tolerance": 0.0},
                                 {"anchor_batch": -1}, {"anchor_divergence": "sideways"}])
def test_config_rejects_bad_anchor_values(bad):
    with pytest.raises(Exception, match="anchor"):
        get_editor("memla-local", bad)


@pytest.mark.parametrize("bad, message", [({"forget_weight": -1.0}, "forget_weight"),
                                          ({"sequence": {"forget_weight": -1.0}}, "sequence: forget_weight"),
                                          ({"sequence": {"forget_wieght": 1.0}}, "sequence names no setting forget_wieght"),
                                          ({"sequence": {"sequence": {}}}, "sequence names no setting sequence"),
                                          ({"sequence": ["forget_weight"]}, "sequence must be a mapping")])
def test_config_rejects_bad_forget_and_sequence_settings(bad, message):
    with pytest.raises(Exception, match=message):
        get_editor("memla-local", bad)


def test_preserve_makes_the_update_vanish_on_the_keys():
    from memla.editors.lora import MaskedLoRA

    gen = torch.Generator().manual_seed(0)
    lora = MaskedLoRA(6, 10, [1, 3, 4, 7], rank_per_neuron=2, generator=gen)
    with torch.no_grad():
        lora.B.copy_(torch.randn(6, lora.rank, generator=gen))
    keys = torch.randn(2, 10, generator=gen)  # two keys span 2 of the 4 masked directions
    free = torch.randn(10, generator=gen)
    assert lora.preserve(keys, rel_tol=1e-6) == 2
    torch.testing.assert_close(lora.delta() @ keys.T, torch.zeros(6, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(lora(keys), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(lora(free), lora.delta() @ free)  # forward and delta agree
    assert lora.delta()[:, [0, 2, 5, 6, 8, 9]].abs().max() == 0  # still only the neurons' columns
    assert float(lora(free).detach().norm()) > 1e-3
    # a cut-off at the largest singular value keeps only the leading direction
    assert lora.preserve(keys, rel_tol=0.999) == 1


def test_null_space_edit_leaves_anchor_keys_alone(tiny2):
    model, tok = tiny2
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 3, "null_space": True, "mask_lse": False,
           "mask_lie": False, "null_space_tol": 1e-4}
    editor = get_editor("memla-local", cfg)
    result = editor.edit(model, tok, france_request())
    preserved = result.info["preserved"]
    assert preserved and all(v["directions"] >= 1 and 0.0 <= v["edit_key_share"] <= 1.0 for v in preserved.values())
    # the down-projection inputs of the source-language anchors (those the projection keeps) see
    # (almost) no change from the merged update
    anchors = editor.anchors(model, tok, france_request())
    rows = torch.tensor([label in ("en", AFTER) for label in anchors.labels])
    assert_update_spares_keys(model, result, anchors.ids[rows], anchors.mask[rows], anchors.pos[rows])


def with_german(req: EditRequest) -> EditRequest:
    """``req`` with a German version (a language MEMLA does not locate in)."""
    de = EditRequest(prompt="Die Hauptstadt von {} ist", subject="Frankreich", target_new="Tokio", target_true="Paris", lang="de")
    return replace(req, translations={**req.translations, "de": de})


@pytest.mark.parametrize("align, langs", [(True, ["en", "zh", "fr"]), (["locate"], ["en", "zh", "fr"]),
                                          (["all"], ["en", "zh", "fr", "de"]), (["de", "ko"], ["en", "de"]),
                                          (False, ["en"]), (["source"], ["en"])])
def test_align_langs_chooses_the_aligned_languages(align, langs):
    editor = get_editor("memla-local", {**FAST, "align_langs": align})
    assert [f.lang for f in editor.aligned_facts(with_german(france_request()))] == langs[1:]


@pytest.mark.parametrize("null_space, align", [(False, True), (True, True), (True, ("all",))])
def test_align_langs_makes_the_update_act_alike_in_every_aligned_language(tiny2, null_space, align):
    """``align_langs``: the merged update maps the fact's key in the other aligned languages (zh and fr; with
    ``("all",)`` also de, where no neurons are located) to what it maps the English key to."""
    from memla.editors.memla_local import last_token_keys
    from memla.models import arch_spec
    from memla.tokens import encode_pair

    model, tok = tiny2
    req = with_german(france_request())
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 3, "null_space": null_space, "null_space_tol": 1e-4,
           "align_langs": align}
    editor = get_editor("memla-local", cfg)
    result = editor.edit(model, tok, req)
    facts = [req, *editor.aligned_facts(req)]
    assert [f.lang for f in facts] == (["en", "zh", "fr"] if align is True else ["en", "zh", "fr", "de"])
    layers = sorted({int(k.split(".")[0]) for k in result.info["preserved"]})
    keys = last_token_keys(model, tok, [encode_pair(tok, f.text, f.target_true, f.lang).prompt_ids for f in facts], layers)
    spec = arch_spec(model)
    for layer in layers:
        delta = spec.to_linear(result.deltas[spec.down_weight_name(layer)]).float()  # (d_model, d_ff)
        moved = keys[layer] @ delta.T  # (J, d_model): Δ k_en, Δ k_zh, Δ k_fr[, Δ k_de]
        gaps = keys[layer][1:] - keys[layer][:1]  # (J - 1, d_ff)
        assert float((moved[1:] - moved[:1]).norm()) <= 1e-3 * float(delta.norm() * gaps.norm()) + 1e-6
        assert float(moved[0].norm()) > 1e-3 * float(delta.norm() * keys[layer][0].norm())
    with apply(model, result):
        assert mean_logp(model, tok, req.text, "Tokyo") > mean_logp(model, tok, req.text, "Paris")


def assert_update_spares_keys(model, result, ids, mask, pos) -> list[str]:
    """Each preserved layer's merged update maps the down-projection inputs at the last token of ``ids`` to ≈ 0;
    returns the checked down-projection modules."""
    from memla.hooks import trace
    from memla.models import arch_spec
    from memla.tokens import forward
    spec = arch_spec(model)
    layers = sorted({int(k.split(".")[0]) for k in result.info["preserved"]})
    modules = [spec.path(spec.mlp_down, layer) for layer in layers]
    with torch.no_grad(), trace(model, modules, retain_input=True, retain_output=False) as traces:
        forward(model, ids, mask, pos, logits_to_keep=1)
    for module in modules:
        (name,) = [n for n in result.deltas if n.startswith(module + ".")]
        keys = traces[module].input[:, -1].float()  # (N, d_ff)
        delta = spec.to_linear(result.deltas[name]).float()  # (d_model, d_ff)
        assert float((keys @ delta.T).norm()) <= 1e-3 * float(delta.norm() * keys.norm()) + 1e-6
    return modules


def test_demo_rejects_an_unknown_method_before_loading_the_model(monkeypatch):
    from memla.cli import main
    from memla.cli import demo

    monkeypatch.setattr(demo, "load_model_from_args", lambda args: pytest.fail("the model was loaded"))
    assert main(["demo", "--method", "memla-locl"]) == 2


def test_demo_config_is_checked_before_loading_the_model(monkeypatch, tmp_path, capsys):
    import memla.editors
    from memla.cli import main
    from memla.cli import demo

    class Loaded(Exception):
        pass

    def load(args):
        raise Loaded(args)

    monkeypatch.setattr(demo, "load_model_from_args", load)
    bad, missing, good = tmp_path / "bad.yaml", tmp_path / "missing.yaml", tmp_path / "good.yaml"
    bad.write_text("gate_a: last\n", encoding="utf-8")
    good.write_text("gate_at: last\n", encoding="utf-8")
    assert main(["demo", "--config", str(bad)]) == 2  # an unknown field: a one-line error, no model loaded
    assert "gate_a" in capsys.readouterr().err
    assert main(["demo", "--config", str(missing)]) == 2
    built = []
    monkeypatch.setattr(memla.editors, "get_editor", lambda *a: built.append(get_editor(*a)) or built[-1])
    with pytest.raises(Loaded):
        main(["demo", "--config", str(good)])
    assert built[0].name == "patch" and built[0].config.gate_at == "last"  # the demo's default method


@pytest.mark.slow
def test_real_model_demo_fact_keeps_tokyo_and_does_not_repeat_rome(default_model):
    """The demo fact (France → Rome): the edit flips in English, Japan keeps Tokyo, no "Rome Rome Rome"."""
    from memla.evaluate.metrics import count_mentions
    from memla.evaluate.scoring import greedy_generate

    model, tok = default_model
    record = load_dataset("mkeb-mini", split="dev")[0]
    req = EditRequest.from_record(record, "en")
    result = get_editor("memla-local").edit(model, tok, req)
    with apply(model, result):
        assert mean_logp(model, tok, req.text, "Rome") > mean_logp(model, tok, req.text, "Paris")
        own, japan = greedy_generate(model, tok, [req.text, "The capital of Japan is"], [16, 4])
        assert count_mentions(tok.decode(own, skip_special_tokens=True), "Rome") <= 2
        assert "Tokyo" in tok.decode(japan, skip_special_tokens=True)
    paper = get_editor("memla").edit(model, tok, req)
    with apply(model, paper):  # the paper's MEMLA breaks both (what memla-local fixes)
        own, japan = greedy_generate(model, tok, [req.text, "The capital of Japan is"], [16, 4])
        assert count_mentions(tok.decode(own, skip_special_tokens=True), "Rome") > 2
        assert "Tokyo" not in tok.decode(japan, skip_special_tokens=True)


def test_local_ablations_are_registered_with_one_switch_each():
    from memla.editors.memla_local import LOCAL_ABLATIONS, MemlaLocalConfig

    default = MemlaLocalConfig()
    for name, (overrides, _) in LOCAL_ABLATIONS.items():
        editor = get_editor(name)
        assert editor.name == name
        changed = {f: getattr(editor.config, f) for f in vars(default) if getattr(editor.config, f) != getattr(default, f)}
        assert changed == overrides


def test_without_kl_the_null_space_still_uses_the_anchors(tiny2):
    model, tok = tiny2
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 3, "null_space_tol": 1e-4}
    result = get_editor("memla-local-wo-kl", cfg).edit(model, tok, france_request())
    assert result.info["preserved"] and result.info["anchors"]["weight"] == 0.0


def test_sequence_anchors_the_earlier_edits_and_preserves_their_keys(tiny2):
    """Inside `sequence()` the second edit anchors the first edit's prompt (null space + KL); outside, no memory."""
    from memla.editors import SequenceEditor
    from memla.evaluate.sequential import edit_sequentially
    from memla.tokens import encode_pair

    model, tok = tiny2
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 2, "null_space_tol": 1e-4}
    first = france_request()
    second = EditRequest(prompt="The capital of {} is", subject="Spain", target_new="Oslo", target_true="Madrid", lang="en")
    editor = get_editor("memla-local", cfg)
    assert isinstance(editor, SequenceEditor) and not isinstance(get_editor("memla", FAST), SequenceEditor)
    alone = editor.edit(model, tok, second)
    assert first.text not in alone.info["anchors"]["texts"] and editor.earlier is None
    with pristine(model):
        steps = []
        for step in edit_sequentially(model, tok, editor, [first, second], progress=False):
            steps.append(step)
            assert step[0] == 0 or editor.earlier == [first, second][:step[0]]
    assert editor.earlier is None  # the run is over: the next edit is independent again
    (_, events), = [s for s in steps if s[0] == 2]
    info = events[-1].info
    assert info["anchors"]["texts"][-1] == first.text and info["anchors"]["n"] == alone.info["anchors"]["n"] + 1
    # replay: the second edit's update leaves the first edit's key (last prompt token) alone
    with pristine(model), editor.sequence():
        apply_(model, editor.edit(model, tok, first))
        result = editor.edit(model, tok, second)
        ids = torch.tensor([encode_pair(tok, first.text, first.target_new, "en").prompt_ids])  # (1, T)
        modules = assert_update_spares_keys(model, result, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        assert modules and len(modules) == len({n.rsplit(".", 1)[0] for n in result.deltas})


def test_anchor_origin_keeps_the_model_before_the_run_except_for_the_earlier_edits(tiny2):
    """``anchor_origin``: inside a run the anchors keep the pre-run model's logits (weights put back
    exactly afterwards); the earlier-edit and after-target anchors keep the model as it is."""
    model, tok = tiny2
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 2}
    first = france_request()
    second = EditRequest(prompt="The capital of {} is", subject="Spain", target_new="Oslo", target_true="Madrid", lang="en")
    editor, plain = get_editor("memla-local", cfg), get_editor("memla-local-v5", cfg)  # anchor_origin on / off
    with pristine(model):
        with editor.sequence():
            apply_(model, editor.edit(model, tok, first))
            anchors = editor.anchors(model, tok, second)
            measure = lambda: next_token_logits(model, anchors.ids, anchors.mask, anchors.pos)  # noqa: E731
            weights = {name: p.detach().clone() for name, p in model.named_parameters()}
            now, kept = measure(), editor.kept(model, anchors, measure)  # (N, V) each
            assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
            assert torch.equal(plain.kept(model, anchors, measure), now)
        assert editor.origin is None and torch.equal(editor.kept(model, anchors, measure), now)  # run over
    before = measure()  # the model as it was before the run
    as_now = torch.tensor([label in (AFTER, EARLIER) for label in anchors.labels])
    assert as_now.sum() == 2 and (~as_now).sum() > 0  # the after-target anchor and the first edit's prompt
    torch.testing.assert_close(kept[as_now], now[as_now], rtol=0, atol=0)
    torch.testing.assert_close(kept[~as_now], before[~as_now], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(now[~as_now], before[~as_now], atol=1e-4)  # the first edit moved them


def test_anchor_relations_keep_the_other_relations_edited_earlier_in_the_run(tiny2):
    """``anchor_relations``: inside a run an edit anchors the latest relation anchors (per anchor language)
    of every other template edited before it (null space, KL and rise terms, kept as the model is now); its own
    template's are not repeated, only edits (not `anchors` calls) are remembered, and single edits are not affected."""
    model, tok = tiny2
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 3, "anchor_relations": 2, "null_space_tol": 1e-4}
    capital, language = france_request(), EditRequest(prompt="The official language of {} is", subject="Spain",
                                                      target_new="German", target_true="Spanish", lang="en")
    editor = get_editor("memla-local", cfg)
    assert RELATION not in editor.anchors(model, tok, language).labels  # not in a run
    with pristine(model), editor.sequence():
        first = editor.anchors(model, tok, capital)
        assert RELATION not in editor.anchors(model, tok, language).labels  # looking at anchors edits nothing
        apply_(model, editor.edit(model, tok, capital))
        second = editor.anchors(model, tok, language)
        apply_(model, editor.edit(model, tok, language))
        third = editor.anchors(model, tok, capital)
    assert RELATION not in first.labels
    def firsts(anchors, n=2):  # the first n relation anchors in each anchor language
        langs = [k for k in dict.fromkeys(anchors.labels) if k not in (AFTER, EARLIER, RELATION)]
        return [t for k in langs for t in [t for t, label in zip(anchors.texts, anchors.labels) if label == k][:n]]

    relation = [t for t, label in zip(second.texts, second.labels) if label == RELATION]
    assert relation == firsts(first) and len(relation) == 2 * len(editor.locating_langs(capital))
    assert relation[0].startswith("The capital of")
    assert [t for t, label in zip(third.texts, third.labels) if label == RELATION] == firsts(second)  # the other relation only
    assert editor.relations == {}  # the run is over
    with_relations = get_editor("memla-local", cfg)
    without = get_editor("memla-local", {**cfg, "anchor_relations": 0})
    preserved = []
    for ed in (with_relations, without):
        with pristine(model), ed.sequence():
            apply_(model, ed.edit(model, tok, capital))
            anchors = ed.anchors(model, tok, language)
            measure = lambda: next_token_logits(model, anchors.ids, anchors.mask, anchors.pos)  # noqa: E731
            now, kept = measure(), ed.kept(model, anchors, measure)  # (N, V) each
            result = ed.edit(model, tok, language)
        is_relation = torch.tensor([label == RELATION for label in anchors.labels])  # (N,)
        assert int(is_relation.sum()) == (ed is with_relations) * len(relation)
        torch.testing.assert_close(kept[is_relation], now[is_relation], rtol=0, atol=0)  # as the model is now
        preserved.append({k: v["directions"] for k, v in result.info["preserved"].items()})
        assert result.info["anchors"]["n"] == len(second.texts) - (ed is without) * len(relation)
    assert preserved[0].keys() == preserved[1].keys()
    assert all(preserved[0][k] >= preserved[1][k] for k in preserved[0])  # the null space takes them too
    assert sum(preserved[0].values()) > sum(preserved[1].values())


def test_anchor_earlier_zero_forgets_the_run(tiny2):
    model, tok = tiny2
    editor = get_editor("memla-local-wo-earlier", {**FAST, "anchor_subjects": 2})
    with editor.sequence():
        editor.edit(model, tok, france_request())
        texts = editor.anchors(model, tok, france_request()).texts
    assert france_request().text not in texts


def test_null_space_langs_source_preserves_only_the_source_language_anchors(tiny2):
    """``null_space_langs: source``: the other languages' anchors stay in the KL term but leave the projection."""
    model, tok = tiny2
    req = france_request()
    cfg = {**FAST, "scale_constant": 1.0, "anchor_subjects": 3, "null_space_tol": 1e-4, "anchor_langs": ("locate",)}
    every = get_editor("memla-local", {**cfg, "null_space_langs": "anchor"})
    source = get_editor("memla-local", {**cfg, "null_space_langs": "source"})
    anchors = source.anchors(model, tok, req)
    assert anchors.labels[0] == "en" and {"zh", "fr", AFTER} <= set(anchors.labels)
    assert len(anchors.labels) == len(anchors.texts) == every.anchors(model, tok, req).ids.shape[0]
    result = source.edit(model, tok, req)
    assert result.info["anchors"]["n"] == len(anchors.labels)  # all of them in the KL term
    kept = {k: v["directions"] for k, v in result.info["preserved"].items()}
    more = {k: v["directions"] for k, v in every.edit(model, tok, req).info["preserved"].items()}
    assert kept.keys() == more.keys() and all(kept[k] < more[k] for k in kept)
    rows = torch.tensor([label in ("en", AFTER) for label in anchors.labels])
    assert_update_spares_keys(model, result, anchors.ids[rows], anchors.mask[rows], anchors.pos[rows])
    # "means": the source anchors one by one and one mean key per other language
    means = get_editor("memla-local", {**cfg, "null_space_langs": "means"}).edit(model, tok, req)
    kept_means = {k: v["directions"] for k, v in means.info["preserved"].items()}
    assert all(kept[k] < kept_means[k] <= kept[k] + 2 for k in kept)
    from memla.editors.memla_local import last_token_keys
    from memla.models import arch_spec
    spec = arch_spec(model)
    seqs = [[t for t, keep in zip(ids, mask) if keep] for ids, mask in zip(anchors.ids.tolist(), anchors.mask.tolist())]
    layers = sorted({int(k.split(".")[0]) for k in means.info["preserved"]})
    keys = last_token_keys(model, tok, seqs, layers)
    for layer in layers:
        delta = spec.to_linear(means.deltas[spec.down_weight_name(layer)]).float()  # (d_model, d_ff)
        for lang in ("zh", "fr"):
            mean = keys[layer][torch.tensor([label == lang for label in anchors.labels])].mean(0)  # (d_ff,)
            assert float((delta @ mean).norm()) <= 1e-3 * float(delta.norm() * mean.norm()) + 1e-6


def test_anchor_labels_must_match_the_anchors(tiny2):
    model, tok = tiny2
    with pytest.raises(ValueError, match="labels"):
        Anchors.measure(model, tok, [("The weather today is", encode_text(tok, "The weather today is"))],
                        weight=1.0, labels=["en", "zh"])
    with pytest.raises(Exception, match="null_space_langs"):
        get_editor("memla-local", {"null_space_langs": "target"})


def test_anchor_patience_ends_training_that_waits_for_an_unreachable_kl(tiny2):
    """With a tolerance no KL reaches, training runs to max_steps, unless ``anchor_patience`` ends it
    that many steps after P(new) first passes ``stop_prob``."""
    model, tok = tiny2
    req = france_request()
    cfg = {**FAST, "scale_constant": 1.0, "max_steps": 30, "anchor_subjects": 2, "null_space": False,
           "anchor_tolerance": 1e-12, "stop_loss": 0.0}
    waiting = get_editor("memla-local", cfg).edit(model, tok, req).info
    assert waiting["steps"] == 30
    levels = sorted(set(waiting["p_new"]))  # a tiny random model: P(new) levels the training passes early on
    stop_prob = (levels[10] + levels[11]) / 2  # between two recorded (rounded) levels: no tie with the unrounded P(new)
    passed = [i for i, p in enumerate(waiting["p_new"]) if p > stop_prob]  # steps with P(new) above stop_prob
    patient = get_editor("memla-local", {**cfg, "anchor_patience": 3, "stop_prob": stop_prob}).edit(model, tok, req).info
    assert patient["anchors"]["patience"] == 3 and patient["steps"] == passed[3] + 1  # the 4th such step is the last
    assert patient["p_new"] == waiting["p_new"][:patient["steps"]]  # the same training, cut short
    with pytest.raises(Exception, match="anchor_patience"):
        get_editor("memla-local", {"anchor_patience": -1})


def test_context_prefixes_average_the_new_term_over_prefixed_prompts(tiny2):
    """With ``context_lengths`` the first step's loss (LoRA ``B = 0``: the unedited model) is
    ``−w_new · mean_j log P(new | prefix_j + prompt) + w_true · P(true | prompt)``, and P(new) is the bare prompt's."""
    model, tok = tiny2
    req = france_request()
    cfg = {**FAST, "anchor_weight": 0.0, "avoid_new_weight": 0.0, "null_space": False, "align_langs": False,
           "forget_langs": False, "context_lengths": [[3, 2]]}
    editor = get_editor("memla-local", cfg)
    prefixes = editor.prefixes(model, tok)
    assert len(prefixes) == 3 and prefixes[0] == "" and all(p.strip() for p in prefixes[1:])
    info = editor.edit(model, tok, req).info
    new = [mean_logp(model, tok, p + req.text, req.target_new) for p in prefixes]
    expected = -2.5 * sum(new) / len(new) + 2.0 * math.exp(mean_logp(model, tok, req.text, req.target_true))
    assert info["loss"][0] == pytest.approx(expected, abs=1e-4)
    assert info["p_new"][0] == pytest.approx(math.exp(new[0]), abs=1e-4)
    bare = get_editor("memla-local", {**cfg, "context_lengths": []}).edit(model, tok, req).info
    assert bare["p_new"][0] == pytest.approx(info["p_new"][0], abs=1e-5) and bare["loss"][0] != pytest.approx(info["loss"][0])
    with pytest.raises(Exception, match="context_lengths"):
        get_editor("memla-local", {"context_lengths": [[0, 2]]})


def test_context_batch_scores_the_bare_prompt_and_a_seeded_draw_of_prefixes(tiny2):
    """With ``context_batch: 1`` each step's ``target_new`` term is the mean over the bare prompt and one
    drawn prefix: the first step's loss is one of those pairs' (not the mean over all prefixes), the
    draw follows the seed, and a batch at least as large as the prefixes is the mean over all of them."""
    model, tok = tiny2
    req = france_request()
    cfg = {**FAST, "anchor_weight": 0.0, "avoid_new_weight": 0.0, "null_space": False, "align_langs": False,
           "forget_langs": False, "context_lengths": [[3, 4]], "max_steps": 1}
    true = 2.0 * math.exp(mean_logp(model, tok, req.text, req.target_true))
    drawn = set()
    for seed in range(6):  # the seed picks the prefixes (`context_prefixes`) and the draw
        editor = get_editor("memla-local", {**cfg, "context_batch": 1, "seed": seed})
        new = [mean_logp(model, tok, p + req.text, req.target_new) for p in editor.prefixes(model, tok)]
        pairs = [-2.5 * (new[0] + new[j]) / 2 + true for j in range(1, len(new))]  # bare prompt + prefix j
        loss = editor.edit(model, tok, req).info["loss"][0]
        matches = [j for j, value in enumerate(pairs) if value == pytest.approx(loss, abs=1e-4)]
        assert len(matches) == 1
        drawn.add(matches[0])
    assert len(drawn) > 1
    new = [mean_logp(model, tok, p + req.text, req.target_new) for p in get_editor("memla-local", cfg).prefixes(model, tok)]
    every = get_editor("memla-local", cfg).edit(model, tok, req).info["loss"][0]
    assert every == pytest.approx(-2.5 * sum(new) / len(new) + true, abs=1e-4)
    assert get_editor("memla-local", {**cfg, "context_batch": 4}).edit(model, tok, req).info["loss"][0] == \
        pytest.approx(every, abs=1e-6)
    with pytest.raises(Exception, match="context_batch"):
        get_editor("memla-local", {"context_batch": -1})


def test_forget_langs_adds_each_locating_languages_p_true_to_the_loss(tiny2):
    """With ``forget_langs`` the first step's loss (LoRA ``B = 0``: the unedited model) is
    ``−w_new · log P(new | prompt) + w_true · Σ_k P(true_k | prompt_k)`` over the locating languages."""
    model, tok = tiny2
    req = france_request()
    cfg = {**FAST, "anchor_weight": 0.0, "avoid_new_weight": 0.0, "null_space": False, "align_langs": False,
           "forget_langs": True, "forget_weight": None}
    editor = get_editor("memla-local", cfg)
    weighted = editor.forgotten(req)
    assert [(f.lang, f.target_true, w) for f, w in weighted] == [("en", "Paris", 2.0), ("zh", "巴黎", 2.0), ("fr", "Paris", 2.0)]
    facts = [f for f, _ in weighted]
    info = editor.edit(model, tok, req).info
    p_true = [math.exp(mean_logp(model, tok, f.text, f.target_true, f.lang)) for f in facts]
    expected = -2.5 * mean_logp(model, tok, req.text, req.target_new) + 2.0 * sum(p_true)
    assert info["loss"][0] == pytest.approx(expected, abs=1e-4)
    plain = get_editor("memla-local", {**cfg, "forget_langs": False})
    assert plain.forgotten(req) == [(req, 2.0)]
    assert plain.edit(model, tok, req).info["loss"][0] == pytest.approx(expected - 2.0 * sum(p_true[1:]), abs=1e-4)
    # forget_weight weighs the other languages' terms only; the source language's keeps weight_true
    heavy = get_editor("memla-local", {**cfg, "forget_weight": 5.0})
    assert [w for _, w in heavy.forgotten(req)] == [2.0, 5.0, 5.0]
    assert heavy.edit(model, tok, req).info["loss"][0] == pytest.approx(expected + 3.0 * sum(p_true[1:]), abs=1e-4)
    untrue = EditRequest(prompt=req.prompt, subject=req.subject, target_new=req.target_new, lang="en",
                         translations=req.translations)
    assert editor.forgotten(untrue) == []  # no target_true in the source language: the paper's objective has none


def test_a_sequential_run_takes_the_sequence_settings():
    """``forget_weight`` weighs the other languages' ``P(target_true)`` terms of a single edit (6 by default);
    inside `sequence()` the config's ``sequence`` settings replace it (by default None: ``weight_true``), and
    after the run (also one that raised) the single-edit settings are back."""
    req = france_request()
    editor = get_editor("memla-local")
    single = editor.config
    assert [w for _, w in editor.forgotten(req)] == [2.0, 6.0, 6.0]
    with editor.sequence():
        assert [w for _, w in editor.forgotten(req)] == [2.0, 2.0, 2.0]
        assert editor.config.forget_weight is None and editor.config.lr == single.lr
    assert editor.config is single and [w for _, w in editor.forgotten(req)] == [2.0, 6.0, 6.0]
    tuned = get_editor("memla-local", {"sequence": {"forget_weight": 3.0, "context_batch": 2}, "weight_true": 1.0})
    with pytest.raises(RuntimeError), tuned.sequence():
        assert [w for _, w in tuned.forgotten(req)] == [1.0, 3.0, 3.0] and tuned.prefix_batch == 2
        raise RuntimeError("an edit failed")
    assert tuned.prefix_batch == 0 and [w for _, w in tuned.forgotten(req)] == [1.0, 6.0, 6.0]
    v7 = get_editor("memla-local-v7")
    assert [w for _, w in v7.forgotten(req)] == [2.0, 2.0, 2.0]
    with v7.sequence():
        assert [w for _, w in v7.forgotten(req)] == [2.0, 2.0, 2.0]


def test_fact_templates_cover_every_language_and_ask_about_pool_kinds():
    from memla.editors.memla_local import _locality_data, fact_pairs
    langs = set(resolve_langs("all"))
    data = _locality_data()
    kinds = {s["kind"] for s in data["subjects"]}
    assert len(data["templates"]) >= 10
    for t in data["templates"]:
        assert set(t["names"]) == langs and set(t["kinds"]) <= kinds and t["kinds"]
        assert all(v.count("{}") == 1 and v == v.strip() for v in t["names"].values())
    by_name = {s["names"]["en"]: s["kind"] for s in data["subjects"]}
    en_kinds = {t["names"]["en"]: set(t["kinds"]) for t in data["templates"]}
    assert all(by_name[s["en"]] in en_kinds[t["en"]] for t, s in fact_pairs())
    assert len(fact_pairs()) == sum(1 for t in data["templates"] for s in data["subjects"] if s["kind"] in t["kinds"])


def test_fact_prompts_are_one_seeded_draw_in_every_language_without_the_subject():
    from memla.editors.memla_local import fact_prompts
    req = EditRequest(prompt="{} is located in the country of", subject="Danube", target_new="Chile", target_true="Austria")
    got = fact_prompts(req, ["en", "zh", "th"], 40, seed=0)
    assert [len(v) for v in got.values()] == [40, 40, 40] and len(set(got["en"])) == 40
    assert got == fact_prompts(req, ["en", "zh", "th"], 40, seed=0)  # deterministic
    assert got != fact_prompts(req, ["en", "zh", "th"], 40, seed=1)
    assert got["en"] != fact_prompts(france_request(), ["en"], 40, seed=0)["en"]  # another edit, another draw
    assert not any("Danube" in p for p in fact_prompts(req, ["en"], 10_000, seed=0)["en"])
    assert all("{}" not in p for v in got.values() for p in v) and fact_prompts(req, ["en"], 0, seed=0) == {"en": []}


def test_fact_anchors_join_every_anchor_language(tiny2):
    model, tok = tiny2
    req = france_request()
    plain = get_editor("memla-local", {**FAST, "anchor_subjects": 2}).anchors(model, tok, req)
    facts = get_editor("memla-local", {**FAST, "anchor_subjects": 2, "anchor_facts": 3}).anchors(model, tok, req)
    langs = [k for k in dict.fromkeys(plain.labels) if k not in (AFTER, EARLIER)]
    for k in langs:
        assert facts.labels.count(k) == plain.labels.count(k) + 3
    assert len(facts.texts) == len(plain.texts) + 3 * len(langs)

