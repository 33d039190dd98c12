"""MEND: model editor networks with gradient decomposition (Mitchell et al. 2022).

For a down-projection ``y = W u`` the fine-tuning gradient of the edit loss is a
sum of rank-1 terms, ``∇W = Σ_i δ_i u_iᵀ`` over token positions ``i`` (``u_i`` the
layer input, ``δ_i = ∂L/∂y_i``; §3.1).  A per-layer editor network ``g_l`` maps
each normalised pair ``[u_i; δ_i]`` to ``[ũ_i; δ̃_i]`` and the edit is
``W̃ = W − α_l Σ_i δ̃_i ũ_iᵀ`` with a learned per-layer step ``α_l`` (Eq. 2–3).
``g_l`` is MEND's low-rank identity-initialised MLP (``IDMLP``: ``n_hidden + 1``
blocks ``z ↦ z + act(U V z + b)`` with ``U = 0`` at init, so the untrained
network passes the gradient through); inputs are standardised with running
per-dimension means and standard deviations collected during training (§3.2).

Training (`memla.editors.mend_train`, ``memla train-mend``) minimises
``c_edit · L_e + c_loc · L_loc`` (Eq. 4): ``L_e`` the NLL of the new target on the
edit prompt and its paraphrases after the edit, ``L_loc`` the KL from the
pre-edit to the post-edit distribution on neighbourhood prompts.  The checkpoint
(safetensors + JSON) lives under ``$MEMLA_CACHE/mend/<model fingerprint>/``.

Defaults (MEND code ``config/alg/mend.yaml``, EasyEdit ``hparams/TRAINING/MEND``):
the MLPs of the last 3 blocks (here their down-projections only), ``rank = 1920``,
``n_hidden = 1``, ``edit_lr = 1e-4``, ``lr_lr = 1e-4``, ``c_edit = 0.1``,
``c_loc = 1.0``, ``grad_clip = 100``.  The hypernetwork learning rate is 1e-4
instead of the reference 1e-6, because memla trains for hundreds of steps on a
CPU rather than the reference's 100k iterations.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from memla.devices import input_device
from memla.editors._train import TeacherBatch, down_name, teacher_batch
from memla.editors.base import EditRequest, EditResult, register_editor
from memla.errors import EditError
from memla.hooks import trace
from memla.models import arch_spec, cache_dir, model_fingerprint, num_layers

log = logging.getLogger(__name__)

WEIGHTS = "mend.safetensors"
META = "mend.json"
FORMAT = "memla-mend/1"


@dataclass(frozen=True)
class MendConfig:
    """Settings of MEND (architecture and training; editing reads the architecture from the checkpoint).

    Attributes:
        layers: edited down-projections; ``None`` = the last 3 blocks (MEND §5).
        rank: rank of each low-rank block of the editor MLP (code: 1920; capped at its width).
        n_hidden: hidden blocks of the editor MLP (code: 1).
        edit_lr: initial per-layer edit step ``α_l`` (code: 1e-4).
        lr: Adam learning rate of the editor networks (code: 1e-6 over 100k steps; 1e-4 here).
        lr_lr: Adam learning rate of the ``α_l`` (code: 1e-4).
        c_edit: weight of the edit loss ``L_e`` (code: 0.1).
        c_loc: weight of the locality loss ``L_loc`` (code: 1.0).
        grad_clip: gradient-norm clip of the outer step (code: 100).
        steps: training steps of ``memla train-mend`` (one edit per step).
        n_paraphrases: paraphrases per step added to ``L_e`` (besides the edit prompt).
        n_locality: neighbourhood prompts per step in ``L_loc``.
        train_langs: languages edits are drawn from while training; ``("all",)`` = every language a record has.
        save_every: write the checkpoint every this many steps (0 = only at the end).
        seed: seed of the editor initialisation and the training sample order.
        checkpoint: checkpoint directory to load (editing) or write (training);
            ``None`` = ``$MEMLA_CACHE/mend/<model fingerprint>``.
    """

    layers: tuple[int, ...] | None = None
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    lr: float = 1e-4
    lr_lr: float = 1e-4
    c_edit: float = 0.1
    c_loc: float = 1.0
    grad_clip: float = 100.0
    steps: int = 500
    n_paraphrases: int = 2
    n_locality: int = 2
    train_langs: tuple[str, ...] = ("all",)
    save_every: int = 100
    seed: int = 0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train_langs, str):
            object.__setattr__(self, "train_langs", (self.train_langs,))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
            if not self.layers:
                raise ValueError("layers must name at least one layer (or be null for the last 3)")
        if self.rank < 1 or self.n_hidden < 0:
            raise ValueError("rank must be >= 1 and n_hidden >= 0")
        if min(self.edit_lr, self.lr, self.lr_lr) <= 0:
            raise ValueError("edit_lr, lr and lr_lr must be > 0")
        if self.c_edit < 0 or self.c_loc < 0 or self.grad_clip <= 0:
            raise ValueError("c_edit and c_loc must be >= 0, grad_clip > 0")
        if self.steps < 1 or self.n_paraphrases < 0 or self.n_locality < 0 or self.save_every < 0:
            raise ValueError("steps must be >= 1; n_paraphrases, n_locality, save_every >= 0")


class LowRankBlock(nn.Module):
    """``z ↦ z + act(U (V z) + b)``, ``U = 0`` at init (MEND's ``LRLinear`` with ``init="id"``).

    Args:
        dim: input and output width.
        rank: inner rank (capped at ``dim``).
        relu: apply a ReLU (hidden blocks) or not (the output block).
        generator: RNG of ``V``'s initialisation.
    """

    def __init__(self, dim: int, rank: int, *, relu: bool, generator: torch.Generator | None = None):
        super().__init__()
        rank = min(rank, dim)
        self.v = nn.Parameter(torch.randn(rank, dim, generator=generator) / math.sqrt(dim))  # (r, dim)
        self.u = nn.Parameter(torch.zeros(dim, rank))  # (dim, r)
        self.bias = nn.Parameter(torch.zeros(dim))  # (dim,)
        self.relu = relu

    def forward(self, z: Tensor) -> Tensor:
        pre = (z @ self.v.T) @ self.u.T + self.bias  # (N, dim)
        return z + (pre.clamp(min=0) if self.relu else pre)


class GradientTransform(nn.Module):
    """``g_l``: standardise ``[u; δ]`` with running statistics, then the identity-initialised MLP (§3.2).

    Args:
        d_ff: width of ``u`` (the down-projection input).
        d_model: width of ``δ`` (the down-projection output gradient).
        rank: rank of the MLP blocks.
        n_hidden: hidden blocks.
        generator: RNG of the initialisation.
    """

    def __init__(self, d_ff: int, d_model: int, *, rank: int, n_hidden: int, generator: torch.Generator | None = None):
        super().__init__()
        self.d_ff, self.d_model = d_ff, d_model
        dim = d_ff + d_model
        self.blocks = nn.ModuleList([LowRankBlock(dim, rank, relu=i < n_hidden, generator=generator) for i in range(n_hidden + 1)])
        self.register_buffer("mean", torch.zeros(dim))  # (dim,) running mean of [u; δ]
        self.register_buffer("m2", torch.zeros(dim))  # (dim,) running sum of squared deviations
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update_stats(self, z: Tensor) -> None:
        """Merge a batch ``(N, dim)`` into the running mean / variance (Chan et al.; MEND's Welford counter)."""
        n = z.shape[0]
        mean_b = z.mean(0)  # (dim,)
        m2_b = ((z - mean_b) ** 2).sum(0)  # (dim,)
        total = float(self.count) + n
        diff = mean_b - self.mean
        self.m2 += m2_b + diff ** 2 * float(self.count) * n / total
        self.mean += diff * n / total
        self.count.fill_(total)

    def forward(self, u: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``(u (N, d_ff), δ (N, d_model)) -> (ũ, δ̃)``; updates the statistics in training mode."""
        z = torch.cat([u, delta], -1).float()  # (N, dim)
        if self.training:
            self.update_stats(z)
        if float(self.count) < 2:  # too few rows seen for a variance (first step of a 1-token target)
            std = torch.ones_like(self.mean)  # (dim,)
        else:
            std = (self.m2 / (self.count - 1)).sqrt().float()  # (dim,)
        out = (z - self.mean) / (std + 1e-7)  # (N, dim)
        for block in self.blocks:
            out = block(out)
        return out[:, : self.d_ff], out[:, self.d_ff:]  # (N, d_ff), (N, d_model)


@dataclass(frozen=True)
class LayerEdit:
    """One layer's MEND edit ``ΔW = −α Σ_i δ̃_i ũ_iᵀ`` (Eq. 3), kept as its factors.

    Attributes:
        u: the transformed inputs ``ũ``, ``(N, d_ff)``.
        delta: the transformed output gradients ``δ̃``, ``(N, d_model)``.
        alpha: the learned step ``α_l`` (0-d).
    """

    u: Tensor
    delta: Tensor
    alpha: Tensor

    def weight(self) -> Tensor:
        """``ΔW`` in the ``nn.Linear`` orientation, ``(d_model, d_ff)``."""
        return -self.alpha * (self.delta.T @ self.u)  # (d_model, d_ff)

    def __call__(self, x: Tensor) -> Tensor:
        """``ΔW x`` for layer inputs ``x`` ``(B, T, d_ff)`` without forming ``ΔW``: ``−α (x ũᵀ) δ̃``."""
        return -self.alpha * ((x.float() @ self.u.T) @ self.delta)  # (B, T, N) @ (N, d_model) -> (B, T, d_model)


class MendNet(nn.Module):
    """The editor networks ``g_l`` and learned steps ``α_l`` of the edited layers.

    Args:
        layers: edited layer indices.
        d_model: model width.
        d_ff: MLP width.
        rank: rank of the MLP blocks.
        n_hidden: hidden blocks.
        edit_lr: initial ``α_l``.
        seed: initialisation seed.
    """

    def __init__(self, layers: Sequence[int], d_model: int, d_ff: int, *, rank: int, n_hidden: int, edit_lr: float, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = tuple(int(x) for x in layers)
        self.transforms = nn.ModuleList(
            [GradientTransform(d_ff, d_model, rank=rank, n_hidden=n_hidden, generator=gen) for _ in self.layers]
        )
        self.edit_lrs = nn.Parameter(torch.full((len(self.layers),), float(edit_lr)))  # (n_layers,)

    def transform(self, factors: Sequence[tuple[Tensor, Tensor]]) -> list[LayerEdit]:
        """Per edited layer, the edit ``−α_l Σ_i δ̃_i ũ_iᵀ`` from the gradient factors ``(u, δ)`` (Eq. 3).

        The networks run on this module's device; each edit comes back on the device of its
        factors (its layer's), where it meets the layer's activations and weight.
        """
        device = self.edit_lrs.device
        edits = []
        for i, (g, (u, d)) in enumerate(zip(self.transforms, factors)):
            u_t, d_t = g(u.to(device), d.to(device))  # (N, d_ff), (N, d_model)
            edits.append(LayerEdit(u_t.to(u.device), d_t.to(d.device), self.edit_lrs[i].to(u.device)))
        return edits


def gradient_factors(model: nn.Module, batch: TeacherBatch, names: Sequence[str], *, rows: Sequence[int] = (0,)
                     ) -> tuple[list[tuple[Tensor, Tensor]], float, Tensor]:
    """The rank-1 factors ``(u_i, δ_i)`` of the down-projection gradients of the edit loss (§3.1).

    Args:
        model: the model (weights untouched; gradients w.r.t. module outputs only).
        batch: a teacher-forcing batch holding the edit example(s).
        names: the down-projection module paths.
        rows: the rows of ``batch`` whose mean NLL is the edit loss; the other rows get
            no gradient (their forward pass is reused by the caller, e.g. as pre-edit logits).

    Returns:
        ``([(u (N, d_ff), δ (N, d_model)) per name], loss, logits)`` with the detached
        pre-edit logits ``(N, V)`` (see `TeacherBatch`); positions where ``u`` or ``δ`` is all zero
        (no gradient) are dropped, as in MEND's code.
    """

    def leaf(out: Tensor, name: str) -> Tensor:
        # The lowest edited layer's output becomes a leaf so that autograd can reach it.
        return out if out.requires_grad else out.detach().requires_grad_(True)

    with torch.enable_grad(), trace(model, list(names), retain_input=True, edit=leaf) as tr:
        logits = batch.logits(model)  # (N, V)
        loss = -batch.mean_logprob(logits)[list(rows)].mean()
        grads = torch.autograd.grad(loss, [tr[n].output for n in names])
    factors = []
    for name, g in zip(names, grads):
        u = tr[name].input.detach().reshape(-1, tr[name].input.shape[-1]).float()  # (S·T, d_ff)
        d = g.detach().reshape(-1, g.shape[-1]).float()  # (S·T, d_model)
        keep = (u != 0).any(-1) & (d != 0).any(-1)  # (S·T,)
        factors.append((u[keep], d[keep]))
    return factors, float(loss.detach()), logits.detach()


# --------------------------------------------------------------------------- checkpoints


def default_checkpoint_dir(fingerprint: str) -> Path:
    """``$MEMLA_CACHE/mend/<fingerprint>``: where ``memla train-mend`` writes by default."""
    return cache_dir() / "mend" / fingerprint


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> tuple[int, ...]:
    """The edited layers (``None`` = the last 3), as non-negative indices."""
    n = num_layers(model)
    if layers is None:
        return tuple(range(max(0, n - 3), n))
    for layer in layers:
        down_name(model, layer)  # range check
    return tuple(sorted({layer % n for layer in layers}))


def load_checkpoint(directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[MendNet, dict[str, Any]]:
    """Read a checkpoint written by `memla.editors.mend_train.save_checkpoint`.

    Returns:
        ``(net, meta)``; ``net`` is in eval mode.
    """
    path = Path(directory)
    meta = json.loads((path / META).read_text())
    if meta.get("format") != FORMAT:
        raise EditError(f"{path / META}: not a memla MEND checkpoint (format {meta.get('format')!r})")
    net = MendNet(meta["layers"], meta["d_model"], meta["d_ff"], rank=meta["rank"], n_hidden=meta["n_hidden"], edit_lr=0.0)
    net.load_state_dict(load_file(str(path / WEIGHTS)))
    return net.to(device).eval(), meta


@register_editor("mend", config=MendConfig, summary="MEND: gradient-decomposition editor networks (Mitchell et al. 2022)")
class MendEditor:
    """MEND editor: transforms the edit gradient with a trained hypernetwork (needs ``memla train-mend``)."""

    def __init__(self, config: MendConfig | None = None):
        self.config = config or MendConfig()
        self._nets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (net, meta, directory)

    def hypernet(self, model: nn.Module) -> tuple[MendNet, dict[str, Any], Path]:
        """The trained editor of ``model`` (loaded once per model).

        Raises:
            EditError: no checkpoint, or one trained for another model.
        """
        if model not in self._nets:
            fingerprint = model_fingerprint(model)
            directory = Path(self.config.checkpoint) if self.config.checkpoint else default_checkpoint_dir(fingerprint)
            if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
                raise EditError(
                    f"no MEND checkpoint for this model (fingerprint {fingerprint}) in {directory}; "
                    "train one first with `memla train-mend --model <the same model>` "
                    "(or set checkpoint: DIR in the MEND config)"
                )
            net, meta = load_checkpoint(directory, device=input_device(model))
            if meta.get("model_fingerprint") != fingerprint:
                raise EditError(
                    f"the MEND checkpoint in {directory} was trained for model {meta.get('model_fingerprint')}, "
                    f"not this one ({fingerprint}); run `memla train-mend` for this model"
                )
            self._nets[model] = (net, meta, directory)
        return self._nets[model]

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """One MEND edit: ``ΔW_l = −α_l Σ_i δ̃_i ũ_iᵀ`` for every edited layer (Eq. 2–3).

        Args:
            model: the model (unchanged).
            tokenizer: its tokenizer.
            request: the fact, in the source language.

        Returns:
            ``deltas`` for the edited down-projections, in each weight's own layout.
        """
        t0 = time.perf_counter()
        net, meta, directory = self.hypernet(model)
        spec = arch_spec(model)
        names = [down_name(model, layer) for layer in net.layers]
        batch = teacher_batch(tokenizer, [(request.text, request.target_new, request.lang)], device=input_device(model))
        factors, loss, _ = gradient_factors(model, batch, names)
        deltas, norms = {}, {}
        with torch.no_grad():
            for layer, edit in zip(net.layers, net.transform(factors)):
                delta = spec.from_linear(edit.weight()).contiguous()  # the weight's own layout
                deltas[spec.down_weight_name(layer)] = delta
                norms[str(layer)] = round(float(delta.norm()), 6)
        info = {
            "method": "mend",
            "layers": list(net.layers),
            "edit_loss_before": round(loss, 5),
            "delta_norm": norms,
            "edit_lrs": [round(a, 8) for a in net.edit_lrs.detach().tolist()],
            "checkpoint": str(directory),
            "trained_steps": meta.get("steps"),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditResult(deltas=deltas, info=info)
