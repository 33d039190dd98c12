"""Training MEND's editor networks on a dataset's dev split (Mitchell et al. 2022, §3.3, Eq. 4).

One step = one edit drawn from the training records (a record and a language):

1. the gradient factors ``(u_i, δ_i)`` of the edit loss at the edited
   down-projections (`memla.editors.mend.gradient_factors`; no weight moves);
2. ``(ũ_i, δ̃_i) = g_l(u_i, δ_i)`` and the edited forward ``W − α_l Σ δ̃ ũᵀ``,
   added through hooks as a low-rank term (the model is never modified);
3. ``L = c_edit · L_e + c_loc · L_loc``: ``L_e`` the mean NLL of ``target_new`` on
   the edit prompt and ``n_paraphrases`` paraphrases after the edit, ``L_loc`` the
   KL(pre-edit ‖ post-edit) of the next-token distributions where the answers of
   ``n_locality`` neighbourhood prompts are predicted;
4. one Adam step on the editor networks (lr) and the edit steps ``α_l`` (lr_lr),
   gradient norm clipped.

The checkpoint is written every ``save_every`` steps and at the end.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from memla.atomic import atomic_path, write_json_atomic
from memla.config import config_to_dict
from memla.devices import input_device
from memla.editors._train import added_outputs, down_name, teacher_batch
from memla.editors.mend import (
    FORMAT,
    META,
    WEIGHTS,
    MendConfig,
    MendNet,
    default_checkpoint_dir,
    gradient_factors,
    resolve_layers,
)
from memla.errors import MemlaError
from memla.models import arch_spec, mlp_dims, model_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MendTrainResult:
    """What `train_mend` did.

    Attributes:
        directory: the checkpoint directory.
        steps: training steps run.
        seconds: wall time of the training loop.
        history: per logged window, the mean losses and edit success.
    """

    directory: Path
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(directory: str | os.PathLike, net: MendNet, meta: dict[str, Any]) -> Path:
    """Write ``mend.safetensors`` and ``mend.json`` into ``directory`` (each atomically).

    Returns:
        The directory.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(out / META, {"format": FORMAT, **meta}, indent=2)
    return out


def checkpoint_meta(model: nn.Module, net: MendNet, config: MendConfig, **extra: Any) -> dict[str, Any]:
    """The JSON metadata stored beside the weights: architecture, model fingerprint, training config."""
    d_model, d_ff = mlp_dims(model)
    return {
        "model_fingerprint": model_fingerprint(model),
        "model_type": arch_spec(model).model_type,
        "layers": list(net.layers),
        "d_model": d_model,
        "d_ff": d_ff,
        "rank": config.rank,
        "n_hidden": config.n_hidden,
        "config": config_to_dict(config),
        **extra,
    }


def _examples(records, langs: Sequence[str]) -> list[tuple[Any, str]]:
    """``(record, lang)`` pairs usable for training: a filled edit prompt and a new target."""
    out = []
    for record in records:
        for lang in (record.edit if langs == ("all",) else [k for k in langs if k in record.edit]):
            fact = record.edit[lang]
            if fact.subject is not None and fact.target_new:
                out.append((record, lang))
    return out


