"""MEMLA: neuron-masked low-rank adaptation for multilingual knowledge editing (§4.2, Eq. 5–8).

1. Locate the fact's knowledge neurons in every locating language ``k`` with
   integrated gradients (`memla.neurons`, Eq. 1–2), then split them into the
   language-independent set ``I = ∩_k N^k`` (Eq. 3) and the source-language
   specific set ``S = N^ls − I`` (Eq. 4).
2. For every layer with neurons, a language-specific editor (LSE) on ``S(l)`` and a
   language-independent editor (LIE) on ``I(l)``: ``Δ = (B A) ⊙ M`` with rank
   ``r = n · |neurons in the layer|`` (Eq. 5–7, `memla.editors.lora`).
3. Train only the LoRA factors on the source-language edit prompt (hooks add
   ``Δ x`` to the down-projection outputs; no weight moves while training):
   ``loss = w_new · NLL(target_new) + w_true · P(target_true)``.
4. Final update (Eq. 8): ``ΔW = c(Δ, W) · (Δ_s + Δ_i)`` per layer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from memla.devices import input_device, module_device
from memla.editors.base import EditRequest, EditResult, register_editor
from memla.editors.lora import MaskedLoRA, lora_hooks
from memla.errors import EditError
from memla.models import arch_spec, get_module, mlp_dims
from memla.neurons import NeuronSet, knowledge_neurons, split_language_neurons
from memla.tokens import encode_pair, forward, last_columns, left_pad, next_token_logits, pad_id, right_pad

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemlaConfig:
    """Settings of the MEMLA editor (defaults follow the paper and its reference code).

    Attributes:
        rank_per_neuron: ``n`` in ``r = n · |neurons in the layer|`` (paper: 4).
        locate_langs: languages used to locate neurons: a tuple of codes (those the
            request has; the source language is always included) or ``("all",)``.
        locate_paraphrases: also attribute the paraphrase prompts (union over prompts).
        threshold: keep neurons scoring above ``threshold × max score`` (paper: 0.3).
        thresholds: per-language overrides of ``threshold``, e.g. ``{"zh": 0.2}``.
        share: ``None`` = union over prompts (reference code); ``p`` = keep neurons found
            in at least a share ``p`` of a language's prompts (Dai et al.).
        ig_steps: Riemann steps of the integrated gradients (Eq. 2).
        ig_point: ``"down_in"`` (down-projection input) or ``"mlp_in"`` (gate/c_fc output).
        ig_baseline: ``"zero"`` or ``"sig_mean"``.
        ig_cache: reuse attributions from the disk cache (keyed by model, prompt, target, settings).
        lr: Adam learning rate of the LoRA factors.
        max_steps: most optimisation steps (reference code: 60).
        weight_new: weight of NLL(target_new) in the loss (reference code: 2.5).
        weight_true: weight of P(target_true) (length-normalised probability) in the loss (reference code: 2).
        stop_prob: stop once P(target_new) (length-normalised) exceeds this.
        stop_loss: stop once the loss falls below this.
        scale: ``"constant"`` (``c = scale_constant``) or ``"norm_ratio"``
            (``c = 0.65·exp(−x²/2) + 0.4·sigmoid(2x)``, ``x = ‖Δ‖/‖W‖``), Eq. 8.
        scale_constant: ``c`` for ``scale="constant"`` (reference code: 0.5).
        use_lse / use_lie: keep the language-specific / language-independent editor
            (Table 5 ablations "w/o LSE", "w/o LIE").
        mask_lse / mask_lie: apply the neuron masks LSM / LIM (ablations "w/o LSM", "w/o LIM").
        seed: seed of the LoRA initialisation.
    """

    rank_per_neuron: int = 4
    locate_langs: tuple[str, ...] = ("en", "zh", "fr")
    locate_paraphrases: bool = False
    threshold: float = 0.3
    thresholds: Mapping[str, float] = field(default_factory=dict)
    share: float | None = None
    ig_steps: int = 20
    ig_point: str = "down_in"
    ig_baseline: str = "zero"
    ig_cache: bool = True
    lr: float = 5e-3
    max_steps: int = 60
    weight_new: float = 2.5
    weight_true: float = 2.0
    stop_prob: float = 0.9
    stop_loss: float = 1e-2
    scale: str = "constant"
    scale_constant: float = 0.5
    use_lse: bool = True
    use_lie: bool = True
    mask_lse: bool = True
    mask_lie: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank_per_neuron < 1:
            raise ValueError("rank_per_neuron must be >= 1")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        if self.share is not None and not 0.0 < self.share <= 1.0:
            raise ValueError("share must be in (0, 1]")
        if self.ig_steps < 1 or self.max_steps < 1:
            raise ValueError("ig_steps and max_steps must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.scale not in ("constant", "norm_ratio"):
            raise ValueError(f"scale must be 'constant' or 'norm_ratio', got {self.scale!r}")
        if not (self.use_lse or self.use_lie):
            raise ValueError("at least one of use_lse / use_lie must be on")
        if isinstance(self.locate_langs, str):
            object.__setattr__(self, "locate_langs", (self.locate_langs,))
        object.__setattr__(self, "thresholds", dict(self.thresholds))


def edit_scale(cfg: MemlaConfig, delta: Tensor, weight: Tensor) -> float:
    """``c(Δ, W)`` of Eq. 8 for one layer (``weight`` in the ``[d_model, d_ff]`` orientation)."""
    return cfg.scale_constant if cfg.scale == "constant" else norm_ratio_scale(delta, weight)


def own_fact(request: EditRequest, weight: float) -> list[tuple[EditRequest, float]]:
    """``(request, weight)`` when the request has a ``target_true``: the fact the paper's loss unlearns (§4.2)."""
    return [(request, weight)] if request.target_true is not None else []


