"""How much does one edit move the model on prompts of *other* facts?  A diagnosis (issue 13, §2).

In a sequential run the damage of each edit adds up, so what matters is how far a single
edit moves the next-token distribution of prompts it has nothing to do with.  For each of
``--records`` stratified dev records, each method edits the unedited model alone (English
source), and the table gives, over the neighbourhood prompts of the dev records of every
*other* relation (en, and zh for the zh column; the same prompts for every method):

- **KL**: ``mean_a KL(p_0(·|a) ‖ p_1(·|a))``, unedited ``p_0``, edited ``p_1`` (nats);
- **top-1 flips**: the share of prompts whose most likely next token changed;
- **P(new)**: the edit prompt's probability of ``target_new`` at the last training step;
- **steps** and **edit s**: training steps and the edit's wall time (medians).

A method is written ``NAME`` or ``NAME:{json overrides}``, e.g. ``memla-local:{"lr": 0.001}``.

    python benchmarks/edit_perturbation.py --records 8 \\
        --methods 'memla' 'memla-local' 'memla-local:{"lr": 0.001}'
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from statistics import mean, median

import torch

from memla import load_model
from memla.data import load_dataset, stratified_sample
from memla.editors import EditRequest, apply, get_editor
from memla.editors.memla import Anchors
from memla.errors import MemlaError
from memla.evaluate.runner import package_versions
from memla.tokens import encode_text


def next_token_logp(model, tok, prompts: list[str]) -> torch.Tensor:
    """The model's next-token log-probabilities after each prompt, ``(N, V)`` (memla-local's anchor measurement)."""
    return Anchors.measure(model, tok, [(p, encode_text(tok, p)) for p in prompts], weight=0.0).logp


def parse_method(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:{json}`` -> (name, overrides)."""
    name, _, overrides = spec.partition(":")
    return name, json.loads(overrides) if overrides else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=8, help="stratified dev records to edit (default: %(default)s)")
    ap.add_argument("--methods", nargs="+", default=["memla", "memla-local", "memla-local-v2"],
                    help="methods, NAME or NAME:{json overrides} (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/edit_perturbation")
    args = ap.parse_args()
    try:
        methods = [parse_method(spec) for spec in args.methods]
        for name, overrides in methods:
            get_editor(name, overrides)
    except (ValueError, MemlaError) as err:
        ap.error(f"--methods: {err}")
    torch.manual_seed(args.seed)
    model, tok = load_model()
    dev = load_dataset("mkeb-mini", split="dev")
    records = stratified_sample(dev, args.records, seed=args.seed + 1)
    per_method: dict[str, list[dict]] = {spec: [] for spec in args.methods}
    for record in records:  # the unedited distributions once per record, then every method's edit of it
        probes = {lang: [p for other in dev if other.relation != record.relation
                         for p in other.neighborhood_prompts.get(lang, ())] for lang in ("en", "zh")}
        before = {lang: next_token_logp(model, tok, prompts) for lang, prompts in probes.items()}  # (N, V) each
        for spec, (name, overrides) in zip(args.methods, methods):
            t0 = time.perf_counter()
            result = get_editor(name, overrides).edit(model, tok, EditRequest.from_record(record, "en"))
            seconds = time.perf_counter() - t0
            with apply(model, result):
                after = {lang: next_token_logp(model, tok, prompts) for lang, prompts in probes.items()}
            kl = {lang: float((p0.exp() * (p0 - after[lang])).sum(-1).mean()) for lang, p0 in before.items()}
            flips = float((before["en"].argmax(-1) != after["en"].argmax(-1)).float().mean())
            p_new = result.info.get("p_new")
            per_method[spec].append({
                "record": record.example_id, "relation": record.relation, "kl_en": kl["en"], "kl_zh": kl["zh"],
                "flips_en": flips, "p_new": p_new[-1] if isinstance(p_new, list) and p_new else None,
                "steps": result.info.get("steps"), "seconds": seconds, "probes": len(probes["en"])})
            print(f"{spec} record {record.example_id} ({record.relation}): KL en {kl['en']:.4f} zh {kl['zh']:.4f} "
                  f"flips {100 * flips:.1f}% steps {result.info.get('steps')} {seconds:.1f} s", flush=True)
    rows = []
    for spec, per in per_method.items():
        p_news = [r["p_new"] for r in per if r["p_new"] is not None]
        rows.append({"method": spec, "kl_en": mean(r["kl_en"] for r in per), "kl_zh": mean(r["kl_zh"] for r in per),
                     "flips_en": mean(r["flips_en"] for r in per), "p_new": mean(p_news) if p_news else None,
                     "steps": median(r["steps"] or 0 for r in per), "seconds": median(r["seconds"] for r in per),
                     "records": per})
    table = ["| method | KL en | KL zh | top-1 flips en | P(new) | steps | edit s |", "|---|---:|---:|---:|---:|---:|---:|"]
    table += [f"| `{r['method']}` | {r['kl_en']:.4f} | {r['kl_zh']:.4f} | {100 * r['flips_en']:.1f}% | "
              f"{'–' if r['p_new'] is None else format(r['p_new'], '.3f')} | {r['steps']:g} | {r['seconds']:.1f} |" for r in rows]
    text = "\n".join(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps({
        "records": [r.example_id for r in records], "methods": args.methods, "seed": args.seed,
        "torch_threads": torch.get_num_threads(), "versions": package_versions(), "platform": platform.platform(),
        "command": sys.argv}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
