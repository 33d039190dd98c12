"""Metric functions on hand-computed examples: token F1 (incl. zh/ja/th), NS-margin, NS-keep, fluency,
per-record values, the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiny import tiny_tokenizer

from memla.evaluate.metrics import (bag_f1, count_mentions, keep_share, ngram_entropy, record_value, skipped_summary,
                                     summarize, text_units, token_f1)


def test_bag_f1_hand_computed():
    assert bag_f1(["the", "city", "of", "paris"], ["paris", "city"]) == pytest.approx(2 / 3)  # P 1/2, R 1
    assert bag_f1(["paris", "paris"], ["paris"]) == pytest.approx(2 / 3)  # a bag: one overlap only
    assert bag_f1([], []) == 1.0
    assert bag_f1(["a"], []) == 0.0 and bag_f1([], ["a"]) == 0.0
    assert bag_f1(["x"], ["y"]) == 0.0


def test_word_and_char_f1_hand_computed():
    assert token_f1("the city of Paris", "Paris city", unit="words") == pytest.approx(2 / 3)
    assert token_f1("  PARIS ", "paris", unit="words") == 1.0  # case-folded, stripped
    assert token_f1("东京都", "东京", unit="chars") == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("パリ市", "パリ", unit="chars") == pytest.approx(0.8)
    # Thai: 7 of the answer's 13 characters (ร twice in the answer, once in the prediction)
    assert token_f1("กรุงเทพ", "กรุงเทพมหานคร", unit="chars") == pytest.approx(0.7)
    assert token_f1("ＴＯＫＹＯ", "tokyo", unit="chars") == 1.0  # NFKC folds full-width letters


def test_token_f1_uses_the_model_tokenizer():
    tok = tiny_tokenizer()
    for text in ("巴黎", "東京", "ปารีส", "Paris"):
        assert token_f1(text, text, tokenizer=tok) == 1.0
    pred, gold = text_units("巴黎巴黎", tokenizer=tok), text_units("巴黎", tokenizer=tok)
    expected = bag_f1(pred, gold)
    assert token_f1("巴黎巴黎", "巴黎", tokenizer=tok) == pytest.approx(expected)
    assert 0 < expected < 1
    assert token_f1("Tokyo", "巴黎", tokenizer=tok) == 0.0
    with pytest.raises(ValueError, match="tokenizer"):
        token_f1("a", "a")
    with pytest.raises(ValueError, match="unknown F1 unit"):
        token_f1("a", "a", unit="bytes")


def _line(method, record, ls, lt, *, es=None, ps=(), ns=(), status="ok"):
    return {
        "method": method, "record": record, "ls": ls, "lt": lt, "status": status,
        "es": [] if es is None else [{"success": es}],
        "ps": [{"success": s} for s in ps],
        "ns": [{"f1": f} for f in ns],
        "qs": [],
    }


def test_record_value_is_the_mean_over_prompts():
    line = _line("m", 0, "en", "en", es=True, ps=(True, False, False, True), ns=(0.5, 1.0))
    assert record_value(line, "es") == 1.0
    assert record_value(line, "ps") == 0.5
    assert record_value(line, "ns") == 0.75
    assert record_value(line, "qs") is None


def test_summary_cells_average_and_closed_form_se():
    es_en = [True, False, True, True]  # en-en: 0.75, sd 0.5, se 0.25
    es_zh = [False, False, True, False]  # en-zh: 0.25
    es_fr = [True, True, True, False]  # en-fr: 0.75
    lines = []
    for rid in range(4):
        lines.append(_line("m", rid, "en", "en", es=es_en[rid]))
        lines.append(_line("m", rid, "en", "zh", es=es_zh[rid]))
        lines.append(_line("m", rid, "en", "fr", es=es_fr[rid]))
    lines.append(_line("m", 9, "en", "zh", status="skipped"))
    stats = {(s.lt, s.metric): s for s in summarize(lines, targets=["en", "zh", "fr"])}
    assert stats[("en", "es")].value == 0.75 and stats[("en", "es")].se == pytest.approx(0.25)
    assert stats[("zh", "es")].value == 0.25 and stats[("zh", "es")].n == 4
    avg = stats[("avg", "es")]
    assert avg.value == pytest.approx(0.5)  # mean of en-zh and en-fr; en-en excluded
    per_record = np.array([(a + b) / 2 for a, b in zip(es_zh, es_fr)], dtype=float)  # [.5, .5, 1, 0]
    assert avg.se == pytest.approx(per_record.std(ddof=1) / 2)
    assert ("avg", "ns") not in stats  # no NS data at all


def test_bootstrap_se_for_f1_is_seeded_and_close_to_closed_form():
    rng = np.random.default_rng(1)
    f1 = rng.uniform(0, 1, size=200)
    lines = [_line("m", i, "en", "zh", ns=(float(f),)) for i, f in enumerate(f1)]
    lines += [_line("m", i, "en", "en", ns=(1.0,)) for i in range(200)]
    first = {(s.lt, s.metric): s for s in summarize(lines)}
    second = {(s.lt, s.metric): s for s in summarize(lines)}
    cell = first[("zh", "ns")]
    assert cell.value == pytest.approx(f1.mean())
    assert cell.se == second[("zh", "ns")].se  # seeded
    closed = f1.std(ddof=1) / math.sqrt(len(f1))
    assert 0.8 * closed < cell.se < 1.2 * closed
    assert first[("avg", "ns")].value == pytest.approx(f1.mean())  # only zh is cross-lingual
    assert first[("en", "ns")].se == pytest.approx(0.0)


def test_missing_cells_and_single_record():
    lines = [_line("m", 0, "zh", "zh", es=True), _line("m", 0, "zh", "en", es=False)]
    stats = {(s.lt, s.metric): s for s in summarize(lines)}
    assert stats[("en", "es")].se is None and stats[("en", "es")].n == 1
    assert stats[("avg", "es")].value == 0.0


def test_skipped_summary_counts_reasons():
    lines = [
        _line("a", 0, "en", "en", status="skipped") | {"reason": "needs subject"},
        _line("a", 1, "en", "en", status="skipped") | {"reason": "needs subject"},
        _line("a", 1, "en", "fr", status="missing") | {"reason": "no fr"},
        _line("b", 0, "en", "en", es=True),
    ]
    out = skipped_summary(lines)
    assert out == {"a": {"skipped": 2, "missing": 1, "reasons": {"needs subject": 2, "no fr": 1}}}


# --------------------------------------------------------------------------- locality metrics


def test_keep_share_is_the_common_prefix_over_the_longer_continuation():
    assert keep_share([1, 2, 3], [1, 2, 3]) == 1.0
    assert keep_share([1, 2, 3], [1, 2, 4]) == pytest.approx(2 / 3)
    assert keep_share([1, 9, 3], [1, 2, 3]) == pytest.approx(1 / 3)  # the token after a change does not count
    assert keep_share([1, 2], [1, 2, 3, 4]) == 0.5  # stopping early is a change too
    assert keep_share([5], [6]) == 0.0
    assert keep_share([], []) == 1.0


def test_ngram_entropy_hand_computed():
    assert ngram_entropy([7, 7, 7, 7, 7, 7]) == 0.0  # "Rome Rome Rome ..."
    assert ngram_entropy([1, 2]) == 0.0  # one bigram, no trigram
    assert ngram_entropy([]) == 0.0
    # 3 distinct bigrams (log2 3 bits), 2 distinct trigrams (1 bit); weights 1/3, 2/3
    assert ngram_entropy([1, 2, 3, 4]) == pytest.approx(math.log2(3) / 3 + 2 / 3)
    # bigrams (1,2)x2 (2,1)x2 -> 1 bit; trigrams (1,2,1)x2 (2,1,2)x1 -> H(2/3, 1/3)
    h3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy([1, 2, 1, 2, 1]) == pytest.approx(1 / 3 + 2 / 3 * h3)
    assert ngram_entropy([1, 2, 3, 4], orders=(1,), weights=(1.0,)) == pytest.approx(2.0)


def test_count_mentions_is_case_and_width_insensitive():
    assert count_mentions("Rome Rome. ROME is the", "Rome") == 3
    assert count_mentions("Ｒｏｍｅ and rome", "rome") == 2
    assert count_mentions("Tokyo, and the capital of", "Rome") == 0
    assert count_mentions("anything", "") == 0


def _ns(prompt, *, kept=None, continuation=None, f1=0.0):
    item = {"prompt": prompt, "f1": f1, "margin": None if kept is None else {"answer": -1.0, "new": -2.0, "kept": kept}}
    if continuation is not None:
        item["continuation"] = continuation
    return item


def test_ns_margin_counts_only_prompts_with_a_comparison():
    line = {"ns": [_ns("a", kept=True), _ns("b", kept=False), _ns("c", kept=True), _ns("d")]}
    assert record_value(line, "ns_margin") == pytest.approx(2 / 3)  # "d": its answer is target_new itself
    assert record_value({"ns": [_ns("d")]}, "ns_margin") is None
    assert record_value({"ns": [{"prompt": "a", "f1": 1.0}]}, "ns_margin") is None  # a line from before the metric
    assert record_value({"ns": []}, "ns_margin") is None


def test_ns_keep_compares_with_the_unedited_continuations():
    edited = {"ns": [_ns("a", continuation=[1, 2, 3, 4]), _ns("b", continuation=[5, 6])]}
    unedited = {"ns": [_ns("a", continuation=[1, 2, 9, 9]), _ns("b", continuation=[5, 6])]}
    assert record_value(edited, "ns_keep", unedited) == pytest.approx((2 / 4 + 1.0) / 2)
    assert record_value(unedited, "ns_keep", unedited) == 1.0
    assert record_value(edited, "ns_keep") is None  # no reference
    other = {"ns": [_ns("x", continuation=[1, 2, 3, 4]), _ns("b", continuation=[5, 6])]}
    assert record_value(edited, "ns_keep", other) is None  # not the same prompts
    assert record_value({"ns": [{"prompt": "a", "f1": 1.0}]}, "ns_keep", unedited) is None  # predates the metric


def test_fluency_and_repeats_are_means_over_continuations():
    line = {"fluency": [{"entropy": 0.0, "repeats": 6}, {"entropy": 2.0, "repeats": 1}]}
    assert record_value(line, "fluency") == 1.0
    assert record_value(line, "repeats") == 3.5
    assert record_value({"fluency": []}, "fluency") is None
    assert record_value({"es": []}, "repeats") is None


def test_summary_of_locality_metrics_uses_the_unedited_line_of_the_same_cell():
    def line(method, rid, lt, cont, kept, entropy):
        return {"method": method, "record": rid, "ls": "en", "lt": lt, "status": "ok", "es": [], "ps": [], "qs": [],
                "ns": [_ns("p", kept=kept, continuation=cont)], "fluency": [{"entropy": entropy, "repeats": 0}]}

    lines = [line("unedited", 0, "en", [1, 2, 3, 4], True, 3.0), line("unedited", 1, "en", [5, 6, 7, 8], True, 2.0),
             line("m", 0, "en", [1, 2, 0, 0], False, 1.0), line("m", 1, "en", [5, 6, 7, 8], True, 0.0),
             # record 1 in zh has no unedited line: no NS-keep there, the other metrics still count
             line("m", 1, "zh", [1], True, 4.0)]
    stats = {(s.method, s.lt, s.metric): s for s in summarize(lines, n_boot=20)}
    assert stats[("unedited", "en", "ns_keep")].value == 1.0
    keep = stats[("m", "en", "ns_keep")]
    assert keep.value == pytest.approx(0.75) and keep.n == 2
    assert keep.se == pytest.approx(np.std([0.5, 1.0], ddof=1) / math.sqrt(2))  # closed form
    assert stats[("m", "en", "ns_margin")].value == 0.5
    assert stats[("m", "en", "fluency")].value == 0.5
    assert ("m", "zh", "ns_keep") not in stats and stats[("m", "zh", "fluency")].value == 4.0