def norm_ratio_scale(delta: Tensor, weight: Tensor) -> float:
    """``c(Δ, W) = 0.65·exp(−x²/2) + 0.4·sigmoid(2x)`` with ``x = ‖Δ‖_F / ‖W‖_F`` (Eq. 8)."""
    x = float(delta.norm() / weight.float().norm())
    return 0.65 * math.exp(-x * x / 2) + 0.4 / (1 + math.exp(-2 * x))


@register_editor("memla", config=MemlaConfig, summary="MEMLA: neuron-masked LoRA (LSE + LIE), Xie et al. 2024")
class MemlaEditor:
    """MEMLA editor (§4.2): locate neurons per language, train masked LoRA, scale and merge."""

    def __init__(self, config: MemlaConfig | None = None):
        self.config = config or MemlaConfig()

    # ------------------------------------------------------------------ step 1: neurons
    def locating_langs(self, request: EditRequest) -> list[str]:
        """The languages neurons are located in: the source language first, then the
        ``locate_langs`` the request has."""
        return request.among(self.config.locate_langs)

    def locate(self, model: nn.Module, tokenizer, request: EditRequest) -> tuple[dict[str, NeuronSet], NeuronSet, NeuronSet]:
        """Per-language knowledge neurons and the split ``(I, S)`` (Eq. 1–4).

        Returns:
            ``(per_language, independent, specific)``.
        """
        cfg = self.config
        if request.target_true is None:
            raise EditError("MEMLA locates the fact's neurons with target_true; the request has none")
        per_language = {}
        for k in self.locating_langs(request):
            fact = request.in_lang(k)
            if fact.target_true is None:
                continue
            prompts = [fact.text, *(fact.paraphrases if cfg.locate_paraphrases else ())]
            per_language[k] = knowledge_neurons(
                model, tokenizer, prompts, fact.target_true, lang=k,
                threshold=cfg.threshold, thresholds=cfg.thresholds, share=cfg.share,
                steps=cfg.ig_steps, baseline=cfg.ig_baseline, point=cfg.ig_point, cache=cfg.ig_cache,
                progress=False,
            )
        independent, specific = split_language_neurons(per_language, request.lang)
        return per_language, independent, specific

    # ------------------------------------------------------------------ step 2: editors
    def build_editors(self, model: nn.Module, independent: NeuronSet, specific: NeuronSet) -> dict[int, dict[str, MaskedLoRA]]:
        """The LSE / LIE modules per layer (Eq. 5–7), honouring the ablation switches.

        Each module lives on its down-projection's device (initialised on the CPU generator first,
        so that every device starts from the same factors).
        """
        cfg = self.config
        spec = arch_spec(model)
        d_model, d_ff = mlp_dims(model)
        gen = torch.Generator().manual_seed(cfg.seed)
        editors: dict[int, dict[str, MaskedLoRA]] = {}
        parts = [("lse", specific, cfg.use_lse, cfg.mask_lse), ("lie", independent, cfg.use_lie, cfg.mask_lie)]
        for kind, neurons, used, masked in parts:
            if not used:
                continue
            for layer, indices in neurons.by_layer().items():
                editors.setdefault(layer, {})[kind] = MaskedLoRA(
                    d_model, d_ff, indices, rank_per_neuron=cfg.rank_per_neuron, masked=masked, generator=gen
                ).to(module_device(spec.down_module(model, layer)))
        if not editors:
            raise EditError("MEMLA found no neurons to edit for the enabled editors (LSE/LIE); lower the threshold")
        return editors

    def anchors(self, model: nn.Module, tokenizer, request: EditRequest) -> Anchors | None:
        """Locality anchors for training (none in the paper's MEMLA; see `memla.editors.memla_local`)."""
        return None

    def prefixes(self, model: nn.Module, tokenizer) -> tuple[str, ...]:
        """Texts put before the edit prompt in training, the first ``""`` (the paper's MEMLA: the bare prompt only)."""
        return ("",)

    @property
    def prefix_batch(self) -> int:
        """Prefixed rows per training step besides the bare prompt (`train_lora`; 0 = every prefix)."""
        return 0

    def forgotten(self, request: EditRequest) -> list[tuple[EditRequest, float]]:
        """The facts whose ``P(target_true)`` training pushes down, each with its weight in the loss
        (the paper's MEMLA: `own_fact` with ``weight_true``)."""
        return own_fact(request, self.config.weight_true)

    def kept(self, model: nn.Module, anchors: Anchors, measure: Callable[[], Tensor]) -> Tensor:
        """The next-token logits ``(N, V)`` the anchors keep: the model's as it is before this edit
        (``measure()``, `train_lora`; memla-local's ``anchor_origin`` overrides it)."""
        return measure()

    def constrain(self, model: nn.Module, tokenizer, request: EditRequest, editors: dict[int, dict[str, MaskedLoRA]],
                  anchors: Anchors | None) -> dict[str, object]:
        """Constrain the editors before training (nothing in the paper's MEMLA; see `memla.editors.memla_local`).

        Returns:
            What the edit's info should record (empty: nothing done).
        """
        return {}

    # ------------------------------------------------------------------ the edit
    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """Edit ``request`` (§4.2): returns ``ΔW = c·(Δ_s + Δ_i)`` per edited down-projection (Eq. 8)."""
        cfg = self.config
        t0 = time.perf_counter()
        per_language, independent, specific = self.locate(model, tokenizer, request)
        t_locate = time.perf_counter() - t0
        editors = self.build_editors(model, independent, specific)
        spec = arch_spec(model)
        names = {layer: spec.path(spec.mlp_down, layer) for layer in editors}
        anchors = self.anchors(model, tokenizer, request)
        preserved = self.constrain(model, tokenizer, request, editors, anchors)
        losses, probs = train_lora(
            model, tokenizer, request, {names[l]: list(e.values()) for l, e in editors.items()}, cfg, anchors=anchors,
            prefixes=self.prefixes(model, tokenizer), prefix_batch=self.prefix_batch, forgotten=self.forgotten(request),
            kept=lambda anchors, measure: self.kept(model, anchors, measure),
        )
        deltas, scales = {}, {}
        for layer, eds in editors.items():
            with torch.no_grad():
                delta = sum(e.delta() for e in eds.values())  # (d_model, d_ff)
                weight = spec.down_weight(model, layer)  # (d_model, d_ff)
                c = edit_scale(cfg, delta, weight)
                deltas[spec.down_weight_name(layer)] = spec.from_linear(c * delta).contiguous().to(weight.dtype)
                scales[layer] = c
        info = {
            "method": self.name,
            "neurons": {
                str(layer): {"specific": len(specific.layer(layer)), "independent": len(independent.layer(layer))}
                for layer in (specific | independent).layers
            },
            "neurons_per_language": {k: len(v) for k, v in per_language.items()},
            "ranks": {str(l): {k: e.rank for k, e in eds.items()} for l, eds in sorted(editors.items())},
            "scale": {str(l): c for l, c in sorted(scales.items())},
            "loss": losses,
            "p_new": probs,
            "steps": len(losses),
            **({} if anchors is None else {"anchors": anchors.describe()}),
            **({} if not preserved else {"preserved": preserved}),
            "seconds_locate": round(t_locate, 3),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditResult(deltas=deltas, info=info)


@dataclass(frozen=True)
class Anchors:
    """Next-token distributions of the unedited model that training should keep (locality anchors).

    Attributes:
        ids: left-padded anchor contexts, ``(N, T)``; the kept distribution is the one
            after the last token.
        mask: their attention mask, ``(N, T)``.
        pos: their position ids, ``(N, T)``.
        logp: the unedited model's next-token log-probabilities, ``(N, V)``, or None until they are
            measured (`measured`; `train_lora` measures them in its own batch layout).
        weight: ``λ`` of the KL term in the training loss.
        tolerance: training stops only once the KL is below this (and P(new) above ``stop_prob``).
        batch: anchors drawn (seeded, without replacement) for each training step; 0 = all.
        texts: the anchor texts (for the edit's info).
        divergence: ``"forward"`` = ``KL(p_0 ‖ p_θ)`` (mass the unedited model put somewhere must
            stay there), ``"reverse"`` = ``KL(p_θ ‖ p_0)`` (no new mass where the unedited model
            put little: catches "The capital of Japan is → Rome" directly), ``"both"`` = their sum.
        avoid: token ids whose log-probability must not rise on any anchor, ``(m,)`` (memla-local:
            the first token of ``target_new``), or None.
        avoid_weight: ``μ`` of the rise term ``mean_a Σ_t max(0, log p_θ(t|a) − log p_0(t|a))``.
        patience: once P(new) is above ``stop_prob``, training waits at most this many more
            steps for the KL to fall below ``tolerance`` (0 = up to ``max_steps``).
        labels: what each anchor is (memla-local: its language code, ``"after"``, ``"relation"`` or ``"earlier"``),
            one per row, or empty.
    """

    ids: Tensor
    mask: Tensor
    pos: Tensor
    logp: Tensor | None
    weight: float
    tolerance: float = math.inf
    batch: int = 0
    texts: tuple[str, ...] = ()
    divergence: str = "forward"
    avoid: Tensor | None = None
    avoid_weight: float = 0.0
    patience: int = 0
    labels: tuple[str, ...] = ()

    @classmethod
    def build(cls, model: nn.Module, tokenizer, contexts: Sequence[tuple[str, Sequence[int]]], *, weight: float,
              tolerance: float = math.inf, batch: int = 0, divergence: str = "forward",
              avoid: Sequence[int] = (), avoid_weight: float = 0.0, patience: int = 0,
              labels: Sequence[str] = ()) -> Anchors:
        """The anchors ``(text, token ids)``, on the model's input device, not yet measured (``logp`` None)."""
        if labels and len(labels) != len(contexts):
            raise ValueError(f"{len(labels)} labels for {len(contexts)} anchors")
        device = input_device(model)
        ids, mask, pos = left_pad([seq for _, seq in contexts], pad_id=pad_id(tokenizer), device=device)  # (N, T)
        return cls(ids, mask, pos, None, weight, tolerance, batch, tuple(text for text, _ in contexts), divergence,
                   torch.tensor(list(avoid), device=device) if avoid else None, avoid_weight, patience, tuple(labels))

    @classmethod
    def measure(cls, model: nn.Module, tokenizer, contexts: Sequence[tuple[str, Sequence[int]]], **kwargs) -> Anchors:
        """The anchors (`build`) with the model's next-token distributions as it is now (`measured`)."""
        return cls.build(model, tokenizer, contexts, **kwargs).measured(model)

    def measured(self, model: nn.Module | None = None, logits: Tensor | None = None) -> Anchors:
        """These anchors with ``logp`` from ``logits`` ``(N, V)`` or, without them, from one pass of ``model``."""
        if logits is None:
            if model is None:
                raise ValueError("Anchors.measured needs the model or its logits on the anchors")
            with torch.no_grad():
                logits = next_token_logits(model, self.ids, self.mask, self.pos)  # (N, V)
        return replace(self, logp=logits.float().log_softmax(-1))

    def __post_init__(self) -> None:
        if self.logp is None:
            return
        p = self.logp.exp()  # (N, V): the unedited distributions, fixed during training
        object.__setattr__(self, "_p", p)
        object.__setattr__(self, "_neg_entropy", (p * self.logp).sum(-1))  # (N,): Σ_v p_0 log p_0

    def terms(self, model: nn.Module, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(D, R)`` over the anchors (or the given ``rows`` of them) for the model as it is now
        (differentiable, one forward pass of the anchors; `terms_of`)."""
        ids, mask, pos = (self.ids, self.mask, self.pos) if rows is None else (self.ids[rows], self.mask[rows], self.pos[rows])
        return self.terms_of(next_token_logits(model, ids, mask, pos).float().log_softmax(-1), rows)

    def terms_of(self, logq: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(D, R)`` from the edited model's next-token log-probabilities ``logq`` ``(n, V)`` on the anchors (or the given
        ``rows`` of them): ``D = mean_a KL`` in the direction of ``divergence``, and the rise of the avoided
        tokens ``R = mean_a Σ_t max(0, log p_model(t|a) − log p_unedited(t|a))`` (0 without ``avoid``).

        The forward KL is computed as ``Σ_v p_0 log p_0 − Σ_v p_0 log p_θ`` with the first sum
        measured once, and the reverse KL only when ``divergence`` asks for it (each is a pass
        over ``(n, V)``, the vocabulary-sized part of a training step)."""
        if self.logp is None:
            raise ValueError("the anchors' unedited distributions are not measured yet (Anchors.measured)")
        logp, p, neg_entropy = (self.logp, self._p, self._neg_entropy) if rows is None else \
            (self.logp[rows], self._p[rows], self._neg_entropy[rows])
        kl = logq.new_zeros(logq.shape[0])  # (n,)
        if self.divergence in ("forward", "both"):
            kl = kl + neg_entropy - (p * logq).sum(-1)  # (n,)
        if self.divergence in ("reverse", "both"):
            kl = kl + (logq.exp() * (logq - logp)).sum(-1)  # (n,)
        if self.avoid is None:
            return kl.mean(), logq.new_zeros(())
        rise = (logq[:, self.avoid] - logp[:, self.avoid]).clamp_min(0).sum(-1).mean()  # (n, m) -> ()
        return kl.mean(), rise

    def kl(self, model: nn.Module, rows: Tensor | None = None) -> Tensor:
        """``mean_a D(p_unedited(·|a), p_model(·|a))`` (`terms`' first part)."""
        return self.terms(model, rows)[0]

    def describe(self) -> dict[str, object]:
        """What the edit's info records about the anchors."""
        return {"n": len(self.ids), "weight": self.weight, "tolerance": self.tolerance, "patience": self.patience,
                "batch": self.batch,
                "divergence": self.divergence, "texts": list(self.texts),
                **({} if self.avoid is None else {"avoid": self.avoid.tolist(), "avoid_weight": self.avoid_weight})}


def joint_batch(target: tuple[Tensor, Tensor, Tensor, Tensor], anchors: Anchors,
                pad: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The right-padded target rows and the left-padded anchors as one batch ``(S + N, W)``.

    ``target`` is ``(ids, mask, pos, keep)`` ``(S, T)``; the anchors' ``(N, T_a)``; both are
    padded to ``W = max(T, T_a)`` (the target rows on the right, which their real positions
    never attend to, the anchors on the left, masked), and ``keep`` selects the target
    positions and then each anchor's last position, so the logits of the joint pass are the
    target rows' ``(Σ n_i, V)`` followed by the anchors' ``(N, V)``.
    """
    ids, mask, pos, keep = target
    width = max(ids.shape[1], anchors.ids.shape[1])

    def widen(x: Tensor, value: int, *, left: bool) -> Tensor:  # (B, T) -> (B, W)
        extra = width - x.shape[1]
        return torch.nn.functional.pad(x, (extra, 0) if left else (0, extra), value=value)

    anchor_ids = widen(anchors.ids, pad, left=True)  # (N, W)
    return (torch.cat([widen(ids, pad, left=False), anchor_ids]),
            torch.cat([widen(mask, 1, left=False), widen(anchors.mask, 0, left=True)]),
            torch.cat([widen(pos, 0, left=False), widen(anchors.pos, 1, left=True)]),
            torch.cat([widen(keep.long(), 0, left=False).bool(), last_columns(anchor_ids)]))


def train_lora(
    model: nn.Module,
    tokenizer,
    request: EditRequest,
    loras: Mapping[str, list[MaskedLoRA]],
    cfg: MemlaConfig,
    *,
    anchors: Anchors | None = None,
    prefixes: Sequence[str] = ("",),
    prefix_batch: int = 0,
    forgotten: Sequence[tuple[EditRequest, float]] | None = None,
    kept: Callable[[Anchors, Callable[[], Tensor]], Tensor] | None = None,
) -> tuple[list[float], list[float]]:
    """Optimise the LoRA factors on the source-language edit prompt (§4.2, training objective).

    ``loss = w_new · NLL(target_new) + w_true · P(target_true)``, both length-normalised
    over the target tokens, with teacher forcing; Adam on ``A`` and ``B`` only.  With
    ``anchors`` the loss adds ``λ · KL(p_unedited ‖ p_edited)`` on the anchor positions
    (`Anchors.kl`; memla-local; a seeded mini-batch of them per step when ``anchors.batch``
    is set) and ``μ · R``, the rise of the avoided tokens on the anchors (`Anchors.terms_of`), from
    the same forward pass as the target rows (`joint_batch`), and training stops only once that KL is also below the anchors' tolerance (or
    P(new) has been above ``stop_prob`` for more than the anchors' patience).  The
    forward pass adds ``c(Δ, W) · Δ x`` with the same ``c`` as the final update (Eq. 8,
    recomputed each step, not differentiated), so that the early stop on P(new) judges
    the edit that will be applied.  (The reference code trains with ``c = 1`` and scales
    afterwards, which can undo an edit that only just passed the stop threshold.)
    With ``prefixes`` (memla-local's ``context_lengths``) the NLL term is the mean over
    ``prefix + prompt`` rows, as ROME's v* objective (ROME Eq. 4, first term); P(new) for the
    stop is the first prefix's row (``""``: the bare prompt).  With ``prefix_batch`` each step
    scores the bare prompt and a seeded draw of that many of the other prefixes (an unbiased
    estimate of the same mean over the steps, for fewer rows per step).  With ``forgotten`` (memla-local's
    ``forget_langs``) the ``P(target_true)`` term is the weighted sum over those facts: the fact's
    prompt in other languages with its own ``target_true`` (``forget_weight``).

    Args:
        model, tokenizer, request: the model, its tokenizer and the edit.
        loras: down-projection module name -> its LoRA editors, on that module's device
            (`MemlaEditor.build_editors`).
        cfg: the settings.
        anchors: locality anchors (memla-local), or None.
        prefixes: texts put before the prompt in the ``target_new`` rows, the first one ``""``.
        prefix_batch: prefixed rows per step besides the bare prompt (0 = all of them every step).
        forgotten: ``(fact, weight)`` pairs: the facts whose ``P(target_true)`` the loss pushes down
            (default `own_fact` with ``cfg.weight_true``: the request when it has a ``target_true``,
            the paper's objective).
        kept: ``kept(anchors, measure) -> (N, V)``, the next-token logits the anchors keep, given
            ``measure()``, one pass of the model as it is now in training's batch layout (default:
            ``measure()``; memla-local's ``anchor_origin``: the model before a sequential run).

    Returns:
        ``(losses, p_new)`` per step.
    """
    new = [encode_pair(tokenizer, prefix + request.text, request.target_new, request.lang) for prefix in prefixes]
    forgotten = own_fact(request, cfg.weight_true) if forgotten is None else forgotten
    true = [encode_pair(tokenizer, fact.text, fact.target_true, fact.lang) for fact, _ in forgotten]
    seqs = new + true
    device = input_device(model)
    true_weights = torch.tensor([weight for _, weight in forgotten], device=device)  # (len(true),)
    # Right padding, no mask: causal attention keeps every real position independent of the pads after it.
    ids, _ = right_pad([s.prompt_ids + s.target_ids for s in seqs], pad_id=pad_id(tokenizer), device=device)  # (S, T)
    select = torch.zeros(ids.shape, dtype=torch.bool)  # (S, T): the positions predicting a target token
    for i, s in enumerate(seqs):
        select[i, len(s.prompt_ids) - 1:len(s.prompt_ids) - 1 + len(s.target_ids)] = True
    select = select.to(device)  # the LM head runs on these rows only, gathered contiguously (N = Σ n_i)
    ones, pos = torch.ones_like(ids), torch.arange(ids.shape[1], device=device).expand_as(ids)  # (S, T): no mask needed
    n_rows, n_kept = len(seqs), int(select.sum())  # target rows; their selected positions (logits rows)
    with_anchors = anchors is not None and anchors.weight + anchors.avoid_weight > 0
    if with_anchors:  # one forward pass for the target rows and the anchors (one LM-head pass over the vocabulary)
        ids, ones, pos, select = joint_batch((ids, ones, pos, select), anchors, pad_id(tokenizer))  # (S + N, W)
        # the unedited distributions measured in this batch layout: measured in another layout they differ
        # in the last bits, and the rise term's hinge would turn such a rise into a full gradient
        def measure() -> Tensor:
            return forward(model, ids, ones, pos, logits_to_keep=select).logits[n_kept:]  # (N, V)
        with torch.no_grad():
            anchors = anchors.measured(logits=measure() if kept is None else kept(anchors, measure))
    targets = [torch.tensor(s.target_ids, device=device) for s in seqs]  # (n_i,) each
    lengths = [len(t) for t in targets]  # row i's logits follow those of the rows before it in the step
    params = [p for eds in loras.values() for e in eds for p in (e.A, e.B)]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    spec = arch_spec(model)
    weights = {name: spec.to_linear(get_module(model, name).weight) for name in loras}  # (d_model, d_ff)
    scales: dict[str, float] = {}
    draw = torch.Generator().manual_seed(cfg.seed)  # anchor mini-batches
    losses, probs = [], []
    waited = 0  # steps with P(new) > stop_prob so far (the anchors' patience)
    with lora_hooks(model, loras, scales=scales):
        for _ in range(cfg.max_steps):
            with torch.no_grad():
                for name, eds in loras.items():
                    scales[name] = edit_scale(cfg, sum(e.delta() for e in eds), weights[name])
            rows, step, chosen = None, (ids, ones, pos, select), range(n_rows)  # (S + N, W), or (S, T) without anchors
            if 0 < prefix_batch < len(new) - 1:  # the bare prompt, a draw of the prefixed rows, the forgotten facts
                drawn = (1 + torch.randperm(len(new) - 1, generator=draw)[:prefix_batch]).sort().values.tolist()
                chosen = [0, *drawn, *range(len(new), n_rows)]
            if with_anchors and 0 < anchors.batch < len(anchors.ids):
                rows = torch.randperm(len(anchors.ids), generator=draw)[:anchors.batch].to(device)  # (batch,)
            if rows is not None or len(chosen) < n_rows:
                anchor_rows = n_rows + rows if rows is not None else torch.arange(n_rows, len(ids), device=device)
                batch = torch.cat([torch.tensor(chosen, device=device), anchor_rows])  # (S' + batch,)
                step = tuple(x[batch] for x in step)
            n_step = sum(lengths[i] for i in chosen)  # the chosen target rows' selected positions
            logq = forward(model, *step[:3], logits_to_keep=step[3]).logits.float().log_softmax(-1)  # (Σ n_i [+ batch], V)
            logp, anchor_logq = logq.split([n_step, len(logq) - n_step])  # (Σ n_i, V), (batch, V); split, not
            # slices: its backward concatenates the two gradients instead of filling a zero (Σ n_i + batch, V) per slice
            mean_logp = {i: part.gather(-1, targets[i][:, None]).mean()
                         for i, part in zip(chosen, logp.split([lengths[i] for i in chosen]))}
            loss = -cfg.weight_new * torch.stack([mean_logp[i] for i in chosen if i < len(new)]).mean()
            if true:
                loss = loss + (true_weights * torch.stack([mean_logp[i] for i in range(len(new), n_rows)]).exp()).sum()
            p_new = float(mean_logp[0].detach().exp())
            done = p_new > cfg.stop_prob
            waited += done
            if with_anchors:
                kl, rise = anchors.terms_of(anchor_logq, rows)
                done = done and (anchors.weight == 0 or kl.item() < anchors.tolerance or 0 < anchors.patience < waited)
                loss = loss + anchors.weight * kl + anchors.avoid_weight * rise
            losses.append(round(loss.item(), 5))
            probs.append(round(p_new, 5))
            if done or losses[-1] < cfg.stop_loss:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return losses, probs


# --------------------------------------------------------------------------- Table 5 ablations
# Each ablation is its own registered method, so that one bench run can compare them
# (`memla bench --methods memla,memla-wo-lsm,memla-wo-lse,memla-wo-lim,memla-wo-lie`).
ABLATIONS = {
    "memla-wo-lsm": ("mask_lse", "w/o LSM: the language-specific LoRA is not neuron-masked"),
    "memla-wo-lse": ("use_lse", "w/o LSE: no language-specific editor"),
    "memla-wo-lim": ("mask_lie", "w/o LIM: the language-independent LoRA is not neuron-masked"),
    "memla-wo-lie": ("use_lie", "w/o LIE: no language-independent editor"),
}


def _ablation(name: str, switch: str, summary: str) -> type:
    config_cls = dataclass(frozen=True)(type(f"MemlaConfig_{switch}_off", (MemlaConfig,), {
        "__annotations__": {switch: bool}, switch: False,
        "__doc__": f"`MemlaConfig` with ``{switch}=False`` (Table 5, {summary.split(':')[0]}).",
    }))
    editor_cls = type(f"MemlaEditor_{switch}_off", (MemlaEditor,), {"__doc__": f"MEMLA ablation, {summary}."})
    return register_editor(name, config=config_cls, summary=f"MEMLA ablation, {summary}")(editor_cls)


for _name, (_switch, _summary) in ABLATIONS.items():
    _ablation(_name, _switch, _summary)
