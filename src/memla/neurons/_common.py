"""Pieces shared by the fast and the reference attribution paths.

Tokenisation of ``prompt + sep + target`` into an `Example` (with the input
checks), option checks, the IG interpolation points (Eq. 2), the ``sig_mean``
baselines, and the LM head's probability and gradient (Eq. 1), computed by
hand in vocabulary blocks for the fast path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memla.devices import input_device
from memla.errors import DataError
from memla.hooks import trace
from memla.langs import sep
from memla.models import ArchSpec, arch_spec, get_module, mlp_dims, num_layers
from memla.tokens import encode_pair

log = logging.getLogger(__name__)

POINTS = ("down_in", "mlp_in")
BASELINES = ("zero", "sig_mean")


@dataclass(frozen=True)
class Example:
    """A prompt and its teacher-forced target, tokenised.

    Attributes:
        ids: prompt ids (with the tokenizer's special tokens, e.g. BOS) followed by the target ids.
        n_prompt: number of prompt ids.
        special: positions of special tokens (kept, never replaced by the ``sig_mean`` baseline).
    """

    ids: tuple[int, ...]
    n_prompt: int
    special: frozenset[int]

    @property
    def targets(self) -> tuple[int, ...]:
        """The target ids."""
        return self.ids[self.n_prompt :]

    def position(self, j: int) -> int:
        """Position whose next-token distribution predicts target token ``j`` (teacher forcing)."""
        return self.n_prompt - 1 + j


def separator(lang: str | None) -> str:
    """The prompt/target separator of the join rule (``memla.langs.sep``); ``" "`` when ``lang`` is None."""
    if lang is None:
        return " "
    return sep(lang)


def encode(tokenizer, prompt: str, target: str, *, lang: str | None, max_len: int | None) -> Example:
    """Tokenise ``prompt + sep + target``; the target ids are the suffix after the prompt's ids.

    When the joint tokenisation does not start with the prompt's own ids (a
    token merged across the boundary) the target is tokenised alone, without
    special tokens, and appended; a warning says so.

    Raises:
        DataError: empty prompt or target, or prompt + target longer than ``max_len``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError("empty prompt: knowledge-neuron attribution needs a non-empty prompt")
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"empty target for prompt {prompt!r}")
    # The evaluator's join-rule split; with no language, join with a space (as `separator` does).
    pair = encode_pair(tokenizer, prompt, target, lang if lang is not None else "en")
    if not pair.clean:
        log.warning("prompt %r and target %r do not split cleanly; tokenising the target alone", prompt, target)
    prompt_ids, target_ids = list(pair.prompt_ids), list(pair.target_ids)
    if not prompt_ids:
        raise DataError(f"prompt {prompt!r} tokenises to nothing")
    if not target_ids:
        raise DataError(f"target {target!r} tokenises to nothing")
    ids = tuple(prompt_ids + target_ids)
    if max_len is not None and len(ids) > max_len:
        raise DataError(
            f"prompt + target is {len(ids)} tokens, longer than the model's context of {max_len} tokens"
        )
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    special = frozenset(i for i, t in enumerate(prompt_ids) if t in specials)
    return Example(ids=ids, n_prompt=len(prompt_ids), special=special)


def alphas(steps: int) -> Tensor:
    """IG interpolation points of Eq. 2: the right Riemann sum ``k / steps``, ``k = 1..steps``.

    The end point ``alpha = 1`` (the actual activation) is included, ``alpha = 0``
    (the baseline) is not, as in Dai et al. (2022) and the MEMLA paper.
    """
    return torch.arange(1, steps + 1, dtype=torch.float64) / steps  # (steps,)


def check_options(model: nn.Module, *, layers, steps: int, baseline: str, point: str) -> list[int]:
    """Validate the attribution options; return the sorted, de-duplicated layer list."""
    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    n = num_layers(model)
    chosen = list(range(n)) if layers is None else sorted({int(layer) for layer in layers})
    bad = [layer for layer in chosen if not 0 <= layer < n]
    if bad or not chosen:
        raise ValueError(f"layers must be in 0..{n - 1}, got {layers!r}")
    return chosen


