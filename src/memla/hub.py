"""The Hugging Face hub, fast when offline: one quick probe instead of transformers' retries.

`offline_hub_dir` decides, before the Auto classes are called, whether a hub id can be
served: when the hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) or a
single connection probe fails, the local Hugging Face cache's copy is used, or a
`ModelLoadError` says why not, in about a second instead of 25.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from memla.errors import ModelLoadError

HUB_UNREACHABLE = (
    "cannot reach model {!r} on the Hugging Face hub (offline or unknown id); "
    "a local model directory or .gguf file works offline"
)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_PROBE_TIMEOUT_S = 3.0


def offline_hub_dir(repo_id: str) -> Path | None:
    """The local Hugging Face cache's copy of hub id ``repo_id`` when the hub cannot serve it, else None.

    The hub cannot serve it when switched off (`_hub_offline`) or when a single quick probe
    (`_hub_reachable`) fails; the cached snapshot folder then loads as a local directory,
    with no network call at all.

    Raises:
        ModelLoadError: the hub is off or unreachable and the model is not cached, so that
            transformers never spends its retries (about 25 s) on a network that is not there.
    """
    offline = _hub_offline()
    if offline is None and _hub_reachable():
        return None
    cached = _hub_cached_dir(repo_id)
    if cached is not None:
        return cached
    if offline is not None:
        raise ModelLoadError(
            f"model {repo_id!r} is not a local model directory or .gguf file, and the Hugging Face hub "
            f"is switched off ({offline} is set) with no cached copy of it"
        )
    raise ModelLoadError(HUB_UNREACHABLE.format(repo_id))


def _hub_offline() -> str | None:
    """The variable that switches the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` = 1/true), or None."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub's endpoint (or to the HTTPS proxy in front of it) opens quickly.

    One attempt with a `_HUB_PROBE_TIMEOUT_S` timeout: a missing network fails at once
    (name resolution) or after the timeout, never after transformers' retries.
    """
    from huggingface_hub import constants  # lazy, as the Auto classes in _load_hf

    hop = urlsplit(constants.ENDPOINT)
    proxy = getproxies().get("https")
    if proxy and not proxy_bypass(hop.hostname or ""):
        hop = urlsplit(proxy)
    port = hop.port or (443 if hop.scheme == "https" else 80)
    try:
        socket.create_connection((hop.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _hub_cached_dir(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache if it holds the config, else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # HFValidationError: not a well-formed repo id
        return None
    return Path(config).parent if isinstance(config, str) else None
