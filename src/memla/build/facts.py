"""Fact extraction from Wikidata-style SPARQL endpoints (MKEB §3.1, stage 1).

The benchmark starts from knowledge-graph facts:

- single facts ``(s, r, o)`` of chosen relations, where both ends are entities
  with a label in the source language (by default only subjects with exactly one
  object for ``r``, so "the r of s" has one answer to edit);
- two-hop chains ``(s, r1, m), (m, r2, o)`` for multi-hop questions, where
  ``r1`` may be inverted (``^P85``: ``m`` has anthem ``s``);
- labels of entities and properties in the requested languages, which later
  name the entities in every language instead of machine translation.

Queries use only SPARQL 1.1 and ``rdfs:label`` (no Wikidata label service), so
they run on the public endpoint and on any local dump alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memla.build.sparql import Binding, SparqlEndpoint
from memla.errors import MemlaError

WD = "http://www.wikidata.org/entity/"
WDT = "http://www.wikidata.org/prop/direct/"
PREFIXES = f"PREFIX wd: <{WD}>\nPREFIX wdt: <{WDT}>\nPREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"

# Wikidata keeps some languages' labels under regional tags; take the plain tag first.
WIKIDATA_LANG_TAGS: dict[str, tuple[str, ...]] = {
    "zh": ("zh", "zh-hans", "zh-cn", "zh-sg", "zh-hant", "zh-tw", "zh-hk"),
    "pt": ("pt", "pt-br"),
    "en": ("en", "en-gb", "en-us"),
    "es": ("es", "es-419"),
    "fr": ("fr", "fr-ca"),
    "de": ("de", "de-ch", "de-at"),
}

_RELATION = re.compile(r"^(\^)?(P[1-9][0-9]*)$")
_ENTITY = re.compile(r"^[QP][1-9][0-9]*$")


@dataclass(frozen=True)
class Fact:
    """One knowledge-graph fact ``(s, r, o)`` by Wikidata ids (MKEB §3.1).

    Attributes:
        subject: the subject's id (``Q142``).
        relation: the property id (``P36``).
        object: the object's id (``Q90``).
    """

    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class Chain:
    """A two-hop chain ``(start, first, middle), (middle, second, end)`` (MKEB §3.1).

    Attributes:
        start: the entity a multi-hop question names.
        first: the first hop's relation, ``P17`` or inverted ``^P85``.
        middle: the intermediate entity (the edit's subject; never named in the question).
        second: the edited relation.
        end: the answer before the edit.
    """

    start: str
    first: str
    middle: str
    second: str
    end: str


def parse_relation(spec: str) -> tuple[str, bool]:
    """Split a relation spec into its property id and direction.

    Args:
        spec: ``"P36"``, or ``"^P85"`` for the inverse direction.

    Returns:
        ``(pid, inverse)``.

    Raises:
        MemlaError: not a property id.
    """
    m = _RELATION.match(spec.strip()) if isinstance(spec, str) else None
    if not m:
        raise MemlaError(
            f"bad relation {spec!r}: expected a Wikidata property id such as P36 (or ^P85 for the inverse)"
        )
    return m.group(2), bool(m.group(1))


def parse_relations(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Parse ``"P36,P17"`` (or a list) into distinct normalised relation specs, in order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        pid, inverse = parse_relation(item)
        norm = ("^" if inverse else "") + pid
        if norm not in out:
            out.append(norm)
    if not out:
        raise MemlaError("no relation given (expected e.g. P36,P17)")
    return tuple(out)


def wikidata_tags(lang: str) -> tuple[str, ...]:
    """The Wikidata label language tags that may hold ``lang``'s label, best first."""
    return WIKIDATA_LANG_TAGS.get(lang, (lang,))


def _path(spec: str) -> str:
    pid, inverse = parse_relation(spec)
    return f"{'^' if inverse else ''}wdt:{pid}"


def _label_filter(var: str, lang: str) -> str:
    tags = ", ".join(f'"{t}"' for t in wikidata_tags(lang))
    return f"?{var} rdfs:label ?{var}Label . FILTER(LANG(?{var}Label) IN ({tags}))"


def _entity_filter(var: str) -> str:
    return f'FILTER(isIRI(?{var}) && STRSTARTS(STR(?{var}), "{WD}Q"))'


def _values(var: str, ids: Sequence[str]) -> str:
    for qid in ids:
        if not _ENTITY.match(qid):
            raise MemlaError(f"bad Wikidata id {qid!r}")
    return f"VALUES ?{var} {{ {' '.join('wd:' + q for q in ids)} }}"


def entity_id(binding: Binding, var: str) -> str | None:
    """The Wikidata id bound to ``var`` (``Q142``), or ``None`` if it is not a Wikidata entity."""
    term = binding.get(var)
    if not term or term.get("type") != "uri" or not term.get("value", "").startswith(WD):
        return None
    qid = term["value"][len(WD) :]
    return qid if _ENTITY.match(qid) else None


def facts_query(relation: str, *, source_lang: str = "en", limit: int = 100, functional: bool = True) -> str:
    """The SPARQL query for single facts of one relation (MKEB §3.1).

    Args:
        relation: the property id (``P36``; not inverted).
        source_lang: both ends need a label in this language.
        limit: the most facts to return.
        functional: keep only subjects with exactly one object for ``relation``.

    Returns:
        A SELECT query binding ``?s`` and ``?o``.
    """
    pid, inverse = parse_relation(relation)
    if inverse:
        raise MemlaError(f"edit relations cannot be inverted ({relation!r}); use {pid}")
    unique = f"FILTER NOT EXISTS {{ ?s wdt:{pid} ?o2 . FILTER(?o2 != ?o) }}\n  " if functional else ""
    return (
        f"{PREFIXES}SELECT DISTINCT ?s ?o WHERE {{\n"
        f"  ?s wdt:{pid} ?o .\n"
        f"  {_entity_filter('s')}\n  {_entity_filter('o')}\n"
        f"  FILTER(?s != ?o)\n"
        f"  {unique}{_label_filter('s', source_lang)}\n"
        f"  {_label_filter('o', source_lang)}\n"
        f"}}\nLIMIT {int(limit)}\n"
    )


def chains_query(
    first: str, second: str, *, middles: Sequence[str] | None = None, source_lang: str = "en", limit: int = 100
) -> str:
    """The SPARQL query for two-hop chains ``(s, first, m), (m, second, o)`` (MKEB §3.1).

    Args:
        first: the first hop (``P17``, or ``^P85`` inverted).
        second: the second, edited relation (``P36``).
        middles: restrict ``m`` to these ids (the subjects of the planned edits).
        source_lang: the start entity needs a label in this language.
        limit: the most chains to return.

    Returns:
        A SELECT query binding ``?s``, ``?m`` and ``?o``.
    """
    values = f"  {_values('m', middles)}\n" if middles else ""
    return (
        f"{PREFIXES}SELECT DISTINCT ?s ?m ?o WHERE {{\n{values}"
        f"  ?s {_path(first)} ?m .\n"
        f"  ?m {_path(second)} ?o .\n"
        f"  {_entity_filter('s')}\n  {_entity_filter('o')}\n"
        f"  FILTER(?s != ?m && ?s != ?o && ?m != ?o)\n"
        f"  {_label_filter('s', source_lang)}\n"
        f"}}\nLIMIT {int(limit)}\n"
    )


def labels_query(ids: Sequence[str], langs: Sequence[str]) -> str:
    """The SPARQL query for the labels of entities / properties in some languages.

    Args:
        ids: Wikidata ids (``Q142``, ``P36``).
        langs: language codes (their Wikidata tags are expanded, `wikidata_tags`).

    Returns:
        A SELECT query binding ``?item`` and ``?label``.
    """
    tags = sorted({t for lang in langs for t in wikidata_tags(lang)})
    return (
        f"{PREFIXES}SELECT ?item ?label WHERE {{\n"
        f"  {_values('item', ids)}\n"
        f"  ?item rdfs:label ?label .\n"
        f"  FILTER(LANG(?label) IN ({', '.join(chr(34) + t + chr(34) for t in tags)}))\n"
        f"}}\n"
    )


def extract_facts(
    endpoint: SparqlEndpoint, relation: str, *, source_lang: str = "en", limit: int = 100, functional: bool = True
) -> list[Fact]:
    """Extract single facts of one relation (MKEB §3.1, stage 1).

    Args:
        endpoint: where to query.
        relation: the property id.
        source_lang: both ends need a label in this language.
        limit: the most facts to fetch.
        functional: keep only subjects with one object for the relation.

    Returns:
        The distinct facts, sorted by (subject, object) so builds are reproducible.
    """
    pid, _ = parse_relation(relation)
    facts = set()
    for b in endpoint.select(facts_query(pid, source_lang=source_lang, limit=limit, functional=functional)):
        s, o = entity_id(b, "s"), entity_id(b, "o")
        if s and o and s != o:
            facts.add(Fact(s, pid, o))
    return sorted(facts, key=lambda f: (_id_key(f.subject), _id_key(f.object)))


def extract_chains(
    endpoint: SparqlEndpoint,
    first: str,
    second: str,
    *,
    middles: Sequence[str] | None = None,
    source_lang: str = "en",
    limit: int = 100,
    batch_size: int = 50,
) -> list[Chain]:
    """Extract two-hop chains ``(s, first, m), (m, second, o)`` (MKEB §3.1, multi-hop questions).

    Args:
        endpoint: where to query.
        first: the first hop (may be inverted, ``^P85``).
        second: the edited relation.
        middles: restrict the intermediate entity to these ids; queried in batches.
        source_lang: the start entity needs a label in this language.
        limit: the most chains per query.
        batch_size: intermediate entities per query.

    Returns:
        The distinct chains, sorted.
    """
    first_n = ("^" if parse_relation(first)[1] else "") + parse_relation(first)[0]
    second_pid, _ = parse_relation(second)
    batches: list[Sequence[str] | None] = [None]
    if middles is not None:
        ids = sorted(set(middles), key=_id_key)
        batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    chains = set()
    for batch in batches:
        if batch is not None and not batch:
            continue
        query = chains_query(first_n, second_pid, middles=batch, source_lang=source_lang, limit=limit)
        for b in endpoint.select(query):
            s, m, o = entity_id(b, "s"), entity_id(b, "m"), entity_id(b, "o")
            if s and m and o:
                chains.add(Chain(s, first_n, m, second_pid, o))
    return sorted(chains, key=lambda c: (_id_key(c.middle), _id_key(c.start), _id_key(c.end), c.first))


def fetch_labels(
    endpoint: SparqlEndpoint, ids: Iterable[str], *, langs: Sequence[str], batch_size: int = 100
) -> dict[str, dict[str, str]]:
    """Fetch labels of entities and properties in the requested languages (MKEB §3.1).

    A language's label is taken from its best Wikidata tag (`wikidata_tags`:
    ``zh`` before ``zh-hans`` ...); ids without any label are absent.

    Args:
        endpoint: where to query.
        ids: Wikidata ids.
        langs: language codes.
        batch_size: ids per query.

    Returns:
        ``{id: {lang: label}}``.
    """
    wanted = sorted(set(ids), key=_id_key)
    best: dict[str, dict[str, tuple[int, str]]] = {}
    rank = {lang: {t: i for i, t in enumerate(wikidata_tags(lang))} for lang in langs}
    for i in range(0, len(wanted), batch_size):
        batch = wanted[i : i + batch_size]
        for b in endpoint.select(labels_query(batch, langs)):
            item, label = entity_id(b, "item"), b.get("label") or {}
            text = " ".join(str(label.get("value", "")).split())
            tag = str(label.get("xml:lang", "")).lower()
            if not item or not text:
                continue
            for lang, tags in rank.items():
                if tag in tags:
                    prev = best.setdefault(item, {}).get(lang)
                    cand = (tags[tag], text)
                    if prev is None or cand < prev:
                        best[item][lang] = cand
    return {item: {lang: v[1] for lang, v in by_lang.items()} for item, by_lang in best.items()}


def _id_key(qid: str) -> tuple[str, int]:
    return (qid[:1], int(qid[1:]) if qid[1:].isdigit() else 0)
