"""Optimising v*: the vectors that, added to module outputs at the subject's last token, make
the model predict ``target_new`` (ROME Eq. 4, MEMIT Eq. 16, PMET Eq. 9).

`optimise_targets` minimises ``L(δ) = NLL(target_new | prefix_j + prompt) + kl_factor ·
KL("{} is a") + weight_decay · ‖δ‖ / ‖v₀‖²`` with Adam, ‖δ‖ clamped to
``clamp_norm_factor · ‖v₀‖`` (the reference code's exact loss, early stop at
``loss < stop_loss``).  Speed: positions before the subject's last token do not depend on
δ, so `TargetRunner` computes their KV cache once and every step runs only the suffix;
only the rows and positions that the loss reads go through the LM head (`head_logits`;
the final norm is traced, the forward stops there).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from memla.devices import input_device, module_device
from memla.editors.kv.keys import Row
from memla.hooks import output_tensor, trace
from memla.models import arch_spec, get_module
from memla.tokens import accepts_position_ids, left_pad, pad_id, right_pad


@dataclass
class TargetResult:
    """Outcome of `optimise_targets`.

    Attributes:
        init: per site, the module output at the bare prompt's subject token before editing (v₀).
        delta: per site, the optimised δ (target = init + delta).
        loss, p_new: per step, the total loss and the mean P(target_new) over the rewriting rows.
    """

    init: dict[str, Tensor]
    delta: dict[str, Tensor]
    loss: list[float] = field(default_factory=list)
    p_new: list[float] = field(default_factory=list)


class TargetRunner:
    """Forward passes over the rows with δ added at each row's subject token.

    When every row's subject token has a prefix before it, the prefix KV cache is computed
    once (left padding) and each call runs only the suffix (right padding), so that δ sits
    at suffix column 0; otherwise whole rows run with δ at each row's own column.
    """

    def __init__(self, model: nn.Module, tokenizer, rows: Sequence[Row]):
        self.model = model
        self.device = input_device(model)
        pad = pad_id(tokenizer)
        self.split = [r.pos for r in rows] if min(r.pos for r in rows) >= 1 else [0] * len(rows)
        self.cache = None
        extra = {}
        if any(self.split):
            heads = [r.ids[:s] for r, s in zip(rows, self.split)]
            ids, self.head_mask, pos = left_pad(heads, pad_id=pad, device=self.device)  # (B, H)
            self.cache = DynamicCache(config=model.config)
            if accepts_position_ids(model):
                extra["position_ids"] = pos
            with torch.no_grad():
                with trace(model, [arch_spec(model).final_norm], retain_output=False, stop=True):
                    model(input_ids=ids, attention_mask=self.head_mask, cache=self.cache, use_cache=True, **extra)
        tails = [r.ids[s:] for r, s in zip(rows, self.split)]
        self.ids, self.mask = right_pad(tails, pad_id=pad, device=self.device)  # (B, T)
        B, T = self.ids.shape
        self.onehot = torch.zeros(B, T, 1, device=self.device)  # (B, T, 1)
        for i, (r, s) in enumerate(zip(rows, self.split)):
            self.onehot[i, r.pos - s] = 1.0
        head_len = torch.tensor(self.split, device=self.device)[:, None]  # (B, 1)
        self.position_ids = head_len + torch.arange(T, device=self.device)[None]  # (B, T)
        self.full_mask = self.mask if self.cache is None else torch.cat([self.head_mask, self.mask], dim=1)
        self._onehots = {self.device: self.onehot}

    def onehot_on(self, device: torch.device) -> Tensor:
        """The subject-token indicator ``(B, T, 1)`` on ``device`` (a site's layer), copied once per device."""
        if device not in self._onehots:
            self._onehots[device] = self.onehot.to(device)
        return self._onehots[device]

    def _fresh_cache(self) -> DynamicCache:
        # Cache layers replace (never modify) their tensors on update, so shallow copies
        # of the prefix cache are independent: no tensor is copied.
        fresh = copy.copy(self.cache)
        fresh.layers = [copy.copy(layer) for layer in self.cache.layers]
        return fresh

    def column(self, row: int, position: int) -> int:
        """Column in the suffix batch of absolute ``position`` of ``row``."""
        return position - self.split[row]

    def hidden(self, sites: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Final-norm output ``(B, T, d_model)`` with ``δ_site`` added at the subject tokens,
        and each site's output ``(B, T, d)`` (after adding δ)."""
        spec = arch_spec(self.model)

        def add(output, name):
            if name not in sites:
                return output
            h = output_tensor(output)  # (B, T, d), on the site's device
            h = h + self.onehot_on(h.device).to(h.dtype) * sites[name].to(h.dtype)  # (B, T, d)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        kwargs = dict(input_ids=self.ids, attention_mask=self.full_mask)
        if self.cache is not None:
            kwargs.update(cache=self._fresh_cache(), use_cache=True)
        if accepts_position_ids(self.model):
            kwargs["position_ids"] = self.position_ids
        with trace(self.model, [*sites, spec.final_norm], edit=add, stop=True) as tr:
            self.model(**kwargs)
        return output_tensor(tr[spec.final_norm].output), {s: output_tensor(tr[s].output) for s in sites}


# The low-precision copy of an LM head, kept while its module lives and only for the latest head used
# (one copy at a time: for Gemma 3 270M it is 168M values); the key in the value tells a changed weight.
_HEAD_COPY: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Tensor]] = weakref.WeakKeyDictionary()


