"""Why does MEMLA break unrelated facts?  A diagnosis on dev records (issue 13, §2).

For the demo fact (mkeb-mini record 0, France → Rome) and a stratified sample of dev
records, on the default model:

1. **Relation vs subject neurons.**  MEMLA's language-independent (I) and language-specific
   (S) neurons of the fact, and how many of them also pass the threshold (en, target_true)
   for the same relation with the other dev subjects of that relation.  A neuron found
   for every subject encodes the relation ("capital of X"), not the fact.
2. **Damage by component and setting.**  Each MEMLA variant edits the record in English;
   the edited model is scored in all 12 languages:

   - ES: P(target_new) > P(target_true) on the edit prompt (length-normalised, paper B);
   - NS-margin: share of neighbourhood prompts where the neighbour's own answer still beats
     target_new (CounterFact's neighbourhood score);
   - NS-keep: share of the greedy neighbourhood continuation (8 tokens) the edit left
     unchanged (`memla.evaluate.metrics.keep_share`: common prefix over the longer one);
   - repeats: how often target_new occurs in the edited prompt's 12-token greedy
     continuation (en, `count_mentions`), and its n-gram entropy (`ngram_entropy`).

Lines go to ``OUT/diagnosis.jsonl`` (one per record × variant, resumable); the table of
means is printed and written to ``OUT/table.md``.  Only dev records are used.

    python benchmarks/locality_diagnosis.py --records 20 --out benchmarks/results/locality_diagnosis
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from memla import load_model
from memla.data import load_dataset, stratified_sample
from memla.editors import EditRequest, apply, get_editor
from memla.errors import EditError
from memla.evaluate import greedy_generate, score_targets
from memla.evaluate.metrics import count_mentions, keep_share, ngram_entropy
from memla.evaluate.runner import package_versions
from memla.langs import resolve_langs
from memla.neurons import knowledge_neurons

LANGS = resolve_langs("all")
VARIANTS = {  # name -> (method, config overrides)
    "memla": ("memla", {}),
    "w/o LSE (LIE only)": ("memla-wo-lse", {}),
    "w/o LIE (LSE only)": ("memla-wo-lie", {}),
    "lr 1e-3": ("memla", {"lr": 1e-3}),
    "stop P(new) > 0.5": ("memla", {"stop_prob": 0.5}),
    "c = 0.25": ("memla", {"scale_constant": 0.25}),
    "c = norm ratio": ("memla", {"scale": "norm_ratio"}),
}
CONTINUATION = 12
NEIGHBOUR_TOKENS = 8


def measure(model, tok, record, reference=None) -> dict:
    """ES, NS-margin and NS-keep per language and the en continuation of the edit prompt."""
    items, where = [], []
    for lt in LANGS:
        fact = record.edit[lt]
        items += [(fact.filled(), fact.target_new, lt), (fact.filled(), fact.target_true, lt)]
        where.append(("es", lt))
        for prompt, answer in zip(record.neighborhood_prompts[lt], record.neighborhood_answers[lt]):
            items += [(prompt, answer, lt), (prompt, fact.target_new, lt)]
            where.append(("margin", lt))
    scores = score_targets(model, tok, items)
    out: dict = {"es": {}, "margin": {}, "keep": {}}
    for i, (kind, lt) in enumerate(where):
        out[kind].setdefault(lt, []).append(float(scores[2 * i].mean > scores[2 * i + 1].mean))
    prompts = [(lt, p) for lt in LANGS for p in record.neighborhood_prompts[lt]]
    greedy = greedy_generate(model, tok, [p for _, p in prompts], [NEIGHBOUR_TOKENS] * len(prompts))
    out["neighbour_tokens"] = greedy
    if reference is not None:
        for (lt, _), now, before in zip(prompts, greedy, reference["neighbour_tokens"]):
            out["keep"].setdefault(lt, []).append(keep_share(now, before))
    en = record.edit["en"]
    cont = greedy_generate(model, tok, [en.filled()], [CONTINUATION])[0]
    text = tok.decode(cont)
    out["continuation"] = text
    out["repeats"] = count_mentions(text, en.target_new)
    out["entropy"] = ngram_entropy(cont)
    return out


def neuron_overlap(model, tok, record, pool, editor) -> dict:
    """How many of the fact's I / S neurons also fire for the relation with other subjects."""
    request = EditRequest.from_record(record, "en")
    _, independent, specific = editor.locate(model, tok, request)
    others = None
    for other in pool:
        fact = other.edit["en"]
        found = knowledge_neurons(model, tok, [fact.filled()], fact.target_true, lang="en", progress=False)
        others = found if others is None else others | found
    others = others if others is not None else type(independent)()
    return {"independent": len(independent), "specific": len(specific),
            "independent_shared": len(independent & others), "specific_shared": len(specific & others),
            "others": [o.example_id for o in pool]}


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def rescore(lines: list[dict], records: dict) -> None:
    """Recompute NS-keep and repeats of every line from its stored tokens and text with the library's
    definitions (lines written before `keep_share` / `count_mentions` existed used a position-wise share
    and a case-sensitive count)."""
    reference = {ln["record"]: ln for ln in lines if ln["variant"] == "unedited"}
    for ln in lines:
        if "neighbour_tokens" not in ln or ln["record"] not in reference or "skipped" in ln:
            continue
        prompts = [lt for lt in LANGS for _ in records[ln["record"]].neighborhood_prompts[lt]]
        keep: dict = {}
        for lt, now, before in zip(prompts, ln["neighbour_tokens"], reference[ln["record"]]["neighbour_tokens"]):
            keep.setdefault(lt, []).append(keep_share(now, before))
        ln["keep"] = keep if ln["variant"] != "unedited" else {}
        ln["repeats"] = count_mentions(ln["continuation"], records[ln["record"]].edit["en"].target_new)