def point_module(spec: ArchSpec, point: str, layer: int) -> str:
    """Module whose input (``down_in``) or output (``mlp_in``) is the attributed activation."""
    return spec.path(spec.mlp_down if point == "down_in" else spec.mlp_in[0], layer)


def replace_rows(x: Tensor, rows: Tensor, *, position: int) -> Tensor:
    """Return ``x`` with ``x[-len(rows):, position]`` replaced by ``rows`` (keeps the graph to ``rows``).

    ``x`` is ``(B, T, d_ff)`` (on its layer's device); ``rows`` is ``(n, d_ff)`` with ``n <= B``,
    moved to ``x``'s device and dtype.
    """
    n = rows.shape[0]
    pos = position % x.shape[1]
    new = torch.cat([x[-n:, :pos], rows[:, None].to(x.device, x.dtype), x[-n:, pos + 1 :]], dim=1)  # (n, T, d_ff)
    return torch.cat([x[:-n], new], dim=0) if n < x.shape[0] else new  # (B, T, d_ff)


def replacement_token(tokenizer) -> int:
    """EOS, else PAD: the token that replaces one prompt token in a ``sig_mean`` baseline."""
    for name in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise DataError("baseline 'sig_mean' needs a tokenizer with an EOS or PAD token")


@torch.no_grad()
def baseline_acts(
    model: nn.Module, tokenizer, example: Example, layers: list[int], point: str, baseline: str
) -> Tensor:
    """Baseline activations ``x'`` of Eq. 2 for every layer, target token and path.

    ``zero``: one all-zero path (Dai et al.).  ``sig_mean`` (Chen et al., AMIG): for
    each prompt position that is not a special token, that token is replaced by
    EOS (or PAD) and the activation at the predicting position is taken; one path
    per replaced position, averaged later.

    Returns:
        ``(L, m, P, d_ff)`` in the model's dtype on its input device, ``P`` paths (1 for ``zero``).
    """
    device = input_device(model)
    if baseline == "zero":
        dtype = next(model.parameters()).dtype
        return torch.zeros(len(layers), len(example.targets), 1, mlp_dims(model)[1], dtype=dtype,
                           device=device)  # (L, m, 1, d_ff)
    spec = arch_spec(model)
    token = replacement_token(tokenizer)
    replaced = [i for i in range(example.n_prompt) if i not in example.special]
    if not replaced:
        raise DataError("baseline 'sig_mean' needs at least one non-special prompt token")
    names = [point_module(spec, point, layer) for layer in layers]
    out = []
    for j in range(len(example.targets)):
        pos = example.position(j)
        prefix = list(example.ids[: pos + 1])
        rows = [prefix[:i] + [token] + prefix[i + 1:] for i in replaced]  # path p: prompt token replaced[p] swapped
        ids = torch.tensor(rows, device=device)  # (P, T)
        with trace(model, names, retain_input=point == "down_in", retain_output=point == "mlp_in",
                   stop=True, detach=True) as tr:
            model(input_ids=ids, use_cache=False)
        field = "input" if point == "down_in" else "output"
        out.append(torch.stack([getattr(tr[n], field)[:, -1].to(device) for n in names]))  # (L, P, d_ff)
    return torch.stack(out, dim=1)  # (L, m, P, d_ff)


