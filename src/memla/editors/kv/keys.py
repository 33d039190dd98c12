"""Locating k*: the keys ROME, MEMIT and PMET read at the subject's last token.

* `capture` reads module inputs (keys k) or outputs (values v) at given token positions.
* `group_mean` averages a request's keys over the context prefixes as MEMIT's ``compute_ks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from memla.hooks import output_tensor, trace
from memla.tokens import pad_id, right_pad

CAPTURE_ROWS = 64  # rows per forward pass when reading keys


@torch.no_grad()
def capture(
    model: nn.Module,
    tokenizer,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[int],
    modules: Sequence[str],
    *,
    inputs: bool = True,
) -> dict[str, Tensor]:
    """Module inputs (``inputs=True``) or outputs at one position per sequence.

    Args:
        model, tokenizer: the model and its tokenizer (for the padding id).
        seqs: token sequences.
        positions: per sequence, the position to read.
        modules: module paths.
        inputs: read the first positional input (keys) instead of the output (values).

    Returns:
        ``{module: (N, d)}`` in sequence order.
    """
    device = next(model.parameters()).device
    out: dict[str, list[Tensor]] = {m: [] for m in modules}
    for start in range(0, len(seqs), CAPTURE_ROWS):
        chunk = list(seqs[start:start + CAPTURE_ROWS])
        ids, mask = right_pad(chunk, pad_id=pad_id(tokenizer), device=device)  # (B, T)
        rows = torch.arange(len(chunk), device=device)
        cols = torch.tensor(list(positions[start:start + CAPTURE_ROWS]), device=device)  # (B,)
        with trace(model, list(modules), retain_input=inputs, retain_output=not inputs, stop=True) as tr:
            model(input_ids=ids, attention_mask=mask)
        for m in modules:
            x = tr[m].input if inputs else output_tensor(tr[m].output)  # (B, T, d)
            out[m].append(x[rows, cols].float())  # (B, d)
    return {m: torch.cat(v) for m, v in out.items()}


def prefix_groups(lengths: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Index groups of `context_prefixes`: the bare prompt, then one group per ``(tokens, count)``."""
    groups, start = [[0]], 1
    for _, count in lengths:
        if count:
            groups.append(list(range(start, start + count)))
        start += count
    return groups


def group_mean(keys: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """MEMIT's ``compute_ks`` average: the mean over prefixes of each group, then over groups.

    Args:
        keys: ``(P, d)`` keys of one request, in prefix order.
        groups: `prefix_groups`.

    Returns:
        ``(d,)``.
    """
    return torch.stack([keys[list(g)].mean(0) for g in groups]).mean(0)
