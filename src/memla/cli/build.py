"""``memla build``: build a multilingual knowledge-editing dataset from Wikidata (MKEB §3.1, Appendix A)."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from memla.errors import MemlaError

ORDER = 80

ENV_HELP = """\
environment:
  MEMLA_LLM_BASE_URL, MEMLA_LLM_MODEL, MEMLA_LLM_API_KEY (or OPENAI_BASE_URL, OPENAI_API_KEY)
                        the OpenAI-compatible chat endpoint used for generation (and --translator llm)
  BAIDU_APPID, BAIDU_KEY
                        Baidu Translate credentials for --translator baidu
  MEMLA_USER_AGENT      User-Agent for SPARQL queries (Wikidata asks for contact details)
  API keys are read from flags or the environment only, and never logged.

stages (cached in --work-dir; re-running the same command resumes a crashed build):
  facts -> chains -> labels -> plan -> generate (checked, up to --max-tries answers per sample)
  -> translate (entity names from Wikidata labels) -> assemble (checked by memla.data.validate)

examples:
  memla build --relations P36,P37 --n 100 --langs all --out data.json \\
      --llm-base-url http://127.0.0.1:8000/v1 --llm-model qwen2.5-7b-instruct
  memla build --relations P36 --n 20 --langs en,zh,ja --out small.json \\
      --endpoint wikidata_dump.ttl --translator baidu
  memla build --relations P36 --n 50 --langs en,de,fr --out d.json --translator hf \\
      --hf-model facebook/nllb-200-distilled-600M
