"""Does a gated patch neuron carry an English edit into every language and spare the neighbours?

A feasibility probe for the step after `benchmarks/gate_probe.py` (dev records only; no editor of the
library is changed).  Per record, on the unedited default model, one neuron is added to the MLP of
``--layer`` (a forward hook: ``mlp(x) + gelu(g·x) · v`` at every position, before Gemma's
post-feedforward norm):

- ``g``, the gate: `memla.editors.patch.fit_gate` without a bias (Gemma's gate projection has none), fitted on
  the fact prompt in all 12 languages (fire; no answer of another language is used) against
  memla-local's relation anchors in all 12 languages and its everyday prompts (do not fire), scaled so
  that the fact prompts' mean pre-activation is ``--gain``;
- ``v``, the value: Adam on ``-log P(target_new | English prompt)`` through the patch (English only),
  plus ``--l2 ‖v‖²``.

The patched model is then scored as the benchmark scores an edit, in every language: ES (edit prompt:
``target_new`` beats ``target_true``), PS (paraphrases, the same comparison) and NS-margin (neighbourhood
prompts: the neighbour's answer still beats ``target_new``); the unedited model beside it.

    python benchmarks/patch_probe.py --records 16 --out benchmarks/results/patch_probe_dev16
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
from memla.devices import input_device
from memla.editors import EditRequest
from memla.editors.patch import PatchConfig, PatchEditor, fit_gate, mlp_inputs
from memla.evaluate import score_targets
from memla.evaluate.runner import package_versions
from memla.models import arch_spec
from memla.tokens import encode_pair


class Patch:
    """One extra neuron in a layer's MLP: ``out + gelu(x·g) · v`` (a forward hook on the MLP)."""

    def __init__(self, model, layer: int, gate: torch.Tensor, value: torch.Tensor):
        self.gate, self.value = gate, value  # (d_model,), (d_model,)
        self.module = model.get_submodule(arch_spec(model).path(arch_spec(model).mlp, layer))

    def hook(self, module, args, output):
        x = args[0]  # (B, T, d_model)
        fire = torch.nn.functional.gelu(x @ self.gate.to(x.dtype), approximate="tanh")  # (B, T)
        return output + fire[..., None] * self.value.to(output.dtype)  # (B, T, d_model)

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def train_value(model, tok, request: EditRequest, patch: Patch, steps: int, lr: float, l2: float) -> float:
    """Adam on ``v``: ``-mean log P(target_new | prompt) + l2 ‖v‖²`` (source language only); returns P(new)."""
    enc = encode_pair(tok, request.text, request.target_new, request.lang)
    ids = torch.tensor([enc.prompt_ids + enc.target_ids], device=input_device(model))  # (1, T)
    n = len(enc.target_ids)
    patch.value.requires_grad_(True)
    opt = torch.optim.Adam([patch.value], lr=lr)
    for _ in range(steps):
        logits = model(input_ids=ids).logits[0, -n - 1:-1].float()  # (n, V)
        logp = logits.log_softmax(-1).gather(1, ids[0, -n:, None]).mean()
        loss = -logp + l2 * patch.value.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    patch.value.requires_grad_(False)
    return float(logp.exp())


def scores(model, tok, record) -> dict[str, dict[str, list[float]]]:
    """Per language: ES, PS and NS-margin successes (1.0 / 0.0) of the model as it is."""
    items, where = [], []
    for lt, fact in record.edit.items():
        for kind, prompts in (("es", [fact.filled()]), ("ps", record.paraphrase_prompts.get(lt, []))):
            for prompt in prompts:
                items += [(prompt, fact.target_new, lt), (prompt, fact.target_true, lt)]
                where.append((kind, lt))
        for prompt, answer in zip(record.neighborhood_prompts.get(lt, []), record.neighborhood_answers.get(lt, [])):
            items += [(prompt, answer, lt), (prompt, fact.target_new, lt)]
            where.append(("margin", lt))
    got = score_targets(model, tok, items)
    out: dict[str, dict[str, list[float]]] = {"es": {}, "ps": {}, "margin": {}}
    for i, (kind, lt) in enumerate(where):
        out[kind].setdefault(lt, []).append(float(got[2 * i].mean > got[2 * i + 1].mean))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=16, help="dev records, spread over the relations (default: %(default)s)")
    ap.add_argument("--anchors", type=int, default=16, help="nearest pool subjects per language (default: %(default)s)")
    ap.add_argument("--layer", type=int, default=12, help="layer whose MLP gets the neuron (default: %(default)s)")
    ap.add_argument("--gain", type=float, default=4.0, help="fact prompts' mean gate pre-activation (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=30, help="Adam steps on v (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=0.5, help="Adam's learning rate on v (default: %(default)s)")
    ap.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on v (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/patch_probe_dev16")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**vars(args), "versions": package_versions(),
                                                 "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                                                 "command": sys.argv}, indent=1))
    torch.manual_seed(args.seed)
    model, tok = load_model()
    for p in model.parameters():
        p.requires_grad_(False)
    editor = PatchEditor(PatchConfig(anchor_subjects=args.anchors))  # its `prompts`: what the gate is fitted on
    records = stratified_sample(load_dataset("mkeb-mini", split="dev"), args.records, seed=args.seed)
    lines = []
    for n, record in enumerate(records):
        request = EditRequest.from_record(record, "en")
        pos, neg = editor.prompts(model, tok, request)  # the fact prompt per language; relation anchors, everyday prompts
        x = mlp_inputs(model, tok, pos + neg, [args.layer])[args.layer]  # (N, d_model)
        y = torch.tensor([1.0] * len(pos) + [0.0] * len(neg), dtype=torch.float64)
        gate, _ = fit_gate(x, y, 1e-2, bias=False)
        gate = gate * args.gain / (x[: len(pos)] @ gate).mean()  # (d_model,)
        patch = Patch(model, args.layer, gate.float(), torch.zeros(x.shape[1]))
        before = scores(model, tok, record)
        with patch:
            p_new = train_value(model, tok, request, patch, args.steps, args.lr, args.l2)
            after = scores(model, tok, record)
        lines.append({"record": record.example_id, "p_new": p_new, "before": before, "after": after})
        print(f"[{n + 1}/{len(records)}] record {record.example_id} ({record.relation}) P(new) {p_new:.2f}", flush=True)
    (out / "probe.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))

    def mean(state: str, kind: str, lt: str | None) -> float:
        cells = [v for line in lines for k, v in line[state][kind].items() if (k == lt if lt else k != "en")]
        per = [100 * sum(c) / len(c) for c in cells if c]
        return sum(per) / len(per)

    table = [f"Gated patch neuron at layer {args.layer}, edited in English (mean over {len(records)} dev records; "
             f"avg = mean of the 11 other languages; `{' '.join(['python', *sys.argv])}`), %", "",
             "| model | ES en / avg | PS en / avg | NS-margin en / avg |", "|---|---|---|---|"]
    for state in ("before", "after"):
        table.append(f"| {'unedited' if state == 'before' else 'patched'} | "
                     + " | ".join(f"{mean(state, kind, 'en'):.1f} / {mean(state, kind, None):.1f}"
                                  for kind in ("es", "ps", "margin")) + " |")
    text = "\n".join(table)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
