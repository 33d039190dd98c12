"""PMET: precise model editing in a transformer (Li et al. 2024, AAAI; §4, Eq. 9–14).

MEMIT's pipeline with two changes:

1. **Joint targets** (Eq. 9–10): the optimisation adds one δ to the attention output
   (``o_proj`` / ``c_proj``) and one to the MLP output (down-projection) of the last
   edited layer ``L``, at the subject's last token, and optimises both together (NLL
   + KL + weight decay of each, each clamped); the attention part only absorbs what the
   attention would contribute — only the MLP target (the FFN "TC hidden state") is
   inserted, and only MLP weights change.
2. **Square-root spreading** (Eq. 14, reference code): layer ``l`` receives
   ``(v*_L − v_L) / sqrt(#layers left)`` instead of MEMIT's ``1 / #layers left``.

Its optimisation also follows the reference code's schedule: once every target token is
the argmax, the NLL weight drops to 0.1 and the optimisation stops when the KL term is
≤ 0.01.  Post-FFN norm (Gemma 2/3): the target is the down-projection output of layer
``L`` (before the norm); for the other layers its residual-stream effect ``n_L(v*) − n_L(v)``
is mapped back through their own norms (`memla.editors.kv.updates.residual_to_down`).
Subject not found: the last prompt token (``info["subject_fallback"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from memla.editors.base import register_editor
from memla.editors.kv import optimise_options, optimise_targets
from memla.editors.memit import MemitConfig, MemitEditor
from memla.models import arch_spec


@dataclass(frozen=True)
class PmetConfig(MemitConfig):
    """Settings of PMET (defaults: the authors' GPT-J file ``hparams/PMET/gpt-j-6B.yaml``).

    Attributes:
        layers: None = GPT-J's layers 3..8 of 28 scaled to the model's depth (2..5 of 18).
        mom2_update_weight: λ; None = 15000 scaled by ``d_ff / 16384`` (as `MemitConfig`).
        steps: 30 (``v_num_grad_steps``).  lr: 0.2 (``v_lr``).  weight_decay: 0.5.
        kl_factor: 1.0.  clamp_norm_factor: 0.75 (per ``‖v₀‖`` of each site).
        nll_factor: 1.0 (``nll_loss_factor``).
        (context prefixes as MEMIT's ``[[10, 5]]``; the other fields: see `KeyValueConfig`.)
    """

    steps: int = 30
    lr: float = 0.2
    weight_decay: float = 0.5
    kl_factor: float = 1.0
    clamp_norm_factor: float = 0.75
    nll_factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nll_factor <= 0:
            raise ValueError("nll_factor must be > 0")


@register_editor("pmet", config=PmetConfig, summary="PMET: MEMIT with joint attention/MLP targets (Li et al. 2024)")
class PmetEditor(MemitEditor):
    """PMET: joint attention + MLP target optimisation, MLP-only insertion, square-root spreading."""

    method = "pmet"

    def __init__(self, config: PmetConfig | None = None):
        super().__init__(config or PmetConfig())

    def target_sites(self, model: nn.Module, layer: int) -> list[str]:
        """The attention output and the down-projection of layer ``layer`` (the MLP site last)."""
        spec = arch_spec(model)
        return [spec.path(spec.attn_out, layer), spec.path(spec.mlp_down, layer)]

    def optimise(self, model: nn.Module, tokenizer, rows, sites: Sequence[str]):
        """Joint δ at the attention and MLP outputs (PMET Eq. 9–10) with PMET's NLL schedule."""
        return optimise_targets(model, tokenizer, rows, sites, nll_factor=self.config.nll_factor, pmet_schedule=True,
                                **optimise_options(self.config))

    def spread(self, left: int) -> float:
        """PMET's square-root spreading: ``1 / sqrt(#layers left)`` (PMET Eq. 14, reference code)."""
        return 1.0 / math.sqrt(left)
