"""FT-L: fine-tuning one MLP down-projection with an L∞ constraint (Zhu et al. 2020; ROME §4.2 baseline).

The edit trains ``Δ`` in ``W = W₀ + Δ`` for one layer's down-projection with Adam
on the edit prompt and, after every step, clamps ``Δ`` into ``[−ε, ε]``
(``‖θ − θ₀‖∞ ≤ ε``, Zhu et al. 2020, Eq. 3; the projection ROME's ``ft_main.py``
applies).  ``Δ`` is added to the module's output through a hook, so the model's
weights never move; the returned delta is ``Δ`` itself, bounded exactly.

Two registered methods share this code and differ only in their config defaults:

- ``ft`` — FT-L, constrained (`FTConfig`): ROME/MEMIT's ``FT/*_constr`` settings.
- ``ft-unconstrained`` — plain fine-tuning (`FTUnconstrainedConfig`, ``norm_constraint=None``):
  ROME's ``FT/gpt2-xl_unconstr`` settings.

``FTConfig(norm_constraint=None)`` is the unconstrained variant too; the second name
exists so that ``memla bench --methods ft,ft-unconstrained`` runs both without a config file.

Default sources (EasyEdit / ROME ``hparams/FT``): GPT-2 XL constrained — layer 0
of 48, lr 5e-4, 25 steps, ε = 5e-4; GPT-J constrained — layer 0 of 28, ε = 5e-5;
GPT-2 XL unconstrained — layer 1 of 48.  The layer is carried over to other
depths as a relative position (``round(fraction · (L − 1))``).  The loss is
ROME's "prompt_last" FT-L objective (every target token predicted from the last
prompt position; EasyEdit's survey calls this FT-L); ``objective="target_new"``
is teacher-forced NLL (EasyEdit's FT-M).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from memla.devices import input_device
from memla.editors._train import added_outputs, down_name, linear_delta_term, teacher_batch
from memla.editors.base import EditRequest, EditResult, register_editor
from memla.editors.layers import scaled_layer
from memla.models import arch_spec, get_module, num_layers
from memla.tokens import encode_pair

log = logging.getLogger(__name__)

OBJECTIVES = ("prompt_last", "target_new")


@dataclass(frozen=True)
class FTConfig:
    """Settings of FT-L (defaults: ROME/EasyEdit ``hparams/FT/gpt2-xl_constr.json``).

    Attributes:
        layer: index of the down-projection to fine-tune; ``None`` = ``layer_fraction`` of the depth.
        layer_fraction: relative depth used when ``layer`` is None: ``round(fraction · (L − 1))``
            (reference: layer 0 of 48 in GPT-2 XL and of 28 in GPT-J, so 0.0).
        norm_constraint: ``ε`` of ``‖θ − θ₀‖∞ ≤ ε``, clamped after every step
            (reference: 5e-4 for GPT-2 XL, 5e-5 for GPT-J); ``None`` = unconstrained.
        lr: Adam learning rate (reference: 5e-4).
        steps: most optimisation steps (reference: 25).
        objective: ``"prompt_last"`` (ROME's FT-L loss: ``−mean_j log P(t_j | prompt)`` at the last
            prompt position) or ``"target_new"`` (teacher-forced NLL of the target, FT-M).
        stop_loss: stop once the loss falls below this (ROME's ``ft_main``: 1e-2).
    """

    layer: int | None = None
    layer_fraction: float = 0.0
    norm_constraint: float | None = 5e-4
    lr: float = 5e-4
    steps: int = 25
    objective: str = "prompt_last"
    stop_loss: float = 1e-2

    def __post_init__(self) -> None:
        if not 0.0 <= self.layer_fraction <= 1.0:
            raise ValueError("layer_fraction must be in [0, 1]")
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise ValueError("norm_constraint must be > 0 (or null for the unconstrained variant)")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")


@dataclass(frozen=True)
class FTUnconstrainedConfig(FTConfig):
    """`FTConfig` with the unconstrained defaults (ROME ``hparams/FT/gpt2-xl_unconstr.json``).

    Attributes:
        layer_fraction: layer 1 of GPT-2 XL's 48 (``1/47``).
        norm_constraint: ``None`` (no clamp).
    """

    layer_fraction: float = 1 / 47
    norm_constraint: float | None = None


def float32_at_most(eps: float) -> float:
    """The largest float32 value ``≤ eps``, so that a float32 ``Δ`` clamped to it obeys ``|Δ| ≤ eps`` exactly."""
    x = torch.tensor(eps, dtype=torch.float32)
    if float(x) > eps:
        x = torch.nextafter(x, torch.tensor(0.0))
    return float(x)


@register_editor("ft", config=FTConfig, summary="FT-L: L∞-constrained fine-tuning of one down-projection (Zhu et al. 2020)")
class FTEditor:
    """FT-L editor: Adam on ``Δ`` of one down-projection, clamped to ``‖Δ‖∞ ≤ ε`` after every step."""

    def __init__(self, config: FTConfig | None = None):
        self.config = config or FTConfig()

    def layer(self, model: nn.Module) -> int:
        """The edited layer: ``config.layer`` (negative counts from the top) or the scaled reference layer."""
        cfg = self.config
        if cfg.layer is None:
            return scaled_layer(num_layers(model), cfg.layer_fraction)
        down_name(model, cfg.layer)  # range check
        return cfg.layer % num_layers(model)

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """Fine-tune ``Δ`` on the edit prompt (Zhu et al. 2020, Eq. 3; ROME Appendix).

        Args:
            model: the model (unchanged: ``Δ`` enters through a forward hook).
            tokenizer: its tokenizer.
            request: the fact, in the source language.

        Returns:
            ``deltas = {down_proj.weight: Δ}`` in the weight's own layout, fp32, with
            ``‖Δ‖∞ ≤ ε`` exactly when constrained.
        """
        cfg = self.config
        t0 = time.perf_counter()
        layer = self.layer(model)
        spec = arch_spec(model)
        name = down_name(model, layer)
        weight = get_module(model, name).weight
        delta = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device, requires_grad=True)  # W's layout
        opt = torch.optim.Adam([delta], lr=cfg.lr)
        loss_fn = self._loss_fn(model, tokenizer, request)
        eps = cfg.norm_constraint
        bound = None if eps is None else float32_at_most(eps)
        losses: list[float] = []
        with torch.enable_grad(), added_outputs(model, {name: linear_delta_term(delta, spec)}):
            for _ in range(cfg.steps):
                loss = loss_fn()
                losses.append(round(loss.item(), 5))
                if losses[-1] < cfg.stop_loss:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if bound is not None:
                    with torch.no_grad():
                        delta.clamp_(-bound, bound)  # project back onto the L∞ ball (after every step)
        delta = delta.detach()
        info = {
            "method": self.name,
            "layer": layer,
            "norm_constraint": eps,
            "objective": cfg.objective,
            "loss": losses,
            "steps": len(losses),
            "delta_max_abs": float(delta.abs().max()),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditResult(deltas={spec.down_weight_name(layer): delta}, info=info)

    def _loss_fn(self, model: nn.Module, tokenizer, request: EditRequest):
        """The training loss as a closure over the encoded request (its tensors on the model's input device)."""
        device = input_device(model)
        if self.config.objective == "target_new":
            batch = teacher_batch(tokenizer, [(request.text, request.target_new, request.lang)], device=device)
            return lambda: -batch.mean_logprob(batch.logits(model))[0]
        # prompt_last: every target token scored at the last prompt position (ROME's ft_main).
        enc = encode_pair(tokenizer, request.text, request.target_new, request.lang)
        ids = torch.tensor([enc.prompt_ids], device=device)  # (1, T)
        target = torch.tensor(enc.target_ids, device=device)  # (n,)

        def loss() -> torch.Tensor:
            logp = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)  # (V,)
            return -logp[target].mean()

        return loss


@register_editor("ft-unconstrained", config=FTUnconstrainedConfig,
                 summary="FT: unconstrained fine-tuning of one down-projection (FT-L without the L∞ clamp)")
class FTUnconstrainedEditor(FTEditor):
    """FT without the L∞ constraint (the ``ft`` code with `FTUnconstrainedConfig` defaults)."""

    def __init__(self, config: FTConfig | None = None):
        super().__init__(config or FTUnconstrainedConfig())
