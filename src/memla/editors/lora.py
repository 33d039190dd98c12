"""Neuron-masked LoRA on an MLP down-projection (MEMLA, §4.2, Eq. 5–7).

A `MaskedLoRA` holds ``B ∈ R^{d_model×r}`` and ``A ∈ R^{r×d_ff}`` and a 0/1 mask
over the ``d_ff`` intermediate neurons; its update is ``Δ = (B A) ⊙ M`` where
``M`` keeps the down-projection weights tied to the chosen neurons (the columns
of an ``nn.Linear`` weight ``[d_model, d_ff]``, the rows of a GPT-2 ``Conv1D``
weight ``[d_ff, d_model]``).  Because ``M`` masks whole input columns,
``(B A ⊙ M) x = B A (m ⊙ x)``, which is what `forward` computes.

`lora_hooks` adds the LoRA outputs to the down-projection outputs during a
forward pass, so training never touches a weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from memla.hooks import trace


class MaskedLoRA(nn.Module):
    """``Δ = (B A) ⊙ M`` of rank ``r = n · |neurons|`` (Eq. 5–7); ``masked=False`` drops ``M``.

    Args:
        d_model: output size of the down-projection.
        d_ff: input size (number of intermediate neurons).
        neurons: indices of the neurons this editor owns.
        rank_per_neuron: ``n`` in ``r = n · |neurons|``.
        masked: apply the neuron mask (LSM / LIM); ``False`` is the "w/o mask" ablation.
        generator: RNG for ``A``'s initialisation (B starts at zero, so ``Δ = 0`` at step 0).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        neurons: Sequence[int],
        *,
        rank_per_neuron: int,
        masked: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not neurons:
            raise ValueError("a MaskedLoRA needs at least one neuron")
        self.rank = rank_per_neuron * len(neurons)
        bound = 1.0 / math.sqrt(d_ff)  # the scale of nn.Linear's default init for A
        self.A = nn.Parameter((torch.rand(self.rank, d_ff, generator=generator) * 2 - 1) * bound)  # (r, d_ff)
        self.B = nn.Parameter(torch.zeros(d_model, self.rank))  # (d_model, r)
        mask = torch.zeros(d_ff)
        mask[list(neurons)] = 1.0
        self.register_buffer("mask", mask if masked else torch.ones(d_ff))  # (d_ff,)
        self.register_buffer("preserved", torch.zeros(d_ff, 0))  # (d_ff, p) orthonormal; see `preserve`
        self.neurons = tuple(int(i) for i in neurons)

    def preserve(self, keys: Tensor, *, rel_tol: float) -> int:
        """Null-space projection (AlphaEdit-style): make ``Δ`` vanish on the principal directions of ``keys``.

        With ``V`` the right singular vectors of the masked keys ``K ⊙ M`` (each scaled to
        unit norm, so that every key counts alike) whose singular values exceed ``rel_tol``
        times the largest, the update becomes ``Δ (I − V Vᵀ)``, so ``Δ k ≈ 0`` for every
        preserved key ``k``.

        Args:
            keys: down-projection inputs to preserve, ``(N, d_ff)`` (moved to this module's device).
            rel_tol: relative singular-value cut-off in (0, 1].

        Returns:
            The number of preserved directions.
        """
        columns = self.mask.nonzero().squeeze(-1)  # (k,)
        unit = torch.nn.functional.normalize(keys.to(self.mask.device).float()[:, columns], dim=-1)  # (N, k)
        _, s, vh = torch.linalg.svd(unit, full_matrices=False)  # s: (min(N, k),)
        keep = s > rel_tol * s[0] if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
        kept = int(keep.sum())
        self.preserved = torch.zeros(len(self.mask), kept, device=self.mask.device)  # (d_ff, p): 0 outside the neurons
        self.preserved[columns] = vh[keep].T
        return kept

    def project(self, x: Tensor) -> Tensor:
        """``x (I − V Vᵀ)`` over the last dimension (``x`` itself when nothing is preserved)."""
        if not self.preserved.shape[1]:
            return x
        return x - (x @ self.preserved) @ self.preserved.T  # (..., d_ff)

    def delta(self) -> Tensor:
        """``(B A) ⊙ M`` in the ``nn.Linear`` orientation ``[d_model, d_ff]`` (Eq. 7), times ``(I − V Vᵀ)``."""
        return self.project((self.B @ self.A) * self.mask)  # (d_model, d_ff)

    def forward(self, x: Tensor) -> Tensor:
        """``Δ x`` for intermediate activations ``x``: (..., d_ff) -> (..., d_model)."""
        return (self.project(x * self.mask) @ self.A.T) @ self.B.T  # (..., d_model)


@contextmanager
def lora_hooks(
    model: nn.Module, loras: Mapping[str, Sequence[MaskedLoRA]], *, scales: Mapping[str, float] | None = None
) -> Iterator[None]:
    """Add ``c · Σ_lora lora(x)`` to each named down-projection's output during forward passes.

    Args:
        model: the model (its weights are not touched).
        loras: down-projection module name -> the LoRA editors on it (e.g. LSE and LIE).
        scales: module name -> ``c`` (read at every forward, so the caller may update it); default 1.
    """
    inputs: dict[str, Tensor] = {}

    def keep_input(x: Tensor, name: str) -> Tensor:
        inputs[name] = x  # (B, T, d_ff)
        return x

    def add_delta(out: Tensor, name: str) -> Tensor:
        x = inputs.pop(name)
        c = 1.0 if scales is None else scales[name]
        return out + c * sum(lora(x.to(lora.A.dtype)).to(out.dtype) for lora in loras[name])  # (B, T, d_model)

    with trace(model, list(loras), edit_input=keep_input, edit=add_delta, retain_output=False):
        yield
