"""The plain reference implementation of integrated-gradients attribution.

It works the way the original knowledge-neurons code does: for each layer, the
whole teacher-forced sequence is run once per batch of interpolation steps, the
activation at the predicting position is replaced by the scaled one through a
hook, all logits are computed, and P(target) is differentiated with autograd.
It is slow on purpose (no KV cache, no shortcuts) and exists to check the fast
path (`memla.neurons.fast`) and to benchmark it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memla.hooks import trace
from memla.models import arch_spec

from ._common import Example, alphas, baseline_acts, point_module, replace_rows


def attribute_reference(
    model: nn.Module,
    tokenizer,
    example: Example,
    layers: list[int],
    *,
    steps: int,
    baseline: str,
    point: str,
    progress=None,
) -> Tensor:
    """IG scores (Eq. 2) by full-sequence forwards with full logits, one layer at a time.

    Args:
        model, tokenizer: the model and its tokenizer.
        example: the tokenised prompt and target.
        layers: the layers to attribute, ascending.
        steps, baseline, point: as in `memla.neurons.attribute`.
        progress: an optional callable, called once per (target token, layer).

    Returns:
        ``(L, d_ff)`` float32 scores on the CPU, summed over target tokens, averaged over baseline paths.
    """
    spec = arch_spec(model)
    alpha = alphas(steps)  # (steps,)
    bases = baseline_acts(model, tokenizer, example, layers, point, baseline)  # (L, m, P, d_ff), input device
    scores = torch.zeros(len(layers), bases.shape[-1], dtype=torch.float32, device=bases.device)  # (L, d_ff)
    for j, target in enumerate(example.targets):
        pos = example.position(j)
        ids = torch.tensor([example.ids[: pos + 1]] * steps, device=bases.device)  # (steps, T)
        for li, layer in enumerate(layers):
            name = point_module(spec, point, layer)
            for base in bases[li, j]:
                clean, grads = _path_grads(model, ids, name, point, base, alpha, target)
                ig = (clean - base).float() * grads.float().mean(dim=0)  # (d_ff,)
                scores[li] += ig / bases.shape[2]
            if progress is not None:
                progress()
    return scores.cpu()


def _path_grads(
    model: nn.Module, ids: Tensor, name: str, point: str, base: Tensor, alpha: Tensor, target: int
) -> tuple[Tensor, Tensor]:
    """The clean activation x and dP(target)/dx' at x' = base + alpha_k (x - base), every step k.

    Returns:
        ``(x, grads)``: ``(d_ff,)`` and ``(steps, d_ff)``, on ``base``'s device.
    """
    seen = {}

    def put(x, _name):  # x: (steps, T, d_ff), the clean activations of this layer, on its device
        clean = x[0, -1].detach()  # (d_ff,)
        start = base.to(x.device)  # (d_ff,)
        scaled = start.double() + alpha[:, None].to(x.device) * (clean - start).double()  # (steps, d_ff)
        seen["x"] = clean
        seen["leaf"] = scaled.to(x.dtype).requires_grad_(True)
        return replace_rows(x, seen["leaf"], position=-1)  # (steps, T, d_ff)

    kwargs = {"edit_input": put} if point == "down_in" else {"edit": put}
    with torch.enable_grad(), trace(model, name, retain_output=False, **kwargs):
        logits = model(input_ids=ids, use_cache=False).logits  # (steps, T, V)
        prob = torch.softmax(logits[:, -1].float(), dim=-1)[:, target]  # (steps,)
        (grad,) = torch.autograd.grad(prob.sum(), seen["leaf"])
    return seen["x"].to(base.device), grad.to(base.device)
