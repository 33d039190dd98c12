"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023, §4, Alg. 1).

1. **Targets** (Eq. 16): for each edit, ``z = h_L + δ`` at the residual stream output of
   the last edited layer ``L`` (subject's last token), δ optimised like ROME's v*
   (NLL over model-generated prefixes + KL + weight decay, clamped).
2. **Spread** (Alg. 1): for each edited layer ``l`` in ascending order, with the updates
   of the layers below already applied: keys ``K`` (down-projection inputs averaged over
   the prefixes), residuals ``R = (z − h_L) / (#layers left)`` and
   ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`` (Eq. 14) in float64, for all edits in one update.

Post-FFN norm (Gemma 2/3): the block adds ``n(W k)`` to the residual stream, not ``W k``,
so an MLP can move the residual stream only by a bounded amount (Gemma 3 270M: ‖n(v)‖ ≈ 460
against ‖h‖ ≈ 4000 at layer 5), and a residual-stream z clamped at 0.75‖h_L‖ is out of reach.
The target is therefore defined at the **down-projection output** of layer ``L`` (before
the norm; without a norm this is the same optimisation as MEMIT's, since δ added to the
MLP output or to the block output changes the block output alike).  Layer ``L`` receives
``(z − v_L) · share``; a lower layer ``l`` receives the residual-stream effect
``(n_L(z) − n_L(v_L)) · share`` mapped to its own down-projection output through its
norm's Jacobian (`memla.editors.kv.updates.residual_to_down`); the residual is measured
again after each layer's update, which absorbs the linearisation error as MEMIT's own
spreading does.  Subject not found: the last prompt token (``info["subject_fallback"]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memla.editors.base import EditRequest, EditResult, apply, register_editor
from memla.editors.kv import (GPTJ_D_FF, KeyValueConfig, capture, context_prefixes, down_to_residual,
                              down_weight_and_bias, group_mean, kl_rows, layer_covariances, locate_request,
                              memit_update, optimise_options, optimise_targets, prefix_groups, residual_to_down,
                              rewriting_rows)
from memla.editors.layers import check_layers, scaled_layers
from memla.errors import EditError
from memla.models import arch_spec, mlp_dims

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemitConfig(KeyValueConfig):
    """Settings of MEMIT (defaults: the authors' GPT-J file ``hparams/MEMIT/EleutherAI_gpt-j-6B.json``).

    Attributes:
        layers: the edited layers; None = GPT-J's layers 3..8 of 28 scaled to the model's
            depth (`scaled_layers`: 2..5 of Gemma 3 270M's 18).
        mom2_update_weight: λ of Eq. 14; None = GPT-J's 15000 scaled by ``d_ff / 16384`` so
            that ``kᵀ(λC)⁻¹k ≈ d_ff / λ`` keeps GPT-J's value (1875 for Gemma 3 270M).
        context_lengths: MEMIT's ``[[10, 5]]``: 5 prefixes of 10 tokens (+ the bare prompt).
        steps: 25 (``v_num_grad_steps``).  lr: 0.5.  weight_decay: 0.5.  kl_factor: 0.0625.
        clamp_norm_factor: 0.75 (MEMIT's, per ``‖h_L‖``; per ‖v_L‖ with a post-FFN norm).
        (the other fields: see `KeyValueConfig`; ``covariance="identity"`` uses
        ``C = (mean ‖k‖² / d_ff) · I`` from the edits' own keys, so that λ keeps its meaning.)
    """

    layers: tuple[int, ...] | None = None
    mom2_update_weight: float | None = None
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    steps: int = 25
    lr: float = 0.5
    weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, int) else tuple(self.layers)
            if not layers or min(layers) < 0:
                raise ValueError("layers must be a non-empty list of indices >= 0 (or None for the scaled default)")
            object.__setattr__(self, "layers", layers)
        if self.mom2_update_weight is not None and self.mom2_update_weight <= 0:
            raise ValueError("mom2_update_weight must be > 0 (or None for the scaled default)")


@register_editor("memit", config=MemitConfig, summary="MEMIT: multi-layer batch edit of MLPs (Meng et al. 2023)")
class MemitEditor:
    """MEMIT (Alg. 1): targets at the last edited layer, residuals spread over the layers."""

    method = "memit"
    reference_layers = (3, 4, 5, 6, 7, 8)  # GPT-J

    def __init__(self, config: MemitConfig | None = None):
        self.config = config or MemitConfig()

    def layers(self, model: nn.Module) -> tuple[int, ...]:
        """The edited layers (configured, or the reference layers scaled to the model's depth)."""
        if self.config.layers is None:
            return scaled_layers(self.reference_layers, model)
        return check_layers(self.config.layers, model)

    def lam(self, model: nn.Module) -> float:
        """λ of Eq. 14 (configured, or 15000 scaled by ``d_ff / 16384``)."""
        if self.config.mom2_update_weight is not None:
            return float(self.config.mom2_update_weight)
        return 15000.0 * mlp_dims(model)[1] / GPTJ_D_FF

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """Edit one fact (a batch of one)."""
        return self.edit_batch(model, tokenizer, [request])

    # ------------------------------------------------------------------ per-method parts (PMET overrides)
    def target_sites(self, model: nn.Module, layer: int) -> list[str]:
        """Modules whose output gets δ in the target optimisation; the last one holds the inserted target.

        MEMIT: the block output (residual stream).  With a post-FFN norm: the down-projection
        output, a value the MLP can produce (the residual-stream change an MLP can make
        there is bounded by the norm, and Gemma's residual stream is far larger).
        """
        spec = arch_spec(model)
        return [spec.path(spec.mlp_down, layer) if spec.post_ffn_norm else f"{spec.layers}.{layer}"]

    def spread(self, left: int) -> float:
        """Share of the remaining residual a layer takes (Alg. 1: ``1 / #layers left``)."""
        return 1.0 / left

    def optimise(self, model: nn.Module, tokenizer, rows, sites: Sequence[str]):
        """δ at ``sites`` for one edit's rows (MEMIT Eq. 16)."""
        return optimise_targets(model, tokenizer, rows, sites, **optimise_options(self.config))

    def residuals(self, model, tokenizer, bare, z: Tensor, last: int, layer: int, left: int, v: Tensor) -> Tensor:
        """Target changes of ``layer``'s down-projection output, ``(d_model, n)`` (Alg. 1).

        ``spread(left) · (z − cur)`` with ``cur`` the current value at the target site.  A
        target at a down-projection output of another layer (post-FFN norm) first becomes
        its residual-stream effect ``n_L(z) − n_L(cur)`` and is then mapped through this
        layer's norm (`residual_to_down`, identity without a norm).  On ``v``'s device (this layer's).
        """
        spec = arch_spec(model)
        site = self.target_sites(model, last)[-1]
        cur = capture(model, tokenizer, [b.prompt_ids for b in bare], [b.pos for b in bare], [site], inputs=False)[site].T
        scale = self.spread(left)  # residuals below are (d_model, n)
        if site != spec.path(spec.mlp_down, last):  # a residual-stream target
            return residual_to_down(model, layer, v, (z - cur) * scale)
        if layer == last or spec.post_ffn_norm is None:
            return ((z - cur) * scale).double().to(v.device)
        return residual_to_down(model, layer, v, down_to_residual(model, last, cur, z) * scale)

    # ------------------------------------------------------------------ the batch edit
    def edit_batch(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> EditResult:
        """Edit all ``requests`` in one update per layer (MEMIT Alg. 1).

        Args:
            model, tokenizer: the model (unchanged on return) and its tokenizer.
            requests: the edits, e.g. 10 facts at once.

        Returns:
            `EditResult` with one delta per edited down-projection; ``info`` has the layers,
            λ, per-edit losses and P(target_new), ``subject_fallback`` and timings.
        """
        if not requests:
            raise EditError(f"{self.method}: no edit requests given")
        cfg = self.config
        t0 = time.perf_counter()
        layers = self.layers(model)
        spec = arch_spec(model)
        prefixes = context_prefixes(model, tokenizer, cfg.context_lengths, seeds=cfg.context_seeds, seed=cfg.seed)
        groups = prefix_groups(cfg.context_lengths)
        sites = self.target_sites(model, layers[-1])
        t_prefix = time.perf_counter() - t0

        targets, losses, probs, fallbacks = [], [], [], []
        for n, request in enumerate(requests):
            rows, fallback = rewriting_rows(tokenizer, request, prefixes)
            found = self.optimise(model, tokenizer, rows + kl_rows(tokenizer, request, cfg.kl_prompts), sites)
            targets.append(found.init[sites[-1]] + found.delta[sites[-1]])  # (d_model,)
            losses.append(found.loss)
            probs.append(found.p_new)
            if fallback:
                fallbacks.append(n)
                log.info("%s: subject %r not found in %r; used the last prompt token",
                         self.method, request.subject, request.prompt)
        z = torch.stack(targets, dim=1)  # (d_model, n)
        t_opt = time.perf_counter() - t0 - t_prefix

        t1 = time.perf_counter()
        C = layer_covariances(model, tokenizer, layers, cfg)
        t_stats = time.perf_counter() - t1
        locs = [[locate_request(tokenizer, r, p) for p in prefixes] for r in requests]
        bare = [loc[0] for loc in locs]
        lam = self.lam(model)
        deltas: dict[str, Tensor] = {}
        norms = {}
        for i, layer in enumerate(layers):
            down = spec.path(spec.mlp_down, layer)
            with apply(model, EditResult(deltas=dict(deltas))):  # the layers below, already updated
                flat = [l for loc in locs for l in loc]
                keys = capture(model, tokenizer, [l.prompt_ids for l in flat], [l.pos for l in flat], [down])[down]
                keys = keys.view(len(requests), len(prefixes), -1)  # (n, P, d_ff)
                K = torch.stack([group_mean(k, groups) for k in keys], dim=1)  # (d_ff, n)
                W, b = down_weight_and_bias(model, layer)  # (d_model, d_ff)
                v = W @ K + (0 if b is None else b[:, None])  # (d_model, n), current values at the keys
                R = self.residuals(model, tokenizer, bare, z, layers[-1], layer, len(layers) - i, v)  # (d_model, n)
            if C is not None:
                C_l = C[layer]  # (d_ff, d_ff), on the layer's device
            else:
                C_l = (K.pow(2).sum(0).mean() / K.shape[0]) * torch.eye(K.shape[0], device=K.device)  # (d_ff, d_ff)
            delta = memit_update(R, K, C_l, lam)  # (d_model, d_ff)
            weight = spec.down_module(model, layer).weight
            in_layout = spec.from_linear(delta).to(dtype=weight.dtype, device=weight.device).contiguous()
            deltas[spec.down_weight_name(layer)] = in_layout
            norms[str(layer)] = round(float(delta.norm()), 5)
        info = {
            "method": self.method,
            "layers": list(layers),
            "lambda": lam,
            "covariance": cfg.covariance,
            "edits": len(requests),
            "target_sites": sites,
            "prefixes": len(prefixes),
            "subject_fallback": bool(fallbacks),
            "subject_fallback_edits": fallbacks,
            "loss": losses[0] if len(requests) == 1 else losses,
            "p_new": probs[0] if len(requests) == 1 else probs,
            "steps": len(losses[0]) if len(requests) == 1 else [len(x) for x in losses],
            "update_norm": norms,
            "seconds_prefixes": round(t_prefix, 3),
            "seconds_optimise": round(t_opt, 3),
            "seconds_stats": round(t_stats, 3),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditResult(deltas=deltas, info=info)
