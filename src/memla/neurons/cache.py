"""A disk cache of attribution scores.

Scores are stored as safetensors files under ``memla.models.cache_dir()/"neurons"``,
one per (model fingerprint, prompt, target, settings) key, written atomically,
so that benchmarks and repeated edits do not recompute them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from memla.atomic import atomic_path
from memla.models import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the meaning of stored scores changes


def neuron_cache_dir() -> Path:
    """Folder of cached attributions."""
    return cache_dir() / "neurons"


def cache_key(fingerprint: str, prompt: str, target: str, settings: dict) -> str:
    """A hex key for one attribution: model, prompt, target and every setting that changes the scores."""
    blob = json.dumps({"format": FORMAT, "model": fingerprint, "prompt": prompt, "target": target,
                       "settings": settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load(key: str) -> Tensor | None:
    """The cached scores for ``key``, or None (also when the file is unreadable)."""
    path = neuron_cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        return load_file(path)["scores"]
    except Exception as err:  # a truncated or foreign file: recompute
        log.warning("ignoring unreadable neuron cache file %s: %s", path, err)
        return None


def save(key: str, scores: Tensor, meta: dict) -> None:
    """Store ``scores`` under ``key`` (atomic: a temporary file renamed into place)."""
    text = {k: json.dumps(v, ensure_ascii=False) for k, v in meta.items()}
    with atomic_path(neuron_cache_dir() / f"{key}.safetensors") as tmp:
        save_file({"scores": scores.detach().to(torch.float32).contiguous().cpu()}, str(tmp), metadata=text)
