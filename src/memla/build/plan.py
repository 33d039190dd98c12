"""Planning the edits of a built dataset from extracted facts (MKEB §3.1, between stages 1 and 2).

Each *case* is one future record: a fact ``(s, r, o)``, a counterfactual new
object ``o*`` (another object of the same relation, as in CounterFact), a few
neighbour facts ``(s', r, o')`` of the same relation for the locality prompts,
and, when a chain ``(start, r1, s), (s, r, o)`` exists, the first hop for the
multi-hop question.  Everything is chosen deterministically from a seed, so a
resumed build plans the same cases.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from memla.build.facts import Chain, Fact


@dataclass(frozen=True)
class Entity:
    """A Wikidata entity with its label in the source language."""

    id: str
    label: str


@dataclass(frozen=True)
class Hop:
    """The first hop of a multi-hop question: ``(start, relation, subject)`` or its inverse.

    Attributes:
        start: the entity the question names.
        relation: ``P17`` (start --P17--> subject) or ``^P85`` (subject --P85--> start).
        relation_label: the property's label in the source language.
    """

    start: Entity
    relation: str
    relation_label: str


@dataclass(frozen=True)
class Case:
    """One planned record (MKEB §3.1): the edit, its neighbours and its multi-hop hop.

    Attributes:
        case_id: position in the plan (becomes ``example_id``).
        relation: the property id.
        relation_label: its label in the source language (``relation_description``).
        subject: the edited subject.
        target_true: its current object.
        target_new: the counterfactual object.
        neighbors: ``(subject', answer')`` pairs of the same relation.
        hop: the first hop of a two-hop chain ending in this fact, if any.
    """

    case_id: int
    relation: str
    relation_label: str
    subject: Entity
    target_true: Entity
    target_new: Entity
    neighbors: tuple[tuple[Entity, Entity], ...] = ()
    hop: Hop | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Case:
        """Rebuild a case from `to_dict`'s output."""
        hop = d.get("hop")
        return cls(
            case_id=int(d["case_id"]),
            relation=d["relation"],
            relation_label=d["relation_label"],
            subject=Entity(**d["subject"]),
            target_true=Entity(**d["target_true"]),
            target_new=Entity(**d["target_new"]),
            neighbors=tuple((Entity(**a), Entity(**b)) for a, b in d.get("neighbors", ())),
            hop=Hop(Entity(**hop["start"]), hop["relation"], hop["relation_label"]) if hop else None,
        )

    def entity_ids(self) -> list[str]:
        """Every entity id the case mentions (for label look-ups)."""
        ids = [self.subject.id, self.target_true.id, self.target_new.id]
        ids += [e.id for pair in self.neighbors for e in pair]
        if self.hop:
            ids.append(self.hop.start.id)
        return ids


def _same(a: str, b: str) -> bool:
    return a.casefold().strip() == b.casefold().strip()


def plan_cases(
    facts: Mapping[str, Sequence[Fact]],
    *,
    labels: Mapping[str, Mapping[str, str]],
    source_lang: str,
    chains: Sequence[Chain] = (),
    hop_order: Sequence[str] = (),
    n_neighbors: int = 2,
    seed: int = 0,
) -> tuple[list[Case], list[tuple[str, str]]]:
    """Turn extracted facts into edit cases (MKEB §3.1).

    Cases alternate between relations (round robin) so that any prefix of the
    plan is balanced; within a relation the order is shuffled by ``seed``.

    Args:
        facts: ``{relation: facts}`` as extracted.
        labels: ``{id: {lang: label}}``; every entity and property needs a
            ``source_lang`` label.
        source_lang: the language samples are generated in.
        chains: two-hop chains; a case uses the first whose middle and fact match.
        hop_order: the preferred order of first-hop relations.
        n_neighbors: neighbour facts per case (at least one is required).
        seed: the random seed.

    Returns:
        ``(cases, drops)`` where ``drops`` lists ``(fact, reason)`` for facts that
        could not become a case.
    """

    def label(qid: str) -> str | None:
        return labels.get(qid, {}).get(source_lang)

    chain_index: dict[tuple[str, str, str], list[Chain]] = {}
    for c in chains:
        chain_index.setdefault((c.middle, c.second, c.end), []).append(c)
    rank = {r: i for i, r in enumerate(hop_order)}

    per_relation: list[list[Case]] = []
    drops: list[tuple[str, str]] = []
    for relation, rel_facts in facts.items():
        rel_label = label(relation) or relation
        usable = [f for f in rel_facts if label(f.subject) and label(f.object)]
        for f in rel_facts:
            if f not in usable:
                drops.append((_fact_str(f), "no_source_label"))
        objects = sorted({f.object for f in usable})
        cases: list[Case] = []
        for fact in usable:
            rng = random.Random(f"{seed}:{fact.relation}:{fact.subject}:{fact.object}")
            s_label, o_label = label(fact.subject), label(fact.object)
            candidates = [o for o in objects if o != fact.object and not _same(label(o), o_label)]
            if not candidates:
                drops.append((_fact_str(fact), "no_counterfactual_target"))
                continue
            new = rng.choice(candidates)
            new_label = label(new)
            pool = [
                f
                for f in usable
                if f.subject != fact.subject
                and f.object != new
                and not _same(label(f.subject), s_label)
                and not _same(label(f.object), new_label)
            ]
            if not pool:
                drops.append((_fact_str(fact), "no_neighbor"))
                continue
            picked = rng.sample(pool, min(n_neighbors, len(pool)))
            neighbors = tuple((Entity(f.subject, label(f.subject)), Entity(f.object, label(f.object))) for f in picked)
            hop = None
            options = [
                c
                for c in chain_index.get((fact.subject, fact.relation, fact.object), [])
                if label(c.start) and not any(_same(label(c.start), x) for x in (s_label, o_label, new_label))
            ]
            if options:
                best = min(options, key=lambda c: (rank.get(c.first, len(rank)), c.first, c.start))
                pid = best.first.lstrip("^")
                hop = Hop(Entity(best.start, label(best.start)), best.first, label(pid) or pid)
            cases.append(
                Case(
                    case_id=-1,
                    relation=fact.relation,
                    relation_label=rel_label,
                    subject=Entity(fact.subject, s_label),
                    target_true=Entity(fact.object, o_label),
                    target_new=Entity(new, new_label),
                    neighbors=neighbors,
                    hop=hop,
                )
            )
        random.Random(f"{seed}:{relation}").shuffle(cases)
        per_relation.append(cases)

    ordered: list[Case] = []
    for i in range(max((len(c) for c in per_relation), default=0)):
        for cases in per_relation:
            if i < len(cases):
                ordered.append(cases[i])
    planned = [replace(c, case_id=i) for i, c in enumerate(ordered)]
    return planned, drops


def _fact_str(f: Fact) -> str:
    return f"({f.subject}, {f.relation}, {f.object})"
