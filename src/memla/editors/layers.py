"""Which layers an editor edits: reference layer choices carried over to a model's depth.

The reference hyper-parameters were tuned for one model (GPT-J's 28 layers for ROME, MEMIT
and PMET; GPT-2 XL's 48 for FT).  Two rules carry them over, one per kind of setting:

* `scaled_layers` (ROME, MEMIT, PMET): reference layer *indices* ``l`` of a ``depth``-layer
  model become ``round(l · n / depth)``, clipped to ``0..n-1``.
* `scaled_layer` (FT): a relative depth ``f``, the config's ``layer_fraction`` (GPT-2 XL's
  layer 1 of 48 is ``1/47``), becomes ``round(f · (n − 1))``.

They are not one rule: written for the same reference layer they give different layers on
some depths (MEMIT's layers 3..8 of 28 become layers (0, 1) of a 2-layer model by the first
rule but (0,) by ``round(l · (n − 1) / 27)``; FT's ``1/47`` gives layer 3 of 119 or 120
layers where ``round(1 · n / 48)`` gives 2), so each editor keeps its own, and its results.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from memla.errors import EditError
from memla.models import num_layers

GPTJ_LAYERS = 28  # depth of GPT-J 6B, the model of ROME / MEMIT / PMET's reference hyper-parameter files


def scaled_layers(reference: Sequence[int], model: nn.Module, *, depth: int = GPTJ_LAYERS) -> tuple[int, ...]:
    """Reference layers of a ``depth``-layer model mapped proportionally onto ``model``'s depth.

    ``l ↦ round(l · n / depth)``, clipped to ``0..n-1``, duplicates removed (e.g. ROME's
    GPT-J layer 5 of 28 is layer 3 of Gemma 3 270M's 18; MEMIT's 3..8 become 2..5).
    """
    n = num_layers(model)
    return tuple(sorted({min(n - 1, max(0, round(layer * n / depth))) for layer in reference}))


def scaled_layer(n_layers: int, fraction: float) -> int:
    """The layer at relative depth ``fraction`` of an ``n_layers`` model: ``round(fraction · (n_layers − 1))``.

    Carries a reference layer choice (e.g. layer 0 of GPT-2 XL's 48) over to a
    model of another depth.
    """
    return int(round(fraction * (n_layers - 1)))


def check_layers(layers: Sequence[int], model: nn.Module) -> tuple[int, ...]:
    """Validate layer indices against the model (``EditError`` names the valid range)."""
    n = num_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise EditError(f"layer(s) {bad} out of range: the model has layers 0..{n - 1}")
    return tuple(sorted(set(layers)))
