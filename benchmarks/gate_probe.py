"""Could a gated (non-linear) edit tell the fact from its neighbours where a linear one cannot?

`benchmarks/key_room.py` shows that a fact prompt's last-token key is mostly the key its template has
with any subject, so a linear update that moves it in another language moves that language's
neighbours too.  A patch neuron (T-Patcher) acts only where its gate fires, ``gelu(g·x + b) > 0``, ``x``
the MLP's input at the last token.  This probe asks whether such a gate can be fitted from what an
edit has, and generalise to what the benchmark scores:

- fitted (logistic regression, classes weighted alike) on the fact prompt in every language
  (positive: the prompts ``align_langs`` already uses, no answer of any language) against
  memla-local's relation anchors in every language (the template with the ``--anchors`` nearest pool
  subjects) and its everyday prompts (negative);
- scored on the record's paraphrase prompts (PS; should fire) and neighbourhood prompts (NS; should
  not), in every language, which the fit never sees.

Per layer it prints the share of paraphrase prompts the gate fires on and the share of neighbourhood
prompts it fires on (mean over dev records and languages).  Only dev records are used.

    python benchmarks/gate_probe.py --records 16 --out benchmarks/results/gate_probe_dev16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from memla import load_model
from memla.data import load_dataset, stratified_sample
from memla.editors import EditRequest
from memla.editors.patch import PatchConfig, PatchEditor, fit_gate, mlp_inputs
from memla.evaluate.runner import package_versions
from memla.langs import resolve_langs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=16, help="dev records, spread over the relations (default: %(default)s)")
    ap.add_argument("--anchors", type=int, default=16, help="nearest pool subjects per language (default: %(default)s)")
    ap.add_argument("--layers", default="4,8,12,15", help="layers whose MLP input the gate reads (default: %(default)s)")
    ap.add_argument("--l2", type=float, default=1e-2, help="L2 penalty of the fit (default: %(default)s)")
    ap.add_argument("--no-bias", dest="bias", action="store_false",
                    help="fit the gate without a bias, as a repurposed neuron of Gemma's bias-free gate projection")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/gate_probe_dev16")
    args = ap.parse_args()
    layers = [int(v) for v in args.layers.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**vars(args), "versions": package_versions(),
                                                 "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                                                 "command": sys.argv}, indent=1))
    torch.manual_seed(args.seed)
    model, tok = load_model()
    langs = resolve_langs("all")
    editor = PatchEditor(PatchConfig(anchor_subjects=args.anchors))  # its `prompts`: what the gate is fitted on
    records = stratified_sample(load_dataset("mkeb-mini", split="dev"), args.records, seed=args.seed)
    fired: dict[int, dict[str, list[float]]] = {layer: {"ps": [], "ns": [], "fit_pos": [], "fit_neg": []} for layer in layers}
    for n, record in enumerate(records):
        request = EditRequest.from_record(record, "en")
        pos, neg = editor.prompts(model, tok, request)  # the fact prompt per language; relation anchors, everyday prompts
        ps = [p for k in langs for p in record.paraphrase_prompts.get(k, [])]
        ns = [p for k in langs for p in record.neighborhood_prompts.get(k, [])]
        texts = pos + neg + ps + ns
        x = mlp_inputs(model, tok, texts, layers)
        y = torch.tensor([1.0] * len(pos) + [0.0] * len(neg), dtype=torch.float64)
        cut = [len(pos), len(pos) + len(neg), len(pos) + len(neg) + len(ps)]
        for layer in layers:
            g, b = fit_gate(x[layer][: cut[1]], y, args.l2, bias=args.bias)
            fires = (x[layer] @ g + b > 0).double()  # (N,)
            fired[layer]["fit_pos"].append(float(fires[: cut[0]].mean()))
            fired[layer]["fit_neg"].append(float(fires[cut[0]: cut[1]].mean()))
            fired[layer]["ps"].append(float(fires[cut[1]: cut[2]].mean()))
            fired[layer]["ns"].append(float(fires[cut[2]:].mean()))
        print(f"[{n + 1}/{len(records)}] record {record.example_id} ({record.relation})", flush=True)

    lines = [f"Share of prompts a fitted gate fires on (mean over {len(records)} dev records; all 12 languages pooled; "
             f"`{' '.join(['python', *sys.argv])}`)", "",
             "| layer | fact prompts (fit) | relation + everyday anchors (fit) | paraphrases (PS, held out) | "
             "neighbourhood (NS, held out) |", "|---|---|---|---|---|"]
    for layer in layers:
        m = {key: 100 * sum(v) / len(v) for key, v in fired[layer].items()}
        lines.append(f"| {layer} | {m['fit_pos']:.1f} | {m['fit_neg']:.1f} | {m['ps']:.1f} | {m['ns']:.1f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "fired.json").write_text(json.dumps({"records": [r.example_id for r in records], "fired": fired}))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
