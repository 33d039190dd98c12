"""Helpers shared by the gradient-based baselines (FT-L, MEND): teacher-forced batches and delta hooks.

`teacher_batch` encodes ``(prompt, target, lang)`` triples by the DESIGN.md join
rule (`memla.tokens.encode_pair`) into one left-padded batch with the
evaluator's attention mask and position ids (`memla.tokens.left_pad`),
so training scores what evaluation scores.  Only the positions that predict
target tokens go through the LM head (a boolean ``logits_to_keep``), which
matters for 262k-vocabulary models.

`added_outputs` adds a trainable term to named modules' outputs through
`memla.hooks.trace`, so editors train deltas without touching a weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memla.errors import EditError
from memla.hooks import trace
from memla.models import ArchSpec, arch_spec, num_layers
from memla.tokens import encode_pair, forward, left_pad, pad_id


@dataclass(frozen=True)
class TeacherBatch:
    """Left-padded ``prompt + target`` rows and the positions that predict the targets.

    Only those positions go through the LM head (a boolean ``logits_to_keep``), so
    the logits are ``(N, V)`` with ``N = Σ_i n_i``, rows one after the other.

    Attributes:
        ids: token ids, ``(S, T)``.
        mask: attention mask, ``(S, T)`` (0 on the leading pads).
        pos: position ids, ``(S, T)`` (real tokens count from 0).
        select: the target-predicting positions, ``(S, T)`` bool.
        offsets: per row, where its positions start in the ``(N, V)`` logits.
        targets: per row, its target token ids ``(n_i,)``.
        clean: per row, whether the prompt/target token split was clean.
    """

    ids: Tensor
    mask: Tensor
    pos: Tensor
    select: Tensor
    offsets: tuple[int, ...]
    targets: tuple[Tensor, ...]
    clean: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def logits(self, model: nn.Module) -> Tensor:
        """Forward pass; the float logits at the target-predicting positions, ``(N, V)``."""
        return forward(model, self.ids, self.mask, self.pos, logits_to_keep=self.select).logits.float()

    def target_logprobs(self, logits: Tensor) -> list[Tensor]:
        """Per row, ``log P(target token j | prefix)`` under teacher forcing, ``(n_i,)`` each.

        Args:
            logits: ``(N, V)`` from `logits`.
        """
        return [lp.gather(-1, t[:, None])[:, 0] for lp, t in zip(self._rows(logits, range(len(self))), self.targets)]

    def mean_logprob(self, logits: Tensor) -> Tensor:
        """Length-normalised target log-probability per row, ``(S,)`` (the ES/PS quantity)."""
        return torch.stack([lp.mean() for lp in self.target_logprobs(logits)])

    def answer_logprobs(self, logits: Tensor, *, rows: Sequence[int] | None = None) -> Tensor:
        """Full next-token log-distributions at the target-predicting positions of ``rows``, ``(Σ n_i, V)``.

        Args:
            logits: ``(N, V)`` from `logits`.
            rows: the rows to take (default: all).
        """
        return torch.cat(self._rows(logits, range(len(self)) if rows is None else rows))

    def _rows(self, logits: Tensor, rows: Sequence[int]) -> list[Tensor]:
        return [logits[self.offsets[i]:self.offsets[i] + len(self.targets[i])].log_softmax(-1) for i in rows]  # (n_i, V)


def teacher_batch(tokenizer, items: Sequence[tuple[str, str, str]], *, device: torch.device | str = "cpu") -> TeacherBatch:
    """Encode ``(prompt, target, lang)`` triples into one left-padded teacher-forcing batch.

    Args:
        tokenizer: the model's tokenizer.
        items: prompts (subject written in), targets and their languages (the join separator).
        device: where the ids go.

    Returns:
        The `TeacherBatch`.
    """
    if not items:
        raise ValueError("teacher_batch needs at least one item")
    encs = [encode_pair(tokenizer, p, t, lang) for p, t, lang in items]
    ids, mask, pos = left_pad([e.prompt_ids + e.target_ids for e in encs], pad_id=pad_id(tokenizer), device=device)
    width = ids.shape[1]
    select = torch.zeros(ids.shape, dtype=torch.bool)  # (S, T), filled here and moved once
    offsets, total = [], 0
    for i, e in enumerate(encs):
        n = len(e.target_ids)
        select[i, width - n - 1:width - 1] = True  # target token m sits at column T - n + m, predicted one before
        offsets.append(total)
        total += n
    targets = tuple(torch.tensor(e.target_ids, device=device) for e in encs)
    return TeacherBatch(ids, mask, pos, select.to(device), tuple(offsets), targets, tuple(e.clean for e in encs))


@contextmanager
def added_outputs(model: nn.Module, terms: Mapping[str, Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """Add ``term(x)`` to each named module's output, ``x`` being the module's input.

    Args:
        model: the model (its weights are not touched).
        terms: module name -> function of the module input ``(B, T, d_in)`` giving
            the term to add to its output ``(B, T, d_out)``.
    """
    inputs: dict[str, Tensor] = {}

    def keep_input(x: Tensor, name: str) -> Tensor:
        inputs[name] = x  # (B, T, d_in)
        return x

    def add(out: Tensor, name: str) -> Tensor:
        x = inputs.pop(name)
        return out + terms[name](x).to(out.dtype)  # (B, T, d_out)

    with trace(model, list(terms), edit_input=keep_input, edit=add, retain_output=False):
        yield


def linear_delta_term(delta: Tensor, spec: ArchSpec) -> Callable[[Tensor], Tensor]:
    """``x ↦ x ΔWᵀ`` for a down-projection delta in its own weight layout (``spec.to_linear``)."""
    return lambda x: x.to(delta.dtype) @ spec.to_linear(delta).T  # (B, T, d_model)


def down_name(model: nn.Module, layer: int) -> str:
    """Module path of layer ``layer``'s down-projection (raises on a bad index)."""
    n = num_layers(model)
    if not -n <= layer < n:
        raise EditError(f"layer {layer} is out of range for a {n}-layer model")
    spec = arch_spec(model)
    return spec.path(spec.mlp_down, layer % n)
