"""Settings and measures shared by the editor tests."""

from __future__ import annotations

import torch

from memla.editors import EditRequest
from memla.editors._train import teacher_batch

# ROME / MEMIT / PMET on tiny models: identity covariance, short contexts, no clamp in the way.
KV_TINY = dict(covariance="identity", clamp_norm_factor=100.0, lr=0.05, steps=30, weight_decay=0.0,
               context_lengths=((4, 4),))


def margin(model, tok, req: EditRequest) -> float:
    """log P(target_new) − log P(target_true), length-normalised, on the edit prompt."""
    batch = teacher_batch(tok, [(req.text, req.target_new, req.lang), (req.text, req.target_true, req.lang)])
    with torch.no_grad():
        lp = batch.mean_logprob(batch.logits(model))
    return float(lp[0] - lp[1])
