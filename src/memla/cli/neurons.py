"""`memla neurons`: knowledge neurons of a fact, or of a dataset record per language.

Two modes:

- ``memla neurons --prompt "The capital of {} is" --subject France --target Paris [--lang en]``
  prints the top neurons (layer, index, score) and how many neurons pass the
  threshold in each layer;
- ``memla neurons --dataset FILE --record ID --source en [--langs en,zh,fr|all]``
  prints, per layer, the neuron counts of every language and the
  language-independent / language-specific split.
"""

from __future__ import annotations

import argparse

from memla.cli._common import (
    add_max_tokens_argument,
    add_model_argument,
    check_texts_fit,
    check_typed_texts,
    console,
    load_model_from_args,
    print_table,
)
from memla.errors import DataError

ORDER = 30


def register(subparsers) -> None:
    """Add the ``neurons`` sub-command."""
    p = subparsers.add_parser(
        "neurons",
        help="find the knowledge neurons of a fact (integrated gradients, per-language split)",
        description="Integrated-gradients knowledge neurons (MEMLA §4.1): for one prompt, or for a dataset "
        "record in several languages with the language-independent / language-specific split.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt, with {} where the subject goes (or the subject written in)")
    source.add_argument("--dataset", help="dataset file (JSON / JSONL) or built-in name")
    p.add_argument("--subject", help="subject filled into the prompt's {}")
    p.add_argument("--target", help="answer whose probability is attributed (with --prompt)")
    p.add_argument("--lang", default=None, help="language of --prompt, for the join rule (default: join with a space)")
    p.add_argument("--record", help="example_id of the record (with --dataset)")
    p.add_argument("--source", default="en", help="source language ls (with --dataset; default: %(default)s)")
    p.add_argument("--langs", default="en,zh,fr",
                   help="comma-separated languages, or 'all' (with --dataset; default: %(default)s)")
    p.add_argument("--no-paraphrases", action="store_true", help="use only the edit prompt (with --dataset)")
    p.add_argument("--threshold", type=float, default=0.3,
                   help="keep neurons scoring above this fraction of the maximum (default: %(default)s)")
    p.add_argument("--share", type=float, default=None,
                   help="keep neurons found for at least this share of the prompts (default: union)")
    p.add_argument("--steps", type=int, default=20, help="integration steps (default: %(default)s)")
    p.add_argument("--baseline", choices=["zero", "sig_mean"], default="zero", help="IG baseline (default: %(default)s)")
    p.add_argument("--point", choices=["down_in", "mlp_in"], default="down_in",
                   help="attributed activation (default: %(default)s)")
    p.add_argument("--layers", default=None, help="layers to attribute, e.g. '0-5,17' (default: all)")
    p.add_argument("--top", type=int, default=20, help="number of top neurons to list (default: %(default)s)")
    p.add_argument("--reference", action="store_true", help="use the slow reference implementation")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the attribution cache")
    add_max_tokens_argument(p)
    add_model_argument(p)
    p.set_defaults(func=run)


def parse_layers(text: str | None) -> list[int] | None:
    """``"0-5,17"`` -> ``[0, 1, 2, 3, 4, 5, 17]``; None stays None."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in filter(None, (s.strip() for s in text.split(","))):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise DataError(f"--layers: cannot parse {text!r} (expected e.g. '0-5,17')") from None
    return out


def check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range options before the model loads."""
    if not 0.0 <= args.threshold <= 1.0:
        raise DataError(f"--threshold is a fraction of the maximum score in [0, 1], got {args.threshold}")
    if args.share is not None and not 0.0 < args.share <= 1.0:
        raise DataError(f"--share is a share of the prompts in (0, 1], got {args.share}")
    for flag, value in (("--steps", args.steps), ("--top", args.top)):
        if value < 1:
            raise DataError(f"{flag} must be at least 1, got {value}")
    from memla.langs import resolve_langs

    resolve_langs(args.langs)  # an unknown code is an error, not a skipped language
    resolve_langs(args.source)
    layers = parse_layers(args.layers)
    if layers is not None and (not layers or min(layers) < 0):
        raise DataError(f"--layers must name layers 0, 1, ..., got {args.layers!r}")


