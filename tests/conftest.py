"""Shared fixtures: tiny random models of every architecture (see tests/tiny.py)."""

import os
import sys
from pathlib import Path

import pytest

# Tests never download: make the hub client fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).parent))

from tiny import ARCHS, tiny_model  # noqa: E402


@pytest.fixture(params=ARCHS)
def tiny(request):
    """``(model, tokenizer)`` for each supported architecture in turn."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def default_model():
    """The real embedded Gemma 3 270M (slow tests only)."""
    from memla import load_model

    return load_model()


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path_factory, monkeypatch):
    """Fast tests write caches (neuron scores, statistics) into a temporary folder.

    Slow tests keep the user's cache, where the converted default model lives.
    """
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("MEMLA_CACHE", str(tmp_path_factory.mktemp("memla-cache")))


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (thread start-up dominates); the real model keeps all cores."""
    import torch

    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
