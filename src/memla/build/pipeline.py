"""The dataset-construction pipeline behind ``memla build`` (MKEB §3.1, Appendix A).

Stages, each cached in the build directory so that a crashed build resumes:

1. ``facts``  — single facts of the chosen relations (`memla.build.facts`);
2. ``chains`` — two-hop chains ending in those facts, for multi-hop questions;
3. ``labels`` — Wikidata labels of every entity and property in every language;
4. ``plan``   — edit cases: counterfactual targets, neighbours, hops (`memla.build.plan`);
5. ``generate`` — LLM samples, checked and regenerated up to ``max_tries`` times
   (`memla.build.validate`); logged case by case;
6. ``translate`` — every requested language, entity names from Wikidata labels
   (`memla.build.localize`); a translation memory keeps finished texts;
7. ``assemble`` — records in the MKEB layout, checked by `memla.data.validate`,
   written with `memla.data.save_dataset`, plus the build report.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from memla.build.cache import JsonlLog, StageCache, stage_key
from memla.build.errors import BuildError
from memla.build.facts import Chain, Fact, extract_chains, extract_facts, fetch_labels, parse_relation, parse_relations
from memla.build.generate import PROMPT_VERSION, ChatClient, GeneratedSample
from memla.build.localize import LangEntry, assemble_record, localize
from memla.build.plan import Case, plan_cases
from memla.build.report import BuildReport, report_path
from memla.build.sparql import SparqlEndpoint
from memla.build.translate import CachedTranslator, Translator
from memla.build.validate import generate_valid_sample
from memla.data import save_dataset, validate
from memla.errors import MemlaError
from memla.langs import LANGS, order_langs, resolve_langs

log = logging.getLogger(__name__)

DEFAULT_HOP_RELATIONS: tuple[str, ...] = ("^P85", "^P35", "^P6", "^P26")
"""First hops tried for multi-hop questions: anthem, head of state, head of
government, spouse — read backwards, so a question can name the anthem and ask
about the country it belongs to."""


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one dataset build (MKEB §3.1).

    Attributes:
        relations: Wikidata property ids of the facts to edit (``("P36", "P37")``).
        n: records wanted; generation stops once this many samples pass.
        langs: output languages (``resolve_langs`` spec or tuple).
        source_lang: the language samples are generated in (``ls``).
        hop_relations: first hops for multi-hop chains (``^P85`` = inverse); empty: none.
        n_neighbors: neighbourhood prompts per record.
        n_paraphrases: paraphrase prompts per record.
        max_tries: LLM answers per case before it is dropped (Appendix A: 3).
        seed: random seed of the plan (targets, neighbours, order).
        functional: use only subjects with exactly one object for the relation.
        oversample: facts fetched per wanted record, to absorb drops.
        chain_batch_size: intermediate entities per chain query.
        chain_fanout: chains fetched per intermediate entity (query LIMIT).
    """

    relations: tuple[str, ...]
    n: int = 100
    langs: tuple[str, ...] = LANGS
    source_lang: str = "en"
    hop_relations: tuple[str, ...] = DEFAULT_HOP_RELATIONS
    n_neighbors: int = 2
    n_paraphrases: int = 2
    max_tries: int = 3
    seed: int = 0
    functional: bool = True
    oversample: float = 3.0
    chain_batch_size: int = 50
    chain_fanout: int = 20

    def __post_init__(self) -> None:
        rels = parse_relations(self.relations)
        if any(r.startswith("^") for r in rels):
            raise MemlaError("edited relations cannot be inverted (drop the ^)")
        object.__setattr__(self, "relations", rels)
        object.__setattr__(self, "hop_relations", parse_relations(self.hop_relations) if self.hop_relations else ())
        object.__setattr__(self, "langs", resolve_langs(self.langs))
        object.__setattr__(self, "source_lang", resolve_langs([self.source_lang])[0])
        for name in ("n", "n_neighbors", "n_paraphrases", "max_tries", "chain_batch_size", "chain_fanout"):
            if int(getattr(self, name)) < 1:
                raise MemlaError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.oversample < 1:
            raise MemlaError(f"oversample must be at least 1, got {self.oversample}")

    def facts_per_relation(self) -> int:
        """How many facts to fetch per relation (records per relation × oversample, plus neighbours)."""
        return math.ceil(self.n / len(self.relations) * self.oversample) + self.n_neighbors + 1


