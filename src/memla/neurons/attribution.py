"""`attribute`: integrated-gradients scores of MLP intermediate neurons (paper §4.1, Eq. 1–2).

The score of neuron ``i`` of layer ``l`` for a prompt ``x`` and a target ``y`` is

    Attr(w_i^l) = (w_i^l - w'_i^l) / m · Σ_{k=1..m} ∂P(y | x, w' + k/m (w - w')) / ∂w_i^l      (Eq. 2)

where ``P`` is the softmax probability of the target token (Eq. 1), ``w`` the
activation of layer ``l`` at the position that predicts the target, ``w'`` the
baseline and only layer ``l`` is scaled.  Multi-token targets are teacher
forced: target token ``j`` is attributed at the position that predicts it
(the last prompt position for ``j = 0``, then one position further per token),
with the earlier target tokens in the input, and the per-token scores are
summed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn
from tqdm.auto import tqdm

from memla.models import model_fingerprint

from . import cache as disk
from memla.tokens import context_length

from ._common import Head, check_options, encode, separator
from .fast import attribute_fast
from .reference import attribute_reference

METHODS = ("fast", "reference")


@dataclass(frozen=True)
class Options:
    """Attribution settings; `make_options` validates them for a model.

    Attributes:
        layers: layer indices to attribute, sorted (`make_options` takes None for all);
            the rows of the scores follow them.
        steps: ``m`` of Eq. 2; the right Riemann sum over ``alpha = k/m, k = 1..m``
            (the actual activation is an end point, the baseline is not).
        baseline: ``"zero"`` (Dai et al.) or ``"sig_mean"`` (Chen et al., AMIG: one
            path per prompt token replaced by EOS/PAD, scores averaged over paths).
        point: ``"down_in"`` (the down-projection's input, act(gate)·up or act(c_fc):
            the neurons MEMLA masks) or ``"mlp_in"`` (the gate_proj / c_fc output,
            as the MEMLA reference code).
        method: ``"fast"`` (prefix KV cache, per-layer entry, batched one-token rows)
            or ``"reference"`` (per layer, full sequence, full logits).
        max_rows: most IG rows per batch in the fast method (bounds memory).
    """

    layers: tuple[int, ...]
    steps: int = 20
    baseline: str = "zero"
    point: str = "down_in"
    method: str = "fast"
    max_rows: int = 512

    def key(self, model: nn.Module, lang: str | None) -> dict:
        """The settings that change the scores, for the disk cache key."""
        return {"layers": list(self.layers), "steps": self.steps, "baseline": self.baseline, "point": self.point,
                "method": self.method, "sep": separator(lang),
                "dtype": str(next(model.parameters()).dtype)}


def make_options(model: nn.Module, *, layers=None, **settings) -> Options:
    """Validate attribution settings for ``model``.

    Args:
        model: the model to attribute.
        layers: layer indices (any order, repeats allowed); None for all layers.
        settings: the other fields of `Options` (``steps``, ``baseline``, ``point``,
            ``method``, ``max_rows``); the rest keep `Options`' defaults.

    Returns:
        The `Options`, layers sorted and de-duplicated.

    Raises:
        ValueError: a setting out of range or unknown.
        TypeError: a name that is no field of `Options`.
    """
    opts = Options((), **settings)
    chosen = check_options(model, layers=layers, steps=opts.steps, baseline=opts.baseline, point=opts.point)
    if opts.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {opts.method!r}")
    if not isinstance(opts.max_rows, int) or opts.max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer, got {opts.max_rows!r}")
    return dataclasses.replace(opts, layers=tuple(chosen))


def attribute(
    model: nn.Module,
    tokenizer,
    prompt: str,
    target: str,
    *,
    lang: str | None = None,
    cache: bool = False,
    progress: bool = False,
    **options,
) -> Tensor:
    """Integrated-gradients scores of every intermediate neuron of the chosen layers (Eq. 1–2).

    Args:
        model: a causal LM with an `ArchSpec` (parameters need no gradients).
        tokenizer: its tokenizer; special tokens (e.g. BOS) are added as the tokenizer does.
        prompt: the prompt, subject filled in.
        target: the answer; scored as ``prompt + sep + target`` (join rule of ``lang``).
        lang: language code selecting the join rule (``memla.langs.join``); None joins with a space.
        cache: read and write the disk cache (`memla.neurons.cache`).
        progress: show a progress bar.
        options: the attribution settings, fields of `Options` (``layers`` (default: all),
            ``steps``, ``baseline``, ``point``, ``method``, ``max_rows``).

    Returns:
        ``(L, d_ff)`` float32 scores on the CPU, ``L = len(layers)``; multi-token
        targets give the sum of the per-token scores.

    Raises:
        DataError: empty prompt or target, or prompt + target longer than the model's context.
    """
    opts = make_options(model, **options)
    head = Head(model) if opts.method == "fast" else None
    fingerprint = model_fingerprint(model) if cache else None
    return attribute_with(model, tokenizer, prompt, target, opts, lang=lang, head=head, fingerprint=fingerprint,
                          progress=progress)


def attribute_with(
    model: nn.Module,
    tokenizer,
    prompt: str,
    target: str,
    opts: Options,
    *,
    lang: str | None,
    head: Head | None,
    fingerprint: str | None,
    progress: bool = False,
) -> Tensor:
    """`attribute` with validated `Options`, a prebuilt `Head` and an optional cache fingerprint.

    Used by `knowledge_neurons` so that the head and the fingerprint are built once per call.
    """
    example = encode(tokenizer, prompt, target, lang=lang, max_len=context_length(model))
    key = None
    if fingerprint is not None:
        # the token ids make the key exact whatever the tokenizer
        settings = {**opts.key(model, lang), "ids": list(example.ids), "n_prompt": example.n_prompt}
        key = disk.cache_key(fingerprint, prompt, target, settings)
        hit = disk.load(key)
        if hit is not None:
            return hit
    layers = list(opts.layers)
    with _bar(progress, opts, example) as tick:
        if opts.method == "fast":
            scores = attribute_fast(model, tokenizer, example, layers, steps=opts.steps, baseline=opts.baseline,
                                    point=opts.point, head=head or Head(model), max_rows=opts.max_rows,
                                    progress=tick)
        else:
            scores = attribute_reference(model, tokenizer, example, layers, steps=opts.steps,
                                         baseline=opts.baseline, point=opts.point,
                                         progress=None if tick is None else lambda: tick(1))
    if key is not None:
        disk.save(key, scores, {"prompt": prompt, "target": target, **opts.key(model, lang)})
    return scores


@contextlib.contextmanager
def _bar(show: bool, opts: Options, example):
    if not show:
        yield None
        return
    m = len(example.targets)
    if opts.method == "fast":
        paths = 1 if opts.baseline == "zero" else example.n_prompt - len(example.special)
        total, unit = m * len(opts.layers) * paths * opts.steps, "row"
    else:
        total, unit = m * len(opts.layers), "layer"
    with tqdm(total=total, unit=unit, desc="attribution", leave=False) as bar:
        yield bar.update
