"""ROME: rank-one model editing of one MLP down-projection (Meng et al. 2022, §3; r-ROME fix).

1. **Key** (ROME Eq. 3): the down-projection input at the subject's last token.  ``k*``
   averages it over short prefixes the model generates itself (`memla.editors.kv.keys`).
2. **Value** (ROME Eq. 4): ``v* = v₀ + δ`` where δ, added to the down-projection output
   at the subject's last token, minimises ``NLL(target_new | prefix_j + prompt)
   + kl_factor · KL("{} is a") + weight_decay · ‖δ‖/‖v₀‖²`` with ‖δ‖ clamped.
3. **Update** (ROME Eq. 2): ``ΔW = (v* − W k) (C⁻¹ k)ᵀ / ((C⁻¹ k)ᵀ k)``, ``C = E[k kᵀ]``
   from `memla.editors.kv.stats` (or the identity).  The original code puts the
   prefix-averaged ``k*`` in ``C⁻¹ k*`` but the unprefixed ``k`` in ``W k`` and the
   denominator; r-ROME (Gupta et al. 2024) uses one key in both, which stops the
   collapse of sequential edits.  ``key="prompt"`` (default) uses the unprefixed key in
   both, ``"prefix"`` the averaged ``k*`` in both, ``"original"`` reproduces ROME 2022.

Post-FFN norm (Gemma 2/3): v* is defined at the down-projection output, before the
norm, and optimised through it, so ``(W + ΔW) k = v*`` is exactly the value the
optimisation found.  Subject not found: the last prompt token (``info["subject_fallback"]``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from torch import nn

from memla.editors.base import EditRequest, EditResult, register_editor
from memla.editors.kv import (KeyValueConfig, capture, context_prefixes, down_weight_and_bias, kl_rows,
                              layer_covariances, locate_request, optimise_options, optimise_targets, rank_one_update,
                              rewriting_rows)
from memla.editors.layers import check_layers, scaled_layers
from memla.models import arch_spec

log = logging.getLogger(__name__)

KEY_MODES = ("prompt", "prefix", "original")


@dataclass(frozen=True)
class RomeConfig(KeyValueConfig):
    """Settings of ROME (defaults: the authors' GPT-J hyper-parameters, ``hparams/ROME/EleutherAI_gpt-j-6B.json``).

    Attributes:
        layer: the edited layer; None = GPT-J's layer 5 of 28 scaled to the model's depth
            (`scaled_layers`: layer 3 of Gemma 3 270M's 18).
        key: ``"prompt"`` (r-ROME, unprefixed key in numerator and denominator),
            ``"prefix"`` (prefix-averaged ``k*`` in both) or ``"original"`` (ROME 2022).
        context_lengths: ROME's ``[[5, 10], [10, 10]]``: 10 prefixes of 5 and 10 of 10 tokens.
        steps: 20 (``v_num_grad_steps``).  lr: 0.5 (``v_lr``).  weight_decay: 0.5.
        kl_factor: 0.0625.  clamp_norm_factor: 4.0 (ROME's, per ``‖v₀‖``).
        (the other fields: see `KeyValueConfig`.)
    """

    layer: int | None = None
    key: str = "prompt"
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    steps: int = 20
    lr: float = 0.5
    weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer is not None and self.layer < 0:
            raise ValueError("layer must be >= 0 (or None for the scaled default)")
        if self.key not in KEY_MODES:
            raise ValueError(f"key must be one of {', '.join(KEY_MODES)}, got {self.key!r}")


@register_editor("rome", config=RomeConfig, summary="ROME: rank-one edit of one MLP (Meng et al. 2022; r-ROME keys)")
class RomeEditor:
    """ROME (§3): locate the key, optimise v*, insert it with a rank-one update."""

    reference_layer = 5  # GPT-J's (of 28)

    def __init__(self, config: RomeConfig | None = None):
        self.config = config or RomeConfig()

    def layer(self, model: nn.Module) -> int:
        """The edited layer (the configured one or the scaled GPT-J default)."""
        if self.config.layer is None:
            return scaled_layers((self.reference_layer,), model)[0]
        return check_layers((self.config.layer,), model)[0]

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """Edit ``request``: ``ΔW`` of one down-projection (ROME Eq. 2–4).

        Returns:
            `EditResult` with one rank-one delta; ``info`` has the layer, the losses, P(target_new)
            per step, ``subject_fallback``, norms and timings.
        """
        cfg = self.config
        t0 = time.perf_counter()
        layer = self.layer(model)
        spec = arch_spec(model)
        down = spec.path(spec.mlp_down, layer)
        prefixes = context_prefixes(model, tokenizer, cfg.context_lengths, seeds=cfg.context_seeds, seed=cfg.seed)
        t_prefix = time.perf_counter() - t0

        locs = [locate_request(tokenizer, request, p) for p in prefixes]
        keys = capture(model, tokenizer, [l.prompt_ids for l in locs], [l.pos for l in locs], [down])[down]  # (P, d_ff)
        k_bare, k_star = keys[0], keys.mean(0)  # (d_ff,), ROME Eq. 3 (flat mean, bare prompt included)

        rows, fallback = rewriting_rows(tokenizer, request, prefixes)
        rows += kl_rows(tokenizer, request, cfg.kl_prompts)
        t1 = time.perf_counter()
        found = optimise_targets(model, tokenizer, rows, [down], **optimise_options(cfg))
        t_opt = time.perf_counter() - t1
        v_star = found.init[down] + found.delta[down]  # (d_model,)

        t2 = time.perf_counter()
        C = layer_covariances(model, tokenizer, [layer], cfg)
        t_stats = time.perf_counter() - t2
        k_num, k_den = {"prompt": (k_bare, k_bare), "prefix": (k_star, k_star), "original": (k_star, k_bare)}[cfg.key]
        W, b = down_weight_and_bias(model, layer)  # (d_model, d_ff), (d_model,) or None
        w_k = W @ k_den + (0 if b is None else b)  # (d_model,)
        delta = rank_one_update(v_star, w_k, k_num, k_den, None if C is None else C[layer])  # (d_model, d_ff)
        info = {
            "method": "rome",
            "layer": layer,
            "key": cfg.key,
            "covariance": cfg.covariance,
            "prefixes": len(prefixes),
            "subject_fallback": fallback,
            "loss": found.loss,
            "p_new": found.p_new,
            "steps": len(found.loss),
            "delta_norm": round(float(found.delta[down].norm()), 5),
            "v0_norm": round(float(found.init[down].norm()), 5),
            "update_norm": round(float(delta.norm()), 5),
            "weight_norm": round(float(W.norm()), 5),
            "seconds_prefixes": round(t_prefix, 3),
            "seconds_optimise": round(t_opt, 3),
            "seconds_stats": round(t_stats, 3),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if fallback:
            log.info("ROME: subject %r not found in %r; used the last prompt token", request.subject, request.prompt)
        weight = spec.down_module(model, layer).weight
        in_layout = spec.from_linear(delta).to(dtype=weight.dtype, device=weight.device).contiguous()
        return EditResult(deltas={spec.down_weight_name(layer): in_layout}, info=info)