def check_layers(layers: list[int] | None, model) -> None:
    """Refuse layers the model does not have (before any attribution)."""
    from memla.models import num_layers

    n = num_layers(model)
    if layers is not None and max(layers) >= n:
        raise DataError(f"--layers: the model has layers 0-{n - 1}, got {max(layers)}")


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit status."""
    check_options(args)
    if args.prompt is not None:
        check_typed_texts([("--prompt", args.prompt), ("--subject", args.subject), ("--target", args.target)])
        prompt = _fill(args.prompt, args.subject)
        if not args.target:
            raise DataError("--target is required with --prompt")
        model, tokenizer = load_model_from_args(args)
        check_layers(parse_layers(args.layers), model)
        check_texts_fit(args, model, tokenizer, [("--prompt", prompt), ("--target", args.target)])
        return _single(args, model, tokenizer, prompt)
    if args.record is None:
        raise DataError("--record is required with --dataset")
    from memla.data import load_dataset

    records = [r for r in load_dataset(args.dataset) if str(r.example_id) == str(args.record)]
    if not records:
        raise DataError(f"{args.dataset}: no record with example_id {args.record!r}")
    model, tokenizer = load_model_from_args(args)
    check_layers(parse_layers(args.layers), model)
    check_texts_fit(args, model, tokenizer, records[0].texts())
    return _record(args, model, tokenizer, records[0])


def _fill(prompt: str, subject: str | None) -> str:
    if "{}" in prompt:
        if not subject:
            raise DataError("the prompt has a {} slot: give --subject")
        return prompt.replace("{}", subject, 1)
    if subject:
        raise DataError("--subject given but the prompt has no {} slot")
    return prompt


def _options(args: argparse.Namespace) -> dict:
    return dict(layers=parse_layers(args.layers), steps=args.steps, baseline=args.baseline, point=args.point,
                method="reference" if args.reference else "fast")


def _single(args, model, tokenizer, prompt: str) -> int:
    import torch

    from memla.neurons import NeuronSet, attribute

    opts = _options(args)
    scores = attribute(model, tokenizer, prompt, args.target, lang=args.lang, cache=not args.no_cache,
                       progress=True, **opts)  # (L, d_ff)
    layers = sorted(set(opts["layers"])) if opts["layers"] is not None else list(range(scores.shape[0]))
    neurons = NeuronSet.from_scores(scores, threshold=args.threshold, layers=layers)
    top = float(scores.max())
    values, flat = torch.topk(scores.flatten(), min(args.top, scores.numel()))
    d_ff = scores.shape[1]
    rows = [(rank + 1, layers[i // d_ff], i % d_ff, f"{v:.4g}", f"{v / top:.2f}" if top > 0 else "-")
            for rank, (v, i) in enumerate(zip(values.tolist(), flat.tolist()))]
    console.print(f"prompt: {prompt!r}  target: {args.target!r}")
    print_table(f"top {len(rows)} neurons", ["rank", "layer", "neuron", "score", "/max"], rows)
    counts = neurons.counts()
    per_layer = [(layer, counts.get(layer, 0), f"{float(scores[i].max()):.4g}") for i, layer in enumerate(layers)]
    per_layer.append(("total", len(neurons), f"{top:.4g}"))
    print_table(f"knowledge neurons per layer (score > {args.threshold} x max)", ["layer", "neurons", "max score"],
                per_layer)
    return 0


def _record(args, model, tokenizer, record) -> int:
    from memla.neurons import locate

    langs = "all" if args.langs.strip() == "all" else [s.strip() for s in args.langs.split(",") if s.strip()]
    found = locate(model, tokenizer, record, args.source, langs=langs, paraphrases=not args.no_paraphrases,
                   threshold=args.threshold, share=args.share, cache=not args.no_cache, progress=True,
                   **_options(args))
    langs_found = list(found.per_language)
    counts = {k: v.counts() for k, v in found.per_language.items()}
    ind, spec = found.independent.counts(), found.specific.counts()
    layers = sorted({layer for c in [*counts.values(), ind, spec] for layer in c})
    rows = [(layer, *(counts[k].get(layer, 0) for k in langs_found), ind.get(layer, 0), spec.get(layer, 0))
            for layer in layers]
    rows.append(("total", *(len(found.per_language[k]) for k in langs_found), len(found.independent),
                 len(found.specific)))
    console.print(f"record {record.example_id}: source {found.ls}"
                  + (f"; missing languages: {', '.join(found.missing)}" if found.missing else ""))
    print_table("knowledge neurons per layer", ["layer", *langs_found, "independent (I)", f"specific (S^{found.ls})"],
                rows)
    return 0
