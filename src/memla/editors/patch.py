"""patch: one gated neuron per edit, whose gate fires on the fact's prompt in every language.

memla-local's update is linear in the down-projection input, and a fact prompt's key is mostly the
key its template has with any other subject (`benchmarks/key_room.py`: the part outside the span of 16
other subjects' keys has 8–20% of its norm in the languages other than English, 12–30% in English), so a linear update that carries an English edit
into another language moves that language's neighbours with it.  A neuron is not linear: it acts only
where its gate fires.  `benchmarks/gate_probe.py` fits a gate on the fact prompt in all 12 languages
against prompts of the same template with other subjects; on prompts it never saw it fires on 83–89%
of the fact's paraphrases and on 8–9% of the neighbourhood prompts (layer 12 of 18, 16 dev records).
At the prompt's last token, though, some neighbours look to the gate as the fact does (P(new) ≈ 0.98 on
"The country of origin of tequila is" after editing sushi's); at the subject's last token, ROME's key
(Meng et al. 2022, §3.1), they differ by their subject, so the gate fires there by default and the value
reaches the answer through the attention of the layers above, as ROME's does.

The edit (T-Patcher's one neuron per mistake, Huang et al. 2023, §3; its gate fitted in closed form
over languages instead of trained on one prompt) repurposes neuron ``i`` of one layer's gated MLP
``down(act(gate x) ⊙ up x)``:

1. **Gate** ``gate[i] = αg``: a logistic regression ``g·x`` without bias (a gated MLP's gate projection
   has none) of the MLP input ``x``, fire at the subject's last token (``gate_at: subject``; the prompt's
   last where the subject is not in it) or at the prompt's last token (``gate_at: last``) of the fact
   prompt in every ``gate_langs`` language, not at any other token of those prompts, nor at the
   ``after_target`` tokens the unedited model writes after the prompt and ``target_new`` in that
   language (where the edited model would otherwise say the new object again and again), nor at any
   token of the edit template filled with
   the ``anchor_subjects`` pool subjects nearest to the edited one, of ``anchor_facts`` prompts of other
   relations and subjects, or of the everyday prompts, in the same languages
   (`memla.editors.memla_local.nearest_subjects`, `fact_prompts`, `GENERIC_PROMPTS`); ``α`` puts the
   highest pre-activation of those other tokens at ``−gate_margin``, where ``act`` is ≈ 0.  With
   ``gate_threshold`` ``τ > 0`` the gate is ``α(g − τ·mean(g·x_fact)·u)``: the bias it has no room for
   is read through the up row's ``u·x ≈ 1`` (item 2), so it fires only where ``g·x`` exceeds ``τ`` times
   its value on the fact.
2. **Up row** ``up[i] = β u`` with ``u·x ≈ 1`` at every token (`fit_up`) and ``β`` such that the
   activation ``act(αg·x) · βu·x`` is ≈ ``gain`` on the fact's prompts.
3. **Neuron**: the one of the layer whose contribution ``|a_i(x)| · ‖down[:, i]‖`` is smallest on those
   prompts (its old job is the least missed), never one an earlier edit of a sequential run took.
4. **Value** ``v = down[:, i]``: Adam on ``−log P(target_new | source prompt) + weight_decay · ‖v‖²``
   through the repurposed neuron, the rest of the model frozen, until P(target_new) > ``stop_prob`` or
   after ``steps`` (ROME's v*, Eq. 4, first and last term, written into one neuron instead of a rank-one
   update).

The edit is three weight deltas (one row of ``gate`` and ``up``, one column of ``down``), so it
merges, saves and restores like every other editor's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memla.devices import input_device
from memla.editors.base import EditRequest, EditResult, register_editor
from memla.editors.kv.keys import locate_request
from memla.editors.layers import check_layers, scaled_layers
from memla.editors.memla_local import GENERIC_PROMPTS, fact_prompts, nearest_subjects, template_of
from memla.editors.rome import RomeEditor
from memla.errors import EditError
from memla.hooks import trace
from memla.models import arch_spec, num_layers
from memla.samples import sample_ids
from memla.tokens import encode_pair, encode_text, forward, left_pad, pad_id


@dataclass(frozen=True)
class PatchConfig:
    """Settings of patch (defaults chosen on 16 mkeb-mini dev records: `benchmarks/patch_probe.py`, the sweep runs
    `benchmarks/results/locality_sweep_dev16/patch_*`; the numbers of ``after_target``, ``gate_threshold`` and
    ``stop_prob`` were measured with ``gate_at: last`` and ``gate_margin: 4``).

    Attributes:
        layer: the layer whose MLP gets the neuron; None = ROME's layer with ``gate_at: subject`` (GPT-J's 5
            of 28 scaled: 3 of Gemma 3 270M's 18), two thirds of the depth with ``gate_at: last`` (12 of 18,
            where `benchmarks/gate_probe.py` found the last-token gate that generalises best).
        gate_at: the token of each fact prompt the gate fires at: ``"subject"`` (the subject's last, ROME's key,
            Meng et al. 2022 Eq. 3; the prompt's last where the subject is not found: there the fact's subject
            differs from its neighbours', and the value reaches the answer through attention) or ``"last"``
            (the prompt's last, where the answer is read). On the 16 dev records, against ``last``
            (`locality_sweep_dev16/patch_v7_subject_m8` against `patch_v5_tau025`): NS-margin en / en-avg 93.8 /
            70.7, the unedited model's, against 81.2 / 66.5; NS en 55.0 against 47.4 (unedited 58.1); PS en /
            en-avg 96.9 / 71.9 against 78.1 / 66.5; ES en-avg 76.7 against 79.0; but QS en 6.2 against 37.5:
            a two-hop prompt does not name the subject, so the gate does not open.
        gate_langs: languages whose fact prompt the gate fires on (and whose anchors it must not fire
            on): ``("all",)`` every language the request has, or a tuple of codes (the source first).
        anchor_subjects: pool subjects nearest to the edited one whose template prompts are the gate's
            negatives in each language.
        anchor_facts: prompts of other relations and subjects (`fact_prompts`) that are negatives in each
            language.
        anchor_generic: the everyday prompts of each language are negatives too.
        after_target: tokens of the unedited model's greedy continuation of the prompt and ``target_new``
            (in each gate language) that are negatives, with the ``target_new`` tokens themselves; 0: the
            fact prompts alone. 16: the edited prompt's English continuation repeats the new object 1.12
            times on the 16 dev records instead of 5.81 (`patch_v4_after16` against `patch_v3_stop09`).
        gain: the neuron's activation on the fact's prompts (the up row's scale).
        gate_margin: the highest gate pre-activation on the tokens the gate must not fire on, negated. 8: an
            unseen subject's token then sits far enough below 0 that ``act`` (GELU: at least −0.17, at −0.75)
            times the value is ≈ 0; at 4, "Japan" in "The capital of Japan is" came out at ≈ −2, and −0.03 times
            the demo edit's ‖v‖ of 45 at layer 3 turned its "Tokyo" into "a city of contrasts". Dev: NS-keep en /
            en-avg 96.9 / 99.9 against 94.5 / 99.3 at 4, the other scores the same (`patch_v7_subject_m8`,
            `patch_v6_subject`).
        gate_threshold: ``τ``: the gate fires where ``g·x`` exceeds ``τ`` times its mean on the fact's prompts
            (0: where it is positive), the bias read through the up row's ``u·x ≈ 1``; higher spares more
            unseen neighbours and reaches fewer paraphrases. 0.25: on the 16 dev records PS en-avg 66.5
            (memla-local v8 66.2; 72.7 at 0, 62.5 at 0.4), NS-margin en / en-avg 81.2 / 66.5 (71.9 / 63.6 at 0,
            81.2 / 68.8 at 0.4), ES en-avg 79.0 at all three (`benchmarks/results/locality_sweep_dev16/patch_v5_*`).
        gate_l2: L2 penalty of the gate's logistic regression (on standardised inputs).
        up_ridge: ridge penalty (per token) of the up row's fit ``u·x ≈ 1``.
        steps: at most this many Adam steps on the value.  lr: their learning rate.
        stop_prob: training stops once P(target_new) (per token) exceeds this (None: all ``steps``), so
            the value is no larger than the edit needs. 0.9: on the 16 dev records the same scores as all 30
            steps (ES en-avg 83.0 against 84.1, NS-margin en / en-avg 75.0 / 61.1 against 75.0 / 60.5) with
            5.9 steps, ‖v‖ 12.6 instead of 72 and 10.5 s per edit instead of 23.6
            (`benchmarks/results/locality_sweep_dev16/patch_v3_stop09` against `patch_v3`).
        weight_decay: the value's L2 penalty.
        seed: seeds the draw of the ``anchor_facts`` prompts (every other step is deterministic: greedy
            decoding, LBFGS, Adam from a zero value).
    """

    layer: int | None = None
    gate_at: str = "subject"
    gate_langs: tuple[str, ...] = ("all",)
    anchor_subjects: int = 16
    anchor_facts: int = 0
    anchor_generic: bool = True
    after_target: int = 16
    gain: float = 4.0
    gate_margin: float = 8.0
    gate_threshold: float = 0.25
    gate_l2: float = 1e-4
    up_ridge: float = 1e-3
    steps: int = 30
    lr: float = 0.5
    stop_prob: float | None = 0.9
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.gate_langs, str):
            object.__setattr__(self, "gate_langs", (self.gate_langs,))
        object.__setattr__(self, "gate_langs", tuple(self.gate_langs))
        if self.layer is not None and self.layer < 0:
            raise ValueError("layer must be >= 0 (or None for the default of gate_at)")
        if self.gate_at not in ("last", "subject"):
            raise ValueError(f"gate_at must be 'last' or 'subject', got {self.gate_at!r}")
        if not 0.0 <= self.gate_threshold < 1.0:
            raise ValueError(f"gate_threshold must be in [0, 1), got {self.gate_threshold!r}")
        if self.stop_prob is not None and not 0.0 < self.stop_prob < 1.0:
            raise ValueError(f"stop_prob must be in (0, 1) or null, got {self.stop_prob!r}")
        if self.anchor_subjects < 1 and self.anchor_facts < 1 and not self.anchor_generic:
            raise ValueError("the gate needs negatives: anchor_subjects or anchor_facts >= 1, or anchor_generic")
        if min(self.anchor_subjects, self.anchor_facts, self.after_target, self.steps) < 0 or self.gain <= 0 \
                or self.gate_l2 < 0 or self.lr <= 0 or self.weight_decay < 0 or self.up_ridge <= 0:
            raise ValueError("anchor_subjects, anchor_facts, after_target and steps must be >= 0, gain, lr and up_ridge > 0, "
                             "gate_l2 and weight_decay >= 0")


def mlp_inputs(model: nn.Module, tokenizer, texts: list[str], layers: list[int]) -> dict[int, Tensor]:
    """The MLP's input at the last token of each text, per layer: ``(N, d_model)`` float64 each."""
    spec = arch_spec(model)
    names = {layer: spec.path(spec.mlp, layer) for layer in layers}
    ids, mask, pos = left_pad([encode_text(tokenizer, t) for t in texts], pad_id=pad_id(tokenizer), device=input_device(model))
    with torch.no_grad(), trace(model, list(names.values()), retain_input=True, retain_output=False, stop=True) as traces:
        forward(model, ids, mask, pos, logits_to_keep=1)
    return {layer: traces[name].input[:, -1].double() for layer, name in names.items()}


def token_inputs(model: nn.Module, tokenizer, seqs: list[list[int]], layer: int) -> tuple[Tensor, Tensor]:
    """The MLP's input at every token of the token sequences, sequence by sequence: ``(tokens, d_model)``
    float64, and the row of each sequence's first token ``(seqs,)``."""
    spec = arch_spec(model)
    name = spec.path(spec.mlp, layer)
    ids, mask, pos = left_pad(seqs, pad_id=pad_id(tokenizer), device=input_device(model))
    with torch.no_grad(), trace(model, [name], retain_input=True, retain_output=False, stop=True) as traces:
        forward(model, ids, mask, pos, logits_to_keep=1)
    lengths = mask.sum(1)  # (seqs,): left padding, so each sequence's tokens end its row
    return traces[name].input[mask.bool()].double(), lengths.cumsum(0) - lengths


def fit_up(x: Tensor, ridge: float) -> Tensor:
    """The up row ``u`` with ``u·x ≈ 1`` on every row of ``x`` ``(N, d)`` (ridge regression, penalty ``ridge · N``),
    so that the neuron's activation ``act(g·x) · u·x`` is ``act(g·x)``: small and negative where the gate is
    shut, as a plain gated neuron's."""
    n, d = x.shape
    gram = x.T @ x + ridge * n * torch.eye(d, dtype=x.dtype, device=x.device)  # (d, d)
    return torch.linalg.solve(gram, x.T @ torch.ones(n, dtype=x.dtype, device=x.device))  # (d,)


def fit_gate(x: Tensor, fire: Tensor, l2: float, *, bias: bool = False) -> tuple[Tensor, Tensor]:
    """A logistic regression ``σ(x·g + b)`` of ``fire`` (1 / 0) on ``x`` ``(N, d)``, classes weighted alike,
    L2 penalty ``l2`` on the weights of the standardised inputs; ``b = 0`` without ``bias`` (the gate
    projection of a gated MLP has none).  Returns ``(g, b)`` for the unscaled ``x``: ``(d,)`` and a scalar."""
    scale = x.std(0).clamp_min(1e-6)  # (d,)
    mean = x.mean(0) if bias else torch.zeros_like(scale)  # (d,)
    z = (x - mean) / scale  # (N, d)
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=bias)
    weight = torch.where(fire > 0, 0.5 / fire.sum(), 0.5 / (1 - fire).sum())  # (N,)
    opt = torch.optim.LBFGS([w, b] if bias else [w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (weight * nn.functional.binary_cross_entropy_with_logits(z @ w + b, fire, reduction="none")).sum()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    g = w.detach() / scale  # (d,)
    return g, b.detach() - mean @ g


@register_editor("patch", config=PatchConfig,
                 summary="patch: one gated neuron per edit (T-Patcher-style), its gate fitted on the fact's prompt in every language")
class PatchEditor:
    """One repurposed MLP neuron per edit (module docstring)."""

    def __init__(self, config: PatchConfig | None = None):
        self.config = config or PatchConfig()
        self.used: set[tuple[int, int]] | None = None  # (layer, neuron) taken by earlier edits inside `sequence()`

    @contextmanager
    def sequence(self) -> Iterator[None]:
        """A sequential run: no edit inside the block takes a neuron an earlier one took."""
        self.used = set()
        try:
            yield
        finally:
            self.used = None

    def layer(self, model: nn.Module) -> int:
        """The configured layer, or ROME's scaled layer (``gate_at: subject``) or two thirds of the depth (``last``)."""
        if self.config.layer is not None:
            return check_layers((self.config.layer,), model)[0]
        if self.config.gate_at == "subject":
            return scaled_layers((RomeEditor.reference_layer,), model)[0]
        return check_layers(((2 * num_layers(model)) // 3,), model)[0]

    def prompts(self, model: nn.Module, tokenizer, request: EditRequest) -> tuple[list[str], list[str]]:
        """The gate's positives (the fact prompt per gate language) and negative prompts (the template with the
        nearest pool subjects, other facts, everyday prompts)."""
        cfg = self.config
        langs = request.among(cfg.gate_langs)
        neighbours = nearest_subjects(model, tokenizer, request.subject, request.lang, cfg.anchor_subjects) \
            if request.subject and cfg.anchor_subjects else []
        facts = fact_prompts(request, langs, cfg.anchor_facts, cfg.seed) if cfg.anchor_facts else {}
        fire, quiet = [], []
        for k in langs:
            fact = request.in_lang(k)
            fire.append(fact.text)
            template = template_of(fact)
            quiet += [template.replace("{}", e[k]) for e in neighbours if k in e] if template else []
            quiet += facts.get(k, [])
            quiet += list(GENERIC_PROMPTS.get(k, ())) if cfg.anchor_generic else []
        if not quiet:
            raise EditError(f"patch: no anchor prompt for the gate in {', '.join(langs)} (no subject, no everyday prompts)")
        return fire, quiet

    def sequences(self, model: nn.Module, tokenizer, request: EditRequest) -> tuple[list[list[int]], list[int]]:
        """Token ids of every text the gate is fitted on, and the positions the gate fires at.

        Returns:
            ``(seqs, fire)``: per gate language the fact prompt followed (``after_target`` > 0) by
            ``target_new`` and the unedited model's greedy continuation of ``after_target`` tokens, then the
            negative `prompts`; ``fire[j]`` is the position in ``seqs[j]`` of the subject's last token
            (``gate_at: subject``) or of the prompt's last (``gate_at: last``), the only one the gate fires at.
        """
        cfg = self.config
        _, quiet = self.prompts(model, tokenizer, request)
        facts = [request.in_lang(k) for k in request.among(cfg.gate_langs)]
        pairs = [encode_pair(tokenizer, f.text, f.target_new, f.lang) for f in facts]
        seqs = [list(e.prompt_ids) for e in pairs]
        if cfg.gate_at == "subject":  # the subject's last token (the prompt's last where the subject is not found)
            fire = [locate_request(tokenizer, f, ids=ids).pos for f, ids in zip(facts, seqs)]
        else:
            fire = [len(ids) - 1 for ids in seqs]
        if cfg.after_target:
            seqs = sample_ids(model, tokenizer, [e.prompt_ids + e.target_ids for e in pairs],
                              new_tokens=cfg.after_target, top_k=1)  # greedy
        return seqs + [encode_text(tokenizer, text) for text in quiet], fire

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """Repurpose one neuron so that it fires on the fact in every gate language and says ``target_new``.

        Returns:
            `EditResult` with the deltas of one row of the gate and up projections and one column of the
            down projection; ``info`` has the layer, the neuron, P(target_new) before each step and after
            the last (per-token, the mean log-probability's exp), the shares of the fact prompts' last
            tokens and of the other fitted tokens the merged gate fires on, the bias it carries through
            the up row, and timings.
        """
        cfg = self.config
        t0 = time.perf_counter()
        spec = arch_spec(model)
        if not spec.gated:
            raise EditError("patch needs a gated MLP (act(gate x) * up x); this model has a single input projection")
        layer = self.layer(model)
        mlp = model.get_submodule(spec.path(spec.mlp, layer))
        gate_w, up_w = (model.get_submodule(spec.path(p, layer)).weight for p in spec.mlp_in)  # (d_ff, d_model) each
        down_w = spec.down_module(model, layer).weight  # (d_model, d_ff)
        act = mlp.act_fn

        seqs, fire = self.sequences(model, tokenizer, request)
        tokens, first = token_inputs(model, tokenizer, seqs, layer)  # (N, d_model), (seqs,)
        labels = torch.zeros(len(tokens), dtype=tokens.dtype, device=tokens.device)  # (N,)
        labels[first[: len(fire)] + torch.tensor(fire, device=first.device)] = 1.0
        g, _ = fit_gate(tokens, labels, cfg.gate_l2)  # (d_model,): bias-free, as a gate projection
        u = fit_up(tokens, cfg.up_ridge)  # (d_model,): u·x ≈ 1
        if cfg.gate_threshold:  # the bias −τ·mean(g·x_fact) the gate projection lacks, read through u·x ≈ 1
            g = g - cfg.gate_threshold * (tokens[labels == 1] @ g).mean() * u  # (d_model,)
        score = tokens @ g  # (N,)
        mean_fire, top_quiet = score[labels == 1].mean(), score[labels == 0].max()
        if mean_fire <= max(float(top_quiet), 0.0):
            raise EditError(f"patch: no gate at layer {layer} separates the fact's prompts from the other tokens")
        alpha = cfg.gate_margin / max(float(-top_quiet), 0.05 * float(mean_fire))  # the rest's top: −gate_margin
        gate_vec = alpha * g  # (d_model,)
        pre = tokens @ gate_vec  # (N,)
        u = u * cfg.gain / act(alpha * mean_fire)  # the activation act(z) · u·x is ≈ gain on the fact's prompts

        with torch.no_grad():
            xf = tokens.to(gate_w.dtype)
            old = act(xf @ gate_w.T) * (xf @ up_w.T)  # (N, d_ff): the layer's neuron activations
            cost = old.abs().mean(0) * down_w.norm(dim=0)  # (d_ff,): each neuron's contribution on these prompts
            taken = [i for (lay, i) in (self.used or ()) if lay == layer]
            cost[taken] = float("inf")
            neuron = int(cost.argmin())

        gate_row, up_row = gate_vec.to(gate_w.dtype), u.to(up_w.dtype)  # (d_model,) each
        value = torch.zeros(down_w.shape[0], dtype=down_w.dtype, device=down_w.device, requires_grad=True)  # (d_model,)
        old_gate, old_up, old_down = gate_w[neuron].clone(), up_w[neuron].clone(), down_w[:, neuron].clone()

        def patched(module, args, output):  # output − old neuron i + the new one
            h = args[0]  # (B, T, d_model)
            before = act(h @ old_gate) * (h @ old_up)  # (B, T)
            after = act(h @ gate_row) * (h @ up_row)  # (B, T)
            return output - before[..., None] * old_down + after[..., None] * value  # (B, T, d_model)

        enc = encode_pair(tokenizer, request.text, request.target_new, request.lang)
        ids = torch.tensor([enc.prompt_ids + enc.target_ids], device=input_device(model))  # (1, T)
        n = len(enc.target_ids)
        opt = torch.optim.Adam([value], lr=cfg.lr)
        p_new: list[float] = []
        frozen = [p for p in model.parameters() if p.requires_grad]
        handle = mlp.register_forward_hook(patched)
        try:
            for p in frozen:
                p.requires_grad_(False)
            for step in range(cfg.steps + 1):
                with torch.set_grad_enabled(step < cfg.steps):
                    logits = model(input_ids=ids).logits[0, -n - 1:-1].float()  # (n, V)
                    logp = logits.log_softmax(-1).gather(1, ids[0, -n:, None]).mean()
                p_new.append(round(float(logp.detach().exp()), 6))
                if step == cfg.steps or (cfg.stop_prob is not None and p_new[-1] > cfg.stop_prob):
                    break  # the last pass only measures the trained value
                loss = -logp + cfg.weight_decay * value.pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            handle.remove()
            for p in frozen:
                p.requires_grad_(True)
        if self.used is not None:
            self.used.add((layer, neuron))

        deltas = {}
        for weight, index, new, was in ((gate_w, (neuron,), gate_row, old_gate), (up_w, (neuron,), up_row, old_up),
                                        (down_w, (slice(None), neuron), value.detach(), old_down)):
            delta = torch.zeros_like(weight)
            delta[index] = new - was
            deltas[_param_name(model, weight)] = delta
        info = {
            "method": "patch",
            "layer": layer,
            "neuron": neuron,
            "replaced_cost": round(float(cost[neuron]), 6),
            "fires_fact": round(float((pre[labels == 1] > 0).double().mean()), 4),
            "fires_other": round(float((pre[labels == 0] > 0).double().mean()), 4),
            "gate_fact_pre": round(float(alpha * mean_fire), 4),
            "up_spread": round(float((tokens @ u).std()), 4),
            "gate_langs": len(fire),
            "gate_tokens": len(tokens),
            "p_new": p_new,
            "steps": len(p_new) - 1,
            "value_norm": round(float(value.detach().norm()), 5),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditResult(deltas=deltas, info=info)


def _param_name(model: nn.Module, weight: Tensor) -> str:
    """The name of parameter ``weight`` in ``model``."""
    return next(name for name, p in model.named_parameters() if p is weight)
