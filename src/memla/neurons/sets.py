"""`NeuronSet` and the language-independent / language-specific split (paper §4.1, Eq. 3–4)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor


class NeuronSet:
    """An immutable set of MLP intermediate neurons, as ``(layer, index)`` pairs.

    Supports ``|`` (union), ``&`` (intersection), ``-`` (difference), ``len``,
    ``in``, iteration in (layer, index) order, per-layer views and a JSON round trip.
    """

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()):
        self._pairs = frozenset((int(layer), int(index)) for layer, index in pairs)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_scores(cls, scores: Tensor, *, threshold: float, layers: Sequence[int] | None = None) -> "NeuronSet":
        """Neurons whose score exceeds ``threshold × max score`` over all rows (Dai et al.; MEMLA).

        Args:
            scores: ``(L, d_ff)`` attribution scores (`attribute`).
            threshold: fraction of the maximum score, in ``[0, 1]``.
            layers: the layer index of each row (default ``0..L-1``).

        Returns:
            The selected neurons; empty when no score is positive.
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        layers = list(range(scores.shape[0])) if layers is None else list(layers)
        if len(layers) != scores.shape[0]:
            raise ValueError(f"{len(layers)} layer indices for {scores.shape[0]} rows of scores")
        top = float(scores.max()) if scores.numel() else 0.0
        if top <= 0.0:
            return cls()
        rows, cols = torch.nonzero(scores > threshold * top, as_tuple=True)
        return cls((layers[r], c) for r, c in zip(rows.tolist(), cols.tolist()))

    @classmethod
    def from_dict(cls, data: Mapping) -> "NeuronSet":
        """Inverse of `to_dict`."""
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise ValueError("a NeuronSet dict needs a 'layers' mapping")
        return cls((int(layer), int(i)) for layer, indices in layers.items() for i in indices)

    @classmethod
    def from_json(cls, text: str) -> "NeuronSet":
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict:
        """``{"layers": {"<layer>": [indices...]}}``, layers and indices ascending."""
        return {"layers": {str(layer): list(indices) for layer, indices in self.by_layer().items()}}

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict())

    def by_layer(self) -> dict[int, tuple[int, ...]]:
        """``{layer: sorted indices}`` for the layers that have neurons, ascending."""
        out: dict[int, list[int]] = {}
        for layer, index in sorted(self._pairs):
            out.setdefault(layer, []).append(index)
        return {layer: tuple(indices) for layer, indices in out.items()}

    def layer(self, layer: int) -> tuple[int, ...]:
        """Sorted neuron indices of one layer (empty if none)."""
        return tuple(sorted(i for l_, i in self._pairs if l_ == layer))

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers that have at least one neuron, ascending."""
        return tuple(sorted({layer for layer, _ in self._pairs}))

    def counts(self) -> dict[int, int]:
        """``{layer: number of neurons}``."""
        return {layer: len(indices) for layer, indices in self.by_layer().items()}

    def mask(self, num_layers: int, d_ff: int) -> Tensor:
        """Boolean ``(num_layers, d_ff)`` mask of the neurons."""
        out = torch.zeros(num_layers, d_ff, dtype=torch.bool)  # (L, d_ff)
        if self._pairs:
            idx = torch.tensor(sorted(self._pairs))  # (N, 2)
            out[idx[:, 0], idx[:, 1]] = True
        return out

    # ------------------------------------------------------------------ set algebra
    def __or__(self, other: "NeuronSet") -> "NeuronSet":
        return NeuronSet(self._pairs | _pairs(other))

    def __and__(self, other: "NeuronSet") -> "NeuronSet":
        return NeuronSet(self._pairs & _pairs(other))

    def __sub__(self, other: "NeuronSet") -> "NeuronSet":
        return NeuronSet(self._pairs - _pairs(other))

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(sorted(self._pairs))

    def __contains__(self, item) -> bool:
        return tuple(item) in self._pairs

    def __eq__(self, other) -> bool:
        return isinstance(other, NeuronSet) and self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __repr__(self) -> str:
        counts = ", ".join(f"{layer}: {n}" for layer, n in self.counts().items())
        return f"NeuronSet({len(self)} neurons; per layer {{{counts}}})"


def _pairs(other) -> frozenset:
    if not isinstance(other, NeuronSet):
        raise TypeError(f"expected a NeuronSet, got {type(other).__name__}")
    return other._pairs


def split_language_neurons(per_language: Mapping[str, NeuronSet], ls: str) -> tuple[NeuronSet, NeuronSet]:
    """Language-independent and language-specific neurons (Eq. 3–4).

    Args:
        per_language: ``{lang: N^k}``, the knowledge neurons found in each language.
        ls: the source language; must be one of the keys.

    Returns:
        ``(I, S)``: ``I = ∩_k N^k`` over every language given (Eq. 3) and
        ``S = N^ls − I`` (Eq. 4).
    """
    if ls not in per_language:
        raise ValueError(f"source language {ls!r} has no neuron set (have: {', '.join(per_language) or 'none'})")
    sets = list(per_language.values())
    independent = sets[0]
    for other in sets[1:]:
        independent = independent & other
    return independent, per_language[ls] - independent