@dataclass
class _Run:
    """The state one build passes between stages."""

    config: BuildConfig
    endpoint: SparqlEndpoint
    cache: StageCache
    report: BuildReport
    progress: bool
    facts: dict[str, list[Fact]] = field(default_factory=dict)
    chains: list[Chain] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


def build_dataset(
    config: BuildConfig,
    *,
    endpoint: SparqlEndpoint,
    client: ChatClient | None,
    translator: Translator | None,
    work_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    progress: bool = False,
) -> BuildReport:
    """Build a multilingual knowledge-editing dataset (MKEB §3.1, Appendix A).

    Args:
        config: the build settings.
        endpoint: the SPARQL endpoint (wrap it in a `CachedEndpoint` to cache queries).
        client: the chat client for sample generation (``None`` works only when
            every needed sample is already in the build directory).
        translator: the translator for languages other than the source.
        work_dir: the build directory holding the stage caches.
        out: the dataset file to write (``.json`` or ``.jsonl``).
        progress: show progress bars.

    Returns:
        The build report (also written next to ``out``).

    Raises:
        BuildError: a stage failed (the next run resumes from the cached stages).
    """
    report = BuildReport(config=asdict(config))
    run = _Run(config, endpoint, StageCache(work_dir), report, progress)
    try:
        _facts(run)
        _chains(run)
        _labels(run)
        cases = _plan(run)
        accepted = _generate(run, cases, client)
        entries = _translate(run, accepted, translator)
    finally:
        _collect_requests(run, client, translator)
        report.write(Path(work_dir) / "report.json")

    records = []
    for case, _ in accepted:
        langs = {lang: by_case[case.case_id] for lang, by_case in entries.items() if case.case_id in by_case}
        if not langs:
            report.drop("assemble", case.case_id, "no_language")
            continue
        records.append(assemble_record(case, langs, langs=config.langs))
    check = validate(records, source=str(out))
    bad = {_record_of(p) for p in check.errors}
    for p in check.errors:
        log.warning("dropping record %s: %s", _record_of(p), p)
    for rec in records:
        if rec["example_id"] in bad:
            codes = sorted(
                {getattr(p, "code", "") or "error" for p in check.errors if _record_of(p) == rec["example_id"]}
            )
            report.drop("assemble", rec["example_id"], "schema_" + "+".join(codes))
    records = [r for r in records if r["example_id"] not in bad]
    report.validation = {"errors": len(check.errors), "warnings": len(check.warnings)}
    report.stages["assemble"] = {"count": len(records), "cached": False}
    report.records = len(records)
    report.languages = {lang: sum(lang in r["edit"] for r in records) for lang in config.langs}
    report.output = str(save_dataset(records, out))
    report.write(report_path(out))
    report.write(Path(work_dir) / "report.json")
    if len(records) < config.n:
        log.warning("built %d of the %d records asked for (see the drop reasons in the report)", len(records), config.n)
    return report


def _record_of(problem: Any) -> Any:
    """The record id a validation problem names (``example_id``)."""
    return getattr(problem, "record_id", getattr(problem, "record", None))


def _facts(run: _Run) -> None:
    cfg = run.config
    limit = cfg.facts_per_relation()
    key = stage_key("facts", run.endpoint.name, cfg.relations, cfg.source_lang, limit, cfg.functional)
    data = run.cache.load("facts", key)
    cached = data is not None
    if data is None:
        data = {}
        for rel in tqdm(cfg.relations, desc="facts", unit="relation", disable=not run.progress):
            data[rel] = [
                [f.subject, f.relation, f.object]
                for f in extract_facts(
                    run.endpoint, rel, source_lang=cfg.source_lang, limit=limit, functional=cfg.functional
                )
            ]
        run.cache.save("facts", key, data)
    run.facts = {rel: [Fact(*f) for f in data.get(rel, [])] for rel in cfg.relations}
    for rel, facts in run.facts.items():
        if not facts:
            log.warning("relation %s: no fact found with %s labels", rel, cfg.source_lang)
    run.keys["facts"] = key
    run.report.stages["facts"] = {
        "count": sum(len(f) for f in run.facts.values()),
        "per_relation": {rel: len(f) for rel, f in run.facts.items()},
        "cached": cached,
    }