def _head_weight(head: nn.Module, dtype: torch.dtype) -> Tensor:
    w = head.weight
    if w.dtype == dtype:
        return w
    ident = (id(w), w.data_ptr(), w._version, dtype)
    cached = _HEAD_COPY.get(head)
    if cached is None or cached[0] != ident:
        _HEAD_COPY.clear()
        _HEAD_COPY[head] = cached = (ident, w.detach().to(dtype))
    return cached[1]


def head_logits(model: nn.Module, h: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """LM head (with Gemma 2's final logit soft-capping) on ``h`` ``(N, d)`` -> fp32 ``(N, V)``.

    Args:
        model: the model.
        h: final-norm outputs.
        dtype: compute the product in this dtype (e.g. ``torch.bfloat16``: ~3x faster on
            CPUs with bf16 units for 262k-token vocabularies); None = the head's own dtype.

    Returns:
        The logits, on the head's device.
    """
    head = get_module(model, arch_spec(model).lm_head)
    if dtype is None:
        logits = head(h.to(head.weight.device)).float()  # (N, V)
    else:
        w = _head_weight(head, dtype)  # (V, d)
        logits = (h.to(w.device, dtype) @ w.T).float()  # (N, V)
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias.float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def optimise_targets(
    model: nn.Module,
    tokenizer,
    rows: Sequence[Row],
    sites: Sequence[str],
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    kl_factor: float,
    clamp_norm_factor: float,
    nll_factor: float = 1.0,
    stop_loss: float = 5e-2,
    pmet_schedule: bool = False,
    head_dtype: torch.dtype | None = None,
) -> TargetResult:
    """Optimise δ at ``sites`` (module outputs) for the rows (ROME Eq. 4, MEMIT Eq. 16, PMET Eq. 9).

    Args:
        model, tokenizer: the model and its tokenizer.
        rows: rewriting rows (the first is the bare prompt, whose output is v₀) and KL rows.
        sites: module paths whose output gets δ at the subject token (one δ per site).
        steps: forward passes (``steps - 1`` updates), as the reference code counts.
        lr: Adam learning rate.
        weight_decay: factor of ``‖δ‖ / ‖v₀‖²`` (ROME/MEMIT code).
        kl_factor: factor of ``KL(P_δ ‖ P_0)`` at the KL rows' subject token.
        clamp_norm_factor: ``‖δ‖ ≤ clamp_norm_factor · ‖v₀‖`` after every step.
        nll_factor: factor of the NLL term (PMET ``nll_loss_factor``).
        stop_loss: stop once the loss falls below it (reference code: 5e-2).
        pmet_schedule: PMET's rule: once every target token is the argmax, weight the NLL
            by 0.1 and stop when the KL term is ≤ 0.01.
        head_dtype: dtype of the LM-head product (`head_logits`); None = the model's.

    Returns:
        The `TargetResult`, each site's tensors on that site's device.
    """
    runner = TargetRunner(model, tokenizer, rows)
    spec = arch_spec(model)
    norm_device = module_device(get_module(model, spec.final_norm))  # where the final hidden states are
    head_device = module_device(get_module(model, spec.lm_head))  # where the logits and the loss are
    rw = [i for i, r in enumerate(rows) if not r.kl]
    kl = [i for i, r in enumerate(rows) if r.kl]
    pick_r = [(i, runner.column(i, p)) for i in rw for p, _ in rows[i].targets]
    pick_k = [(i, runner.column(i, rows[i].pos)) for i in kl]
    idx = torch.tensor(pick_r + pick_k, device=norm_device)  # (M + K, 2): (row, column) read by the loss
    tokens = torch.tensor([t for i in rw for _, t in rows[i].targets], device=head_device)  # (M,)
    owner = torch.tensor([n for n, i in enumerate(rw) for _ in rows[i].targets], device=head_device)  # (M,)
    counts = torch.bincount(owner, minlength=len(rw)).float()  # (R,)
    d_model = model.config.hidden_size
    delta = {s: torch.zeros(d_model, device=module_device(get_module(model, s)), requires_grad=True) for s in sites}
    opt = torch.optim.Adam(list(delta.values()), lr=lr)
    bare = (rw[0], runner.column(rw[0], rows[rw[0]].pos))
    init: dict[str, Tensor] = {}
    kl_init = None
    result = TargetResult(init, {})
    factor = nll_factor
    for step in range(steps):
        h, outs = runner.hidden(delta)  # (B, T, d)
        if step == 0:  # δ = 0: the unedited values v₀ and output distributions
            init.update({s: outs[s][bare].detach().float() for s in sites})  # (d,) per site
        logp = head_logits(model, h[idx[:, 0], idx[:, 1]], dtype=head_dtype).log_softmax(-1)  # (M + K, V)
        lp_tok = logp[:len(pick_r)].gather(-1, tokens[:, None])[:, 0]  # (M,)
        nll_each = -torch.zeros(len(rw), device=head_device).index_add(0, owner, lp_tok) / counts  # (R,)
        nll = factor * nll_each.mean()
        kl_loss = torch.zeros((), device=head_device)
        if kl:
            cur = logp[len(pick_r):]  # (K, V)
            kl_init = cur.detach() if kl_init is None else kl_init
            kl_loss = kl_factor * (cur.exp() * (cur - kl_init)).sum(-1).mean()
        decay = sum((weight_decay * delta[s].norm() / init[s].norm() ** 2).to(head_device) for s in sites)
        loss = nll + kl_loss + decay
        result.loss.append(round(loss.item(), 5))
        result.p_new.append(round(torch.exp(-nll_each.detach()).mean().item(), 5))
        if loss.item() < stop_loss:
            break
        if pmet_schedule:
            argmax_hit = bool((logp[:len(pick_r)].argmax(-1) == tokens).all())
            factor = 0.1 * nll_factor if argmax_hit else nll_factor
            if argmax_hit and kl_loss.item() <= 0.01:
                break
        if step == steps - 1:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for s in sites:
                max_norm = clamp_norm_factor * init[s].norm()
                if delta[s].norm() > max_norm:
                    delta[s].mul_(max_norm / delta[s].norm())
    result.delta = {s: d.detach() for s, d in delta.items()}
    return result