def train_mend(
    model: nn.Module,
    tokenizer,
    records,
    *,
    config: MendConfig | None = None,
    steps: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    dataset: str = "",
) -> MendTrainResult:
    """Train MEND's editor networks for ``model`` and save the checkpoint (Eq. 4).

    Args:
        model: the model to edit later (its weights never change).
        tokenizer: its tokenizer.
        records: training records (MKEB layout), e.g. the dev split of mkeb-mini.
        config: MEND settings (``None`` = defaults).
        steps: training steps (default: ``config.steps``).
        out: checkpoint directory (default: ``config.checkpoint`` or ``$MEMLA_CACHE/mend/<fingerprint>``).
        progress: show a progress bar.
        dataset: the dataset's name, stored in the checkpoint metadata.

    Returns:
        The `MendTrainResult`.
    """
    cfg = config or MendConfig()
    steps = cfg.steps if steps is None else steps
    if steps < 1:
        raise MemlaError("MEND training needs at least 1 step")
    examples = _examples(records, tuple(cfg.train_langs))
    if not examples:
        raise MemlaError("no usable training records for MEND (need edit prompts with a subject in the training languages)")
    device = input_device(model)
    directory = Path(out or cfg.checkpoint or default_checkpoint_dir(model_fingerprint(model)))
    layers = resolve_layers(model, cfg.layers)
    names = [down_name(model, layer) for layer in layers]
    d_model, d_ff = mlp_dims(model)
    net = MendNet(layers, d_model, d_ff, rank=cfg.rank, n_hidden=cfg.n_hidden, edit_lr=cfg.edit_lr, seed=cfg.seed).to(device)
    opt = torch.optim.Adam([
        {"params": list(net.transforms.parameters()), "lr": cfg.lr},
        {"params": [net.edit_lrs], "lr": cfg.lr_lr},
    ])
    rng = random.Random(cfg.seed)
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def save(done: int) -> None:
        meta = checkpoint_meta(model, net, cfg, steps=done, train_seconds=round(time.perf_counter() - t0, 1),
                               dataset=dataset, examples=len(examples), history=history)
        save_checkpoint(directory, net, meta)

    net.train()
    bar = tqdm(range(steps), desc="train-mend", unit="step", disable=not progress)
    for step in bar:
        record, lang = rng.choice(examples)
        stats = _step(model, tokenizer, net, names, record, lang, cfg, rng)
        opt.zero_grad(set_to_none=True)
        stats.pop("loss").backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        window.append(stats)
        if len(window) == 20 or step == steps - 1:
            mean = {k: _mean([w[k] for w in window]) for k in window[0]}
            history.append({"step": step + 1, **mean})
            bar.set_postfix(loss=mean["total"], edit=mean["edit"], loc=mean["loc"], es=mean["es"])
            log.info("MEND step %d: %s", step + 1, mean)
            window = []
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step != steps - 1:
            save(step + 1)
    net.eval()
    save(steps)
    seconds = time.perf_counter() - t0
    log.info("MEND trained for %d steps in %.1f s -> %s", steps, seconds, directory)
    return MendTrainResult(directory, steps, round(seconds, 1), history)


def _mean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values (NaN when there are none), rounded for the log."""
    kept = [v for v in values if v == v]
    return round(sum(kept) / len(kept), 4) if kept else float("nan")


def _step(model: nn.Module, tokenizer, net: MendNet, names: Sequence[str], record, lang: str,
          cfg: MendConfig, rng: random.Random) -> dict[str, Any]:
    """One training edit; returns the differentiable ``loss`` and float diagnostics."""
    fact = record.edit[lang]
    text = fact.filled()
    device = input_device(model)
    paraphrases = list(record.paraphrase_prompts.get(lang, ()))
    neighbours = list(zip(record.neighborhood_prompts.get(lang, ()), record.neighborhood_answers.get(lang, ())))
    equiv = [(text, fact.target_new, lang)] + [(p, fact.target_new, lang)
                                               for p in rng.sample(paraphrases, min(cfg.n_paraphrases, len(paraphrases)))]
    loc = [(p, a, lang) for p, a in rng.sample(neighbours, min(cfg.n_locality, len(neighbours)))]
    check = [(text, fact.target_true, lang)] if fact.target_true else []
    batch = teacher_batch(tokenizer, equiv + loc + check, device=device)
    n_eq, n_loc = len(equiv), len(loc)
    loc_rows = range(n_eq, n_eq + n_loc)
    # One pre-edit pass: the edit loss on row 0 gives (u, δ); the same pass gives the locality baseline.
    factors, _, pre_logits = gradient_factors(model, batch, names, rows=(0,))
    base = batch.answer_logprobs(pre_logits, rows=loc_rows) if loc else None  # (Σ n_i, V)
    edits = dict(zip(names, net.transform(factors)))
    with torch.enable_grad(), added_outputs(model, edits):
        logits = batch.logits(model)  # (N, V)
    mean_lp = batch.mean_logprob(logits)  # (S,)
    l_edit = -mean_lp[:n_eq].mean()
    if loc:
        post = batch.answer_logprobs(logits, rows=loc_rows)  # (Σ n_i, V)
        l_loc = (base.exp() * (base - post)).sum(-1).mean()  # KL(p_θ ‖ p_θ̃)
    else:
        l_loc = torch.zeros((), device=device)
    loss = cfg.c_edit * l_edit + cfg.c_loc * l_loc
    es = float(mean_lp[0] > mean_lp[-1]) if check else float("nan")
    return {"loss": loss, "total": float(loss.detach()), "edit": float(l_edit.detach()), "loc": float(l_loc.detach()), "es": es}
