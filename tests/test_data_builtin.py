"""Tests of the built-in dataset ``mkeb-mini`` (issue 3, item 3): valid, 12 languages everywhere, two splits."""

from collections import Counter

import pytest

from memla.data import MAX_TEXT_CHARS, builtin_datasets, load_dataset, read_raw, validate
from memla.langs import LANGS


@pytest.fixture(scope="module")
def mini():
    raw, label = read_raw("mkeb-mini")
    return raw, label, load_dataset("mkeb-mini")


def test_mkeb_mini_is_shipped():
    assert "mkeb-mini" in builtin_datasets()


def test_mkeb_mini_passes_validation(mini):
    raw, label, _ = mini
    report = validate(raw, source=label)
    assert report.errors == [], "\n".join(map(str, report.errors[:20]))


def test_mkeb_mini_size_and_relations(mini):
    _, _, records = mini
    assert len(records) >= 150
    assert len({r.relation for r in records}) >= 15
    assert len({r.example_id for r in records}) == len(records)


def test_mkeb_mini_every_record_has_all_12_languages_in_every_field(mini):
    _, _, records = mini
    for r in records:
        assert r.langs == LANGS, r.example_id
        assert r.templated is True, r.example_id
        for lang in LANGS:
            fact = r.edit[lang]
            assert fact.prompt.count("{}") == 1 and fact.subject and fact.target_true, (r.example_id, lang)
            assert fact.target_new != fact.target_true, (r.example_id, lang)
            assert len(r.paraphrase_prompts[lang]) == 2, (r.example_id, lang)
            assert len(r.neighborhood_prompts[lang]) == 2 == len(r.neighborhood_answers[lang]), (r.example_id, lang)
            assert len(r.multi_hop_questions[lang]) == 1 and r.multi_hop_new_answer[lang], (r.example_id, lang)


def test_mkeb_mini_has_fixed_dev_and_test_splits(mini):
    _, _, records = mini
    splits = Counter(r.split for r in records)
    assert set(splits) == {"dev", "test"}
    assert splits["dev"] > 0 and splits["test"] > 0
    assert len(load_dataset("mkeb-mini", split="test")) == splits["test"]


def test_mkeb_mini_texts_are_far_below_the_length_limit(mini):
    _, _, records = mini
    texts = []
    for r in records:
        for fact in r.edit.values():
            texts += [fact.prompt, fact.subject, fact.target_new, fact.target_true]
        for field in (r.paraphrase_prompts, r.neighborhood_prompts, r.neighborhood_answers, r.multi_hop_questions):
            texts += [t for items in field.values() for t in items]
        texts += list(r.multi_hop_new_answer.values())
    longest = max(len(t) for t in texts)
    assert longest == 132  # a French multi-hop question (record 331)
    assert longest * 10 < MAX_TEXT_CHARS
