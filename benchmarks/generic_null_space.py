"""Would an AlphaEdit-style null space of *generic* keys make MEMLA local?  A diagnosis (issue 13, §3).

AlphaEdit projects the update onto the null space of ``K₀K₀ᵀ``, the keys (down-projection
inputs) of generic text, so that ``Δ k ≈ 0`` wherever generic text puts its keys.  Here
``K₀K₀ᵀ ∝ C``, the second moment `memla stats` collects (the builtin corpus, format 2:
model-sampled text).  For its eigenvectors with eigenvalue above ``τ · λ_max`` (the preserved
space ``V``), the table gives the share of a key's energy the projection leaves free,
``‖(I − V Vᵀ) k‖² / ‖k‖²``, mean over keys, for

- the edit prompt's last token in English (what the edit must change),
- the same prompt in the 11 other languages (what should transfer),
- the English neighbourhood prompts' last token (where NS is read) and all their tokens.

If the edit key kept more energy outside ``V`` than the neighbours' keys, the projection
would favour locality; with equal shares it only shrinks every update alike.  Dev records only.

    python benchmarks/generic_null_space.py --records 16 --out benchmarks/results/generic_null_space
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
from memla.editors.kv.stats import layer_stats
from memla.evaluate.runner import package_versions
from memla.hooks import trace
from memla.langs import LANGS
from memla.models import arch_spec, num_layers
from memla.tokens import encode_text

TAUS = (1e-1, 1e-2, 1e-3, 1e-4)


def keys(model, tok, text: str, names: dict[int, str]) -> dict[int, torch.Tensor]:
    """Down-projection inputs of ``text`` per layer, ``(T - 1, d_ff)`` (the BOS key left out, as in C)."""
    ids = torch.tensor([encode_text(tok, text)])  # (1, T)
    with torch.no_grad(), trace(model, list(names.values()), retain_input=True, retain_output=False, stop=True) as tr:
        model(input_ids=ids)  # ends after the last traced layer: no LM head
    return {layer: tr[name].input[0, 1:].float() for layer, name in names.items()}


def free_share(k: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``‖(I − V Vᵀ) k‖² / ‖k‖²`` per row of ``k`` (N, d_ff), for an orthonormal ``basis`` V (d_ff, p)."""
    k = k.double()
    rest = k - (k @ basis) @ basis.T  # (N, d_ff)
    return rest.pow(2).sum(-1) / k.pow(2).sum(-1)  # (N,)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=16, help="stratified dev records (default: %(default)s)")
    ap.add_argument("--layers", default="4,7,10,12,15,17",
                    help="layers (default: %(default)s, where MEMLA's neurons lie on the default model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/generic_null_space")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model, tok = load_model()
    layers = [int(x) for x in args.layers.split(",")]
    if any(not 0 <= layer < num_layers(model) for layer in layers):
        ap.error(f"--layers must lie in 0..{num_layers(model) - 1}")
    spec = arch_spec(model)
    names = {layer: spec.path(spec.mlp_down, layer) for layer in layers}
    stats = layer_stats(model, tok, layers)
    records = stratified_sample(load_dataset("mkeb-mini", split="dev"), args.records, seed=args.seed)

    groups = {
        "edit en (last)": [keys(model, tok, r.edit["en"].filled(), names) for r in records],
        "edit 11 others (last)": [keys(model, tok, r.edit[lang].filled(), names) for r in records for lang in LANGS if lang != "en"],
        "neighbours en (last)": [keys(model, tok, p, names) for r in records for p in r.neighborhood_prompts["en"]],
    }
    rows = []
    for layer in layers:
        ev, vecs = torch.linalg.eigh(stats[layer].mom2.double())  # ascending
        for tau in TAUS:
            basis = vecs[:, ev > tau * ev[-1]]  # (d_ff, p)
            row = {"layer": layer, "tau": tau, "dims": basis.shape[1]}
            for label, got in groups.items():
                row[label] = torch.cat([free_share(k[layer][-1:], basis) for k in got]).mean().item()
            row["neighbours en (all tokens)"] = torch.cat(
                [free_share(k[layer], basis) for k in groups["neighbours en (last)"]]).mean().item()
            rows.append(row)
    columns = [c for c in rows[0] if c not in ("layer", "tau", "dims")]
    table = ["| layer | τ | preserved dims | " + " | ".join(columns) + " |",
             "|---:|---:|---:|" + "---:|" * len(columns)]
    table += [f"| {r['layer']} | {r['tau']:.0e} | {r['dims']} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |"
              for r in rows]
    text = "\n".join(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps({
        "records": [r.example_id for r in records], "layers": layers, "taus": TAUS, "seed": args.seed,
        "stats": {layer: {"file": stats[layer].path.name, "count": stats[layer].count}
                  for layer in layers},
        "versions": package_versions(), "platform": platform.platform(), "command": sys.argv}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
