"""`stratified_sample`: even coverage of relations, seeded, original order."""

from __future__ import annotations

from collections import Counter

import pytest

from memla.data import DataError, load_dataset, stratified_sample
from memla.data.sample import relation_key


@pytest.fixture(scope="module")
def mkeb_test_split():
    return load_dataset("mkeb-mini", split="test")


def test_one_record_per_relation(mkeb_test_split):
    relations = {relation_key(r) for r in mkeb_test_split}
    picked = stratified_sample(mkeb_test_split, len(relations), seed=0)
    assert len(picked) == len(relations)
    assert {relation_key(r) for r in picked} == relations


def test_counts_differ_by_at_most_one_and_order_is_kept(mkeb_test_split):
    picked = stratified_sample(mkeb_test_split, 21, seed=3)
    counts = Counter(relation_key(r) for r in picked)
    assert len(picked) == 21 and max(counts.values()) - min(counts.values()) <= 1
    positions = [mkeb_test_split.index(r) for r in picked]
    assert positions == sorted(positions) and len(set(positions)) == 21


def test_seeded(mkeb_test_split):
    ids = lambda rs: [r.example_id for r in rs]  # noqa: E731
    assert ids(stratified_sample(mkeb_test_split, 16, seed=1)) == ids(stratified_sample(mkeb_test_split, 16, seed=1))
    assert ids(stratified_sample(mkeb_test_split, 16, seed=1)) != ids(stratified_sample(mkeb_test_split, 16, seed=2))


def test_bounds(mkeb_test_split):
    assert stratified_sample(mkeb_test_split, 10_000) == list(mkeb_test_split)
    with pytest.raises(DataError, match="at least 1"):
        stratified_sample(mkeb_test_split, 0)