class Head:
    """The LM head as P(target) and dP/dh for a batch of final hidden states (Eq. 1).

    Built once per public call: holds the head weight and the Gemma 2 final
    logit soft-capping.  The forward and the backward of the 262k-wide head are
    two matrix products per block of ``block`` vocabulary entries (memory
    ``max_rows × block`` floats, not ``B × V``), over the rows that need them.

    ``dtype`` (e.g. bf16) exists for the benchmark only and is not offered by
    the public API: on the default model a bf16 head changed thresholded neuron
    sets (logits and backward in bf16: 4 of 5 prompts at threshold 0.1; only the
    backward product in bf16: 1 of 5 prompts at 0.1 and 0.2), so fp32 stays.
    """

    def __init__(self, model: nn.Module, *, dtype: torch.dtype | None = None, max_rows: int = 512,
                 block: int = 32768):
        lm_head = get_module(model, arch_spec(model).lm_head)
        self.weight = lm_head.weight.detach()  # (V, d)
        if dtype is not None and dtype != self.weight.dtype:
            self.weight = self.weight.to(dtype)
        self.back_weight = self.weight  # (V, d), the weight of the backward product p @ W
        self.bias = None if getattr(lm_head, "bias", None) is None else lm_head.bias.detach().float()  # (V,)
        self.cap = getattr(model.config, "final_logit_softcapping", None)
        self.max_rows = max(1, int(max_rows))
        self.block = max(1, int(block))

    def __call__(self, h: Tensor, target: int) -> tuple[Tensor, Tensor]:
        """P(target | h) and its gradient wrt ``h``.

        With ``z = W h`` (soft-capped for Gemma 2), ``p = softmax(z)`` and
        ``P = p[target]``: ``dP/dh = P (W[target] - p W)``.  The vocabulary is
        processed in blocks with an online softmax: each block's logits are
        exponentiated while still in cache and multiplied back by the same
        block of ``W``, so the full ``(B, V)`` logits never exist.

        Args:
            h: final hidden states after the final norm, ``(B, d)``.
            target: the target token id.

        Returns:
            ``(prob, grad)``: ``(B,)`` float32 on the head's device and ``(B, d)`` in ``h``'s
            dtype and device.
        """
        probs, grads = [], []
        for start in range(0, h.shape[0], self.max_rows):
            p, g = self._rows(h[start : start + self.max_rows].detach(), target)
            probs.append(p)
            grads.append(g)
        return torch.cat(probs), torch.cat(grads).to(h.device, h.dtype)

    def _rows(self, h: Tensor, target: int) -> tuple[Tensor, Tensor]:
        w, wb = self.weight, self.back_weight  # (V, d)
        x = h.to(w.device, w.dtype)  # (B, d): the final norm and the head may sit on different devices
        maxes, sums, accs = [], [], []
        for start in range(0, w.shape[0], self.block):
            stop = min(start + self.block, w.shape[0])
            z = (x @ w[start:stop].T).float()  # (B, v)
            if self.bias is not None:
                z += self.bias[start:stop]
            if self.cap:
                z.div_(self.cap).tanh_()
                slope = 1 - z.square()  # (B, v): d(cap * tanh(u / cap)) / du
                z.mul_(self.cap)
            if start <= target < stop:
                z_t = z[:, target - start].clone()  # (B,)
                slope_t = slope[:, target - start].clone() if self.cap else None  # (B,)
            m = z.amax(dim=-1, keepdim=True)  # (B, 1)
            z.sub_(m).exp_()  # unnormalised block probabilities
            sums.append(z.sum(dim=-1))  # (B,)
            maxes.append(m[:, 0])
            if self.cap:
                z.mul_(slope)
            accs.append((z.to(wb.dtype) @ wb[start:stop]).float())  # (B, d)
        m = torch.stack(maxes)  # (nb, B)
        top = m.max(dim=0).values  # (B,)
        scale = torch.exp(m - top)  # (nb, B)
        total = (scale * torch.stack(sums)).sum(dim=0)  # (B,): the softmax normaliser / exp(top)
        pw = (scale[:, :, None] * torch.stack(accs)).sum(dim=0) / total[:, None]  # (B, d): E_p[W] (capped: E_p[slope W])
        prob = torch.exp(z_t - top) / total  # (B,)
        w_t = w[target].float()[None]  # (1, d)
        if self.cap:
            w_t = w_t * slope_t[:, None]  # (B, d)
        return prob, prob[:, None] * (w_t - pw)  # (B,), (B, d)