"""

STAGE_FILES = ("facts.json", "chains.json", "labels.json", "plan.json", "generated.jsonl", "report.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``build`` sub-command."""
    p = subparsers.add_parser(
        "build",
        help="build an MKEB-style dataset: Wikidata facts -> LLM samples -> checks -> translation",
        description=textwrap.dedent(
            """\
            Build a multilingual knowledge-editing dataset as in MKEB (paper §3.1, Appendix A):
            extract facts and two-hop chains from a SPARQL endpoint, have an LLM write an edit prompt,
            paraphrases, neighbourhood prompts and a multi-hop question for each, check every guideline
            (regenerating a failing sample with the reasons, up to --max-tries answers), translate into
            the requested languages with entity names taken from Wikidata labels, and write records in
            memla's MKEB layout plus a build report (counts per stage, drop reasons, requests made)."""
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to build")
    g.add_argument("--relations", required=True, help="Wikidata property ids of the edited facts, e.g. P36,P37,P17")
    g.add_argument("--n", type=int, default=100, help="records to build (default: %(default)s)")
    g.add_argument(
        "--langs",
        default="all",
        help="output languages: 'all' (the 12 MKEB languages) or e.g. en,zh,de (default: %(default)s)",
    )
    g.add_argument("--source-lang", default="en", help="language the LLM writes samples in (default: %(default)s)")
    g.add_argument(
        "--out", required=True, help="dataset file to write (.json or .jsonl); the report goes to NAME.report.json"
    )
    g.add_argument(
        "--hop-relations",
        default=None,
        help="first hops of multi-hop chains (s, r1, subject); ^P85 reads P85 backwards; 'none' disables "
        "(default: ^P85,^P35,^P6,^P26)",
    )
    g.add_argument("--neighbors", type=int, default=2, help="neighbourhood prompts per record (default: %(default)s)")
    g.add_argument("--paraphrases", type=int, default=2, help="paraphrase prompts per record (default: %(default)s)")
    g.add_argument(
        "--max-tries", type=int, default=3, help="LLM answers per sample before it is dropped (default: %(default)s)"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for counterfactual targets, neighbours and order (default: %(default)s)",
    )
    g.add_argument("--any-object", action="store_true", help="also use subjects with several objects for a relation")

    g = p.add_argument_group("facts (SPARQL)")
    g.add_argument(
        "--endpoint",
        default=None,
        help="SPARQL endpoint URL, or a local .ttl/.nt/.nq/.rdf file queried in process "
        "(default: the public Wikidata endpoint)",
    )
    g.add_argument(
        "--user-agent", default=None, help="User-Agent for SPARQL requests (default: $MEMLA_USER_AGENT or memla's)"
    )
    g.add_argument(
        "--sparql-interval", type=float, default=1.0, help="seconds between SPARQL requests (default: %(default)s)"
    )

    g = p.add_argument_group("generation (OpenAI-compatible chat endpoint)")
    g.add_argument(
        "--llm-base-url", default=None, help="API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1"
    )
    g.add_argument("--llm-model", default=None, help="model name the server expects")
    g.add_argument(
        "--llm-api-key", default=None, help="API key (prefer the MEMLA_LLM_API_KEY / OPENAI_API_KEY variables)"
    )
    g.add_argument("--llm-temperature", type=float, default=0.7, help="sampling temperature (default: %(default)s)")
    g.add_argument("--llm-json-mode", action="store_true", help='send response_format={"type": "json_object"}')
    g.add_argument(
        "--llm-timeout", type=float, default=120.0, help="seconds to wait for an answer (default: %(default)s)"
    )

    g = p.add_argument_group("translation")
    g.add_argument(
        "--translator", choices=["llm", "baidu", "hf"], default="llm", help="translator (default: %(default)s)"
    )
    g.add_argument("--baidu-appid", default=None, help="Baidu Translate APP ID (default: $BAIDU_APPID)")
    g.add_argument("--baidu-key", default=None, help="Baidu Translate secret key (prefer $BAIDU_KEY)")
    g.add_argument("--baidu-url", default=None, help="Baidu Translate API address (default: the official one)")
    g.add_argument(
        "--hf-model",
        default=None,
        help="local / hub translation model (NLLB-200, M2M100, mBART-50), or a template such as "
        "Helsinki-NLP/opus-mt-{src}-{tgt}",
    )
    g.add_argument("--hf-device", default="cpu", help="torch device of the HF model (default: %(default)s)")

    g = p.add_argument_group("build directory")
    g.add_argument("--work-dir", default=None, help="stage caches (default: OUT without suffix + '.build/')")
    g.add_argument(
        "--fresh",
        action="store_true",
        help="ignore the stage caches of an earlier run (the SPARQL and translation caches stay)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``memla build``; returns the exit status."""
    from memla.build import (
        DEFAULT_HOP_RELATIONS,
        BaiduTranslator,
        BuildConfig,
        ChatClient,
        HFTranslator,
        LLMTranslator,
        build_dataset,
        open_endpoint,
    )
    from memla.build.report import report_path

    out = Path(args.out)
    if out.suffix not in (".json", ".jsonl"):
        raise MemlaError(f"--out must end in .json or .jsonl, got {args.out!r}")
    hops = args.hop_relations
    if hops is None:
        hops = DEFAULT_HOP_RELATIONS
    elif hops.strip().lower() in ("", "none"):
        hops = ()
    config = BuildConfig(
        relations=args.relations,
        n=args.n,
        langs=args.langs,
        source_lang=args.source_lang,
        hop_relations=hops,
        n_neighbors=args.neighbors,
        n_paraphrases=args.paraphrases,
        max_tries=args.max_tries,
        seed=args.seed,
        functional=not args.any_object,
    )
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + ".build")
    if args.fresh:
        for name in STAGE_FILES:
            (work_dir / name).unlink(missing_ok=True)

    endpoint = open_endpoint(
        args.endpoint,
        cache_dir=work_dir / "sparql",
        user_agent=args.user_agent or _env("MEMLA_USER_AGENT"),
        min_interval=args.sparql_interval,
    )
    base_url = args.llm_base_url or _env("MEMLA_LLM_BASE_URL", "OPENAI_BASE_URL")
    model = args.llm_model or _env("MEMLA_LLM_MODEL")
    client = None
    if base_url or model:
        if not (base_url and model):
            raise MemlaError(
                "the LLM needs both --llm-base-url and --llm-model (or MEMLA_LLM_BASE_URL / MEMLA_LLM_MODEL)"
            )
        client = ChatClient(
            base_url,
            model,
            api_key=args.llm_api_key or _env("MEMLA_LLM_API_KEY", "OPENAI_API_KEY"),
            temperature=args.llm_temperature,
            json_mode=args.llm_json_mode,
            timeout=args.llm_timeout,
            user_agent=args.user_agent or _env("MEMLA_USER_AGENT"),
        )

    translator = None
    needs_translation = any(lang != config.source_lang for lang in config.langs)
    if needs_translation:
        if args.translator == "llm":
            if client is None:
                raise MemlaError("--translator llm needs --llm-base-url and --llm-model")
            translator = LLMTranslator(client)
        elif args.translator == "baidu":
            kwargs = {"url": args.baidu_url} if args.baidu_url else {}
            translator = BaiduTranslator(
                args.baidu_appid or _env("BAIDU_APPID"), args.baidu_key or _env("BAIDU_KEY"), **kwargs
            )
        else:
            if not args.hf_model:
                raise MemlaError("--translator hf needs --hf-model (e.g. facebook/nllb-200-distilled-600M)")
            translator = HFTranslator(args.hf_model, device=args.hf_device)

    report = build_dataset(
        config,
        endpoint=endpoint,
        client=client,
        translator=translator,
        work_dir=work_dir,
        out=out,
        progress=not args.no_progress,
    )
    _print_report(report, report_path(out), work_dir)
    return 0


def _print_report(report, report_file: Path, work_dir: Path) -> None:
    from memla.cli._common import console, print_table

    rows = []
    for stage, info in report.stages.items():
        details = ", ".join(
            f"{k}={v}" for k, v in info.items() if k not in ("count", "cached") and not isinstance(v, dict)
        )
        rows.append((stage, info.get("count", ""), "yes" if info.get("cached") else "", details))
    print_table("build stages", ["stage", "count", "from cache", "details"], rows)
    if report.drops:
        print_table(
            "drop reasons", ["stage:reason", "count"], sorted(report.drops.items(), key=lambda kv: (-kv[1], kv[0]))
        )
    if report.requests:
        print_table(
            "requests made",
            ["service", "requests", "retries", "failures", "cache hits", "waited (s)"],
            [
                (name, s["requests"], s["retries"], s["failures"], s["cache_hits"], s["slept_s"])
                for name, s in report.requests.items()
            ],
        )
    print_table("records per language", ["lang", "records"], list(report.languages.items()))
    console.print(
        f"wrote {report.records} records to {report.output} "
        f"({report.validation['warnings']} validation warning(s)); report: {report_file}; stage caches: {work_dir}"
    )
