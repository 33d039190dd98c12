"""`memla stats`: precompute the key statistics ``C = E[k kᵀ]`` that ROME, MEMIT and PMET use."""

from __future__ import annotations

import argparse

from memla.cli._common import add_model_argument, console, load_model_from_args, print_table

ORDER = 45


def register(subparsers) -> None:
    from memla.editors.kv.stats import DTYPES

    p = subparsers.add_parser(
        "stats",
        help="precompute the MLP key covariance statistics of ROME / MEMIT / PMET (cached)",
        description="Compute C = E[k kᵀ] of the down-projection inputs of the given layers from a text corpus "
        "and cache it (keyed by model, layer, corpus, sample count and dtype), so that ROME, MEMIT and PMET "
        "edits do not pay for it.  Offline, the corpus is text the model samples from seed words in 12 "
        "languages (no benchmark sentence, so C never sees the prompts locality is scored on).",
    )
    add_model_argument(p)
    p.add_argument(
        "--layers", nargs="+", default=["default"], metavar="L",
        help="layer indices (e.g. '2 3 4' or '2,3,4'), 'all', or 'default' = the layers the ROME/MEMIT/PMET "
        "defaults edit on this model (default: %(default)s)",
    )
    p.add_argument(
        "--corpus", nargs="+", default=["builtin"], metavar="ITEM",
        help="text files (one text per line), 'builtin' (offline: model-sampled text in 12 languages) or "
        "'hf:NAME[:CONFIG[:SPLIT]]' (a Hugging Face dataset; falls back to builtin when unreachable) "
        "(default: %(default)s)",
    )
    p.add_argument("--samples", type=int, default=50_000, help="keys (token positions) to average (default: %(default)s)")
    p.add_argument("--stats-dtype", default="float32", choices=DTYPES,
                   help="dtype of the statistics (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def parse_layers(values: list[str], model) -> list[int]:
    """Layer indices from ``--layers`` values ('default', 'all', numbers, comma lists)."""
    from memla.editors.memit import MemitEditor
    from memla.editors.rome import RomeEditor
    from memla.errors import MemlaError
    from memla.models import num_layers

    words = [w for v in values for w in v.split(",") if w.strip()]
    if words == ["default"]:  # PMET's default layers are MEMIT's
        return sorted({RomeEditor().layer(model), *MemitEditor().layers(model)})
    if words == ["all"]:
        return list(range(num_layers(model)))
    try:
        return sorted({int(w) for w in words})
    except ValueError:
        raise MemlaError(f"--layers takes layer numbers, 'all' or 'default', got {' '.join(values)!r}") from None


def run(args: argparse.Namespace) -> int:
    import time

    from memla.editors.kv import layer_stats, resolve_corpus

    corpus = resolve_corpus(args.corpus)  # checks the files before the model loads
    model, tokenizer = load_model_from_args(args)
    layers = parse_layers(args.layers, model)
    t0 = time.perf_counter()
    stats = layer_stats(model, tokenizer, layers, corpus=corpus.items, samples=args.samples,
                        dtype=args.stats_dtype, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    rows = [(s.layer, "x".join(map(str, s.mom2.shape)), s.count, "yes" if s.cached else "computed", s.path.name)
            for s in stats.values()]
    print_table(f"key statistics (corpus: {', '.join(corpus.items)}; {seconds:.1f} s)",
                ["layer", "C", "keys", "cache", "file"], rows)
    console.print(f"[dim]cache folder: {next(iter(stats.values())).path.parent}[/dim]")
    return 0