def summarise(lines: list[dict]) -> str:
    rows = ["| variant | n | ES en | ES avg (11) | NS-margin en | NS-margin avg (11) | NS-keep en | NS-keep avg (11) "
            "| repeats of new (en, 12 tok) | n-gram entropy | steps |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in ["unedited", *VARIANTS]:
        got = [ln for ln in lines if ln["variant"] == variant and "skipped" not in ln]
        skipped = sum(1 for ln in lines if ln["variant"] == variant and "skipped" in ln)
        if not got:
            continue
        def cell(kind, lang):
            if lang == "en":
                return mean(mean(ln[kind].get("en", [])) for ln in got)
            return mean(mean(mean(ln[kind].get(lt, [])) for lt in LANGS if lt != "en") for ln in got)
        vals = [cell("es", "en"), cell("es", "avg"), cell("margin", "en"), cell("margin", "avg"),
                cell("keep", "en"), cell("keep", "avg")]
        fmt = ["–" if v is None else f"{100 * v:.1f}" for v in vals]
        steps = mean(ln.get("steps") for ln in got)
        rows.append(f"| {variant} | {len(got)}{f' ({skipped} skipped)' if skipped else ''} | " + " | ".join(fmt) + f" | {mean(ln['repeats'] for ln in got):.2f} | "
                    f"{mean(ln['entropy'] for ln in got):.2f} | {'–' if steps is None else f'{steps:.1f}'} |")
    overlaps = [ln for ln in lines if ln["variant"] == "neurons"]
    if overlaps:
        i = sum(o["independent"] for o in overlaps)
        s = sum(o["specific"] for o in overlaps)
        i_sh = sum(o["independent_shared"] for o in overlaps)
        s_sh = sum(o["specific_shared"] for o in overlaps)
        rows += ["", "| neurons (summed over records) | located | also found for other subjects of the relation | share |",
                 "|---|---:|---:|---:|",
                 f"| language-independent I | {i} | {i_sh} | {100 * i_sh / max(i, 1):.1f}% |",
                 f"| language-specific S (en) | {s} | {s_sh} | {100 * s_sh / max(s, 1):.1f}% |"]
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20, help="dev records besides the demo fact (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/locality_diagnosis")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "diagnosis.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    done = {(ln["record"], ln["variant"]) for ln in lines}
    (out / "config.json").write_text(json.dumps({
        "records": args.records, "seed": args.seed, "variants": VARIANTS, "langs": LANGS, "versions": package_versions(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "command": sys.argv}, indent=1))

    dev = load_dataset("mkeb-mini", split="dev")
    chosen = [dev[0], *(r for r in stratified_sample(dev, args.records, seed=args.seed) if r.example_id != dev[0].example_id)]
    chosen = chosen[: args.records + 1]
    model, tok = load_model()
    with path.open("a", encoding="utf-8") as f:
        def write(line):
            lines.append(line)
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()

        for n, record in enumerate(chosen):
            t0 = time.perf_counter()
            torch.manual_seed(args.seed)
            reference = measure(model, tok, record)
            if (record.example_id, "unedited") not in done:
                write({"record": record.example_id, "variant": "unedited", **reference})
            if (record.example_id, "neurons") not in done:
                pool = [r for r in dev if r.relation == record.relation and r.example_id != record.example_id]
                write({"record": record.example_id, "variant": "neurons",
                       **neuron_overlap(model, tok, record, pool, get_editor("memla"))})
            for variant, (method, overrides) in VARIANTS.items():
                if (record.example_id, variant) in done:
                    continue
                torch.manual_seed(args.seed)
                try:
                    result = get_editor(method, overrides).edit(model, tok, EditRequest.from_record(record, "en"))
                except EditError as err:  # e.g. w/o LSE when the fact has no language-independent neuron
                    write({"record": record.example_id, "variant": variant, "skipped": str(err)})
                    continue
                with apply(model, result):
                    got = measure(model, tok, record, reference)
                write({"record": record.example_id, "variant": variant, "steps": result.info.get("steps"), **got})
            print(f"[{n + 1}/{len(chosen)}] record {record.example_id} ({record.relation}) {time.perf_counter() - t0:.0f} s",
                  flush=True)
    rescore(lines, {r.example_id: r for r in dev})
    table = summarise(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
