"""The settings ROME, MEMIT and PMET share, and the two things a config decides at edit time.

`KeyValueConfig` holds the fields the three methods share (v* optimisation, context
prefixes, covariance statistics); each method's config subclasses it and overrides the
defaults with the values of its own paper and reference code.  `optimise_options` turns
a config into the keyword arguments of `memla.editors.kv.values.optimise_targets`, and
`layer_covariances` gives the ``C`` of the closed-form updates (statistics or identity).
Layer choices of the reference configs (GPT-J, 28 layers) are scaled to the edited
model's depth by `memla.editors.layers.scaled_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memla.devices import module_device
from memla.editors.kv.keys import ROME_SEEDS
from memla.editors.kv.stats import DTYPES, covariances
from memla.models import arch_spec

GPTJ_D_FF = 16384  # MLP width of GPT-J 6B (the reference configs' model), the scale of MEMIT's λ = 15000


@dataclass(frozen=True)
class KeyValueConfig:
    """Fields shared by `RomeConfig`, `MemitConfig` and `PmetConfig`.

    Attributes:
        covariance: ``"stats"`` (``C = E[k kᵀ]`` from `memla.editors.kv.stats`, ROME/MEMIT
            ``mom2_adjustment: true``) or ``"identity"`` (no statistics needed).
        stats_corpus: corpus of the statistics: ``"builtin"`` (offline, model-sampled text in 12 languages),
            ``"hf:NAME[:CONFIG[:SPLIT]]"`` or text file paths (see `memla.editors.kv.stats`).
        stats_samples: keys (token positions) averaged into ``C``.  The reference code
            uses 100,000 Wikipedia texts; 50,000 keys estimate a 2048-wide ``C`` well (Gemma 3
            270M on 2 CPU cores, once, cached: 3.7 min to sample the builtin corpus, then 25 s
            for three layers).
        stats_dtype: ``"float32"`` (reference ``mom2_dtype``) or ``"float64"``.
        context_lengths: ``(tokens, count)`` pairs of model-generated context prefixes
            (``context_template_length_params``); the bare prompt is always added.
        context_seeds: seed words of the generated prefixes (reference code).
        kl_prompts: essence-drift prompts of the KL term, with ``{}`` for the subject.
        steps: forward passes of the v* optimisation (``v_num_grad_steps``).
        lr: Adam learning rate of δ (``v_lr``).
        weight_decay: factor of ``‖δ‖ / ‖v₀‖²`` (``v_weight_decay``).
        kl_factor: factor of the KL term (``kl_factor``).
        clamp_norm_factor: ``‖δ‖ ≤ clamp_norm_factor · ‖v₀‖`` (``clamp_norm_factor``).
        stop_loss: stop the optimisation once the loss is below it (reference code: 5e-2).
        head_dtype: dtype of the LM-head product in the optimisation: ``"bfloat16"``
            (default; the rest stays in the model's dtype) or ``"model"`` (the head's own
            dtype, as the reference code).  On Gemma 3 270M (262k-token vocabulary, a CPU
            with bf16 units) bf16 makes ROME/MEMIT edits 1.3-1.5x faster and left every
            tested prompt's scores unchanged to ±0.1 nat; use ``"model"`` on CPUs without
            fast bf16.
        seed: seed of the prefix sampling.
    """

    covariance: str = "stats"
    stats_corpus: tuple[str, ...] = ("builtin",)
    stats_samples: int = 50_000
    stats_dtype: str = "float32"
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    context_seeds: tuple[str, ...] = ROME_SEEDS
    kl_prompts: tuple[str, ...] = ("{} is a",)
    steps: int = 20
    lr: float = 0.5
    weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2
    head_dtype: str = "bfloat16"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("stats_corpus", "context_seeds", "kl_prompts"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "context_lengths", tuple(tuple(int(x) for x in p) for p in self.context_lengths))
        if self.covariance not in ("stats", "identity"):
            raise ValueError(f"covariance must be 'stats' or 'identity', got {self.covariance!r}")
        if self.stats_dtype not in DTYPES:
            raise ValueError(f"stats_dtype must be one of {', '.join(DTYPES)}, got {self.stats_dtype!r}")
        if self.stats_samples < 1 or self.steps < 1:
            raise ValueError("stats_samples and steps must be >= 1")
        if any(len(p) != 2 or p[0] < 1 or p[1] < 0 for p in self.context_lengths):
            raise ValueError("context_lengths must hold (tokens >= 1, count >= 0) pairs")
        if not self.context_seeds or not self.stats_corpus:
            raise ValueError("context_seeds and stats_corpus must not be empty")
        if any(p.count("{}") != 1 for p in self.kl_prompts):
            raise ValueError("every kl_prompt must contain exactly one '{}'")
        if self.lr <= 0 or self.clamp_norm_factor <= 0:
            raise ValueError("lr and clamp_norm_factor must be > 0")
        if self.head_dtype not in ("model", "bfloat16"):
            raise ValueError(f"head_dtype must be 'model' or 'bfloat16', got {self.head_dtype!r}")
        if min(self.weight_decay, self.kl_factor, self.stop_loss) < 0:
            raise ValueError("weight_decay, kl_factor and stop_loss must be >= 0")


def optimise_options(cfg: KeyValueConfig) -> dict:
    """Keyword arguments of `memla.editors.kv.values.optimise_targets` from a config."""
    return dict(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, kl_factor=cfg.kl_factor,
                clamp_norm_factor=cfg.clamp_norm_factor, stop_loss=cfg.stop_loss,
                head_dtype=None if cfg.head_dtype == "model" else getattr(torch, cfg.head_dtype))


def layer_covariances(model: nn.Module, tokenizer, layers: Sequence[int], cfg: KeyValueConfig) -> dict[int, Tensor] | None:
    """``{layer: C}`` from the statistics (``covariance="stats"``), each on its layer's device, or None for the identity."""
    if cfg.covariance == "identity":
        return None
    found = covariances(model, tokenizer, layers, corpus=cfg.stats_corpus, samples=cfg.stats_samples,
                        dtype=cfg.stats_dtype, progress=True)
    spec = arch_spec(model)
    return {layer: C.to(module_device(spec.down_module(model, layer))) for layer, C in found.items()}
