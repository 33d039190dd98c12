"""Seeded subsets of a dataset that cover its relations evenly.

Datasets are usually stored grouped by relation, so "the first N records" of
mkeb-mini are N capital-city facts.  `stratified_sample` picks N records so that
every relation contributes ``N // R`` or ``N // R + 1`` of them (R relations),
chosen at random with a fixed seed, and returns them in file order.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from memla.data.schema import Record
from memla.errors import DataError


def relation_key(record: Record) -> str:
    """The record's relation id, else its relation description, else ``""`` (one stratum)."""
    return record.relation or record.relation_description


def stratified_sample(records: Sequence[Record], n: int, *, seed: int = 0) -> list[Record]:
    """``n`` records spread evenly over relations, chosen with ``random.Random(seed)``.

    Relations are visited in a seeded random order, one record each per round, so
    when ``n`` is not a multiple of the number of relations the extra records
    come from different relations.

    Args:
        records: the records to choose from.
        n: how many to choose; ``n >= len(records)`` returns all of them.
        seed: the seed of the choice.

    Returns:
        The chosen records, in their original order.

    Raises:
        DataError: ``n`` is below 1.
    """
    if n < 1:
        raise DataError(f"a sample needs at least 1 record, got {n}")
    if n >= len(records):
        return list(records)
    rng = random.Random(seed)
    strata: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        strata[relation_key(record)].append(i)
    queues = [rng.sample(idx, len(idx)) for _, idx in sorted(strata.items())]
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return [records[i] for i in sorted(chosen)]