def _chains(run: _Run) -> None:
    cfg = run.config
    key = stage_key("chains", run.keys["facts"], cfg.hop_relations, cfg.chain_batch_size, cfg.chain_fanout)
    data = run.cache.load("chains", key)
    cached = data is not None
    if data is None:
        data = []
        jobs = [(hop, rel) for rel in cfg.relations for hop in cfg.hop_relations if run.facts[rel]]
        for hop, rel in tqdm(jobs, desc="chains", unit="query", disable=not run.progress):
            middles = [f.subject for f in run.facts[rel]]
            found = extract_chains(
                run.endpoint,
                hop,
                rel,
                middles=middles,
                source_lang=cfg.source_lang,
                limit=cfg.chain_batch_size * cfg.chain_fanout,
                batch_size=cfg.chain_batch_size,
            )
            data += [asdict(c) for c in found]
        run.cache.save("chains", key, data)
    run.chains = [Chain(**c) for c in data]
    run.keys["chains"] = key
    run.report.stages["chains"] = {
        "count": len(run.chains),
        "middles": len({c.middle for c in run.chains}),
        "cached": cached,
    }


def _labels(run: _Run) -> None:
    cfg = run.config
    langs = order_langs([*cfg.langs, cfg.source_lang])
    ids = {x for facts in run.facts.values() for f in facts for x in (f.subject, f.object)}
    ids |= {c.start for c in run.chains}
    ids |= set(cfg.relations) | {parse_relation(h)[0] for h in cfg.hop_relations}
    key = stage_key("labels", run.keys["chains"], langs)
    data = run.cache.load("labels", key)
    cached = data is not None
    if data is None:
        data = fetch_labels(run.endpoint, sorted(ids), langs=langs)
        run.cache.save("labels", key, data)
    run.labels = data
    run.keys["labels"] = key
    run.report.stages["labels"] = {
        "count": sum(len(v) for v in data.values()),
        "entities": len(data),
        "per_language": {lang: sum(lang in v for v in data.values()) for lang in langs},
        "cached": cached,
    }


def _plan(run: _Run) -> list[Case]:
    cfg = run.config
    key = stage_key("plan", run.keys["labels"], cfg.n_neighbors, cfg.seed)
    data = run.cache.load("plan", key)
    cached = data is not None
    if data is None:
        cases, drops = plan_cases(
            run.facts,
            labels=run.labels,
            source_lang=cfg.source_lang,
            chains=run.chains,
            hop_order=cfg.hop_relations,
            n_neighbors=cfg.n_neighbors,
            seed=cfg.seed,
        )
        data = {"cases": [c.to_dict() for c in cases], "drops": drops}
        run.cache.save("plan", key, data)
    for item, reason in data["drops"]:
        run.report.drop("plan", item, reason)
    cases = [Case.from_dict(c) for c in data["cases"]]
    run.keys["plan"] = key
    run.report.stages["plan"] = {
        "count": len(cases),
        "with_hop": sum(c.hop is not None for c in cases),
        "cached": cached,
    }
    return cases


def _sample_key(case: Case, config: BuildConfig, model: str | None) -> str:
    content = {k: v for k, v in case.to_dict().items() if k != "case_id"}
    return stage_key(
        "sample", content, model, PROMPT_VERSION, config.source_lang, config.n_paraphrases, config.max_tries
    )


