"""Seeding of the global random number generators from a run seed and the names of a unit of work."""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, *parts: Any) -> None:
    """Seed torch, numpy and `random` from ``seed`` and ``parts``, so that a rerun repeats.

    The derived seed is the CRC-32 of ``"seed|part|..."``: the same run seed and parts
    (method, record ids, source language, ...) give the same draws, whatever ran before.

    Args:
        seed: the run seed.
        parts: what the seeded work is about, in a fixed order.
    """
    derived = zlib.crc32("|".join(map(str, (seed, *parts))).encode())
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)
