"""How much room does a linear update have to move a fact while sparing the same relation's other subjects?

memla-local's update is linear in the down-projection input ``k`` (``Δ = ΔW k``), so once the keys
``k'`` of the same template filled with other subjects are preserved (``ΔW k' = 0``), only the part of
the fact's key outside their span can still move: ``ΔW k = ΔW P⊥ k``.  For dev records, each
language and each layer, this prints the mean share ``‖P⊥ k‖ / ‖k‖`` of the fact prompt's
last-token key, ``P⊥`` the projection onto the orthogonal complement of the keys of the edit's template
filled with the ``--anchors`` pool subjects nearest to the edited one (memla-local's relation
anchors, `memla.editors.memla_local.nearest_subjects`), in that language.  Near 0: no linear update
can move the fact there without moving its neighbours (the key alignment's transfer and the other
languages' locality then trade point for point).  Only dev records are used.

    python benchmarks/key_room.py --records 16 --out benchmarks/results/key_room_dev16
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
from memla.editors.memla_local import last_token_keys, nearest_subjects, template_of
from memla.evaluate.runner import package_versions
from memla.langs import resolve_langs
from memla.models import num_layers
from memla.tokens import encode_text


def room(keys: torch.Tensor) -> float:
    """``‖P⊥ k_0‖ / ‖k_0‖`` for ``keys`` ``(1 + n, d_ff)``: row 0 the fact's key, the others the neighbours'."""
    keys = keys.double()
    basis, _ = torch.linalg.qr(keys[1:].T)  # (d_ff, n): orthonormal basis of the neighbours' keys
    fact = keys[0]  # (d_ff,)
    outside = fact - basis @ (basis.T @ fact)  # (d_ff,)
    return float(outside.norm() / fact.norm().clamp_min(1e-12))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=16, help="dev records, spread over the relations (default: %(default)s)")
    ap.add_argument("--anchors", type=int, default=16, help="nearest pool subjects per language (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/key_room_dev16")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({
        "records": args.records, "anchors": args.anchors, "seed": args.seed, "versions": package_versions(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "command": sys.argv}, indent=1))

    model, tok = load_model()
    layers = range(num_layers(model))
    langs = resolve_langs("all")
    records = stratified_sample(load_dataset("mkeb-mini", split="dev"), args.records, seed=args.seed)
    shares: dict[str, list[list[float]]] = {k: [] for k in langs}  # per language: per record, per layer
    for n, record in enumerate(records):
        request = EditRequest.from_record(record, "en")
        neighbours = nearest_subjects(model, tok, request.subject, "en", args.anchors)
        for k in langs:
            fact = request.in_lang(k)
            template = template_of(fact)
            if template is None:
                continue
            texts = [fact.text, *(template.replace("{}", entry[k]) for entry in neighbours if k in entry)]
            keys = last_token_keys(model, tok, [encode_text(tok, t) for t in texts], layers)  # (1 + n, d_ff) per layer
            shares[k].append([room(keys[layer]) for layer in layers])
        print(f"[{n + 1}/{len(records)}] record {record.example_id} ({record.relation})", flush=True)

    mean = {k: torch.tensor(v).mean(0).tolist() for k, v in shares.items() if v}
    lines = [f"Share of the fact's last-token key outside the span of {args.anchors} neighbours' keys "
             f"(mean over {len(records)} dev records; `{' '.join(['python', *sys.argv])}`)", "",
             "| layer | " + " | ".join(mean) + " |", "|---|" + "---|" * len(mean)]
    lines += [f"| {layer} | " + " | ".join(f"{mean[k][layer]:.2f}" for k in mean) + " |" for layer in layers]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "shares.json").write_text(json.dumps({"records": [r.example_id for r in records], "shares": shares}))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