def _generate(run: _Run, cases: Sequence[Case], client: ChatClient | None) -> list[tuple[Case, GeneratedSample]]:
    cfg = run.config
    gen_log = JsonlLog(run.cache.dir / "generated.jsonl")
    model = client.model if client is not None else _logged_model(gen_log)
    accepted: list[tuple[Case, GeneratedSample]] = []
    stats: Counter = Counter()
    bar = tqdm(total=min(cfg.n, len(cases)), desc="generate", unit="sample", disable=not run.progress)
    try:
        for case in cases:
            if len(accepted) >= cfg.n:
                break
            key = _sample_key(case, cfg, model)
            entry = gen_log.get(key)
            if entry is not None:
                stats["cached"] += 1
            else:
                if client is None:
                    raise BuildError(
                        "sample generation needs an LLM: give --llm-base-url and --llm-model "
                        "(or MEMLA_LLM_BASE_URL / MEMLA_LLM_MODEL)"
                    )
                outcome = generate_valid_sample(
                    case, client=client, lang=cfg.source_lang, n_paraphrases=cfg.n_paraphrases, max_tries=cfg.max_tries
                )
                entry = {
                    "key": key,
                    "model": model,
                    "case_id": case.case_id,
                    "tries": outcome.tries,
                    "history": outcome.history,
                    "sample": outcome.sample.to_dict() if outcome.sample else None,
                    "issues": [[i.code, i.message] for i in outcome.issues],
                }
                gen_log.append(entry)
            stats["tries"] += entry["tries"]
            if entry["sample"] is None:
                stats["dropped"] += 1
                for code in sorted({code for code, _ in entry["issues"]}):
                    run.report.drop("generate", case.case_id, code)
                continue
            if entry["tries"] > 1:
                stats["regenerated"] += 1
            accepted.append((case, GeneratedSample.from_dict(entry["sample"])))
            bar.update(1)
    finally:
        bar.close()
        run.report.stages["generate"] = {
            "count": len(accepted),
            "attempted": len(accepted) + stats["dropped"],
            "dropped": stats["dropped"],
            "passed_after_regeneration": stats["regenerated"],
            "llm_answers": stats["tries"],
            "from_cache": stats["cached"],
            "cached": bool(stats["cached"]) and stats["cached"] == len(accepted) + stats["dropped"],
        }
    return accepted


def _logged_model(gen_log: JsonlLog) -> str | None:
    models = {e.get("model") for e in gen_log.entries.values()}
    return models.pop() if len(models) == 1 else None


def _translate(
    run: _Run, accepted: Sequence[tuple[Case, GeneratedSample]], translator: Translator | None
) -> dict[str, dict[int, LangEntry]]:
    cfg = run.config
    targets = [lang for lang in cfg.langs if lang != cfg.source_lang]
    if targets and translator is None:
        raise BuildError(f"translating into {', '.join(targets)} needs a translator (--translator llm|baidu|hf)")
    cached_tr = None
    if translator is not None:
        slug = stage_key("tm", translator.name)[:12]
        cached_tr = CachedTranslator(translator, run.cache.dir / f"translations-{slug}.jsonl")
    entries: dict[str, dict[int, LangEntry]] = {}
    counts: Counter = Counter()
    hits_before = translator.stats.cache_hits if translator is not None else 0
    for lang in tqdm(list(cfg.langs), desc="translate", unit="lang", disable=not run.progress):
        result = localize(accepted, target=lang, source=cfg.source_lang, labels=run.labels, translator=cached_tr)
        entries[lang] = result.entries
        counts.update(result.counts)
        for case_id, reason in result.drops:
            run.report.drop("translate", case_id, reason, lang=lang)
    run.report.stages["translate"] = {
        "count": sum(len(e) for e in entries.values()),
        "per_language": {lang: len(e) for lang, e in entries.items()},
        "texts_from_memory": (translator.stats.cache_hits - hits_before) if translator is not None else 0,
        **dict(counts),
        "cached": False,
    }
    return entries


def _collect_requests(run: _Run, client: ChatClient | None, translator: Translator | None) -> None:
    seen: dict[int, str] = {}
    named = [("sparql", run.endpoint.stats)]
    if client is not None:
        named.append(("llm", client.stats))
    if translator is not None:
        named.append((f"translator ({translator.name})", translator.stats))
    for name, stats in named:
        if id(stats) in seen:
            run.report.requests[seen[id(stats)]]["shared_with"] = name
            continue
        seen[id(stats)] = name
        run.report.requests[name] = stats.as_dict()
