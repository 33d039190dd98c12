"""Where tensors live: the device options of model loading, and the devices of a loaded model.

A model is either on one device (``device="cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"``:
CUDA when there is one) or split over several by a device map (``device_map="auto"``,
accelerate), for a model larger than one GPU.  Split models carry accelerate's hooks: each
block moves its inputs to its own device, and the model moves its outputs (logits, hidden
states) back to the device of its inputs.  memla builds on that and creates

* token ids, masks, position ids and targets on `input_device` (the input embedding's
  device), where the model's outputs come back;
* per-layer tensors (weight deltas, LoRA factors, values added by hooks, key statistics)
  on the device of the module they meet, `module_device`;

so nothing crosses devices inside a hot loop, and a model on one device runs as before.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from collections.abc import Mapping

import torch
from torch import nn

from memla.errors import DeviceError

CHOICES = "cpu, cuda, cuda:N or auto"
_SYNTAX = re.compile(r"cpu|cuda|cuda:\d+|auto")


def is_device_name(text: str) -> bool:
    """Whether ``text`` is one of the device names memla's options take (`CHOICES`)."""
    return _SYNTAX.fullmatch(text) is not None


def resolve_device(device: str | torch.device) -> torch.device:
    """The device to load a model on; ``"auto"`` is CUDA when available, else the CPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or any `torch.device`.

    Returns:
        The `torch.device`.

    Raises:
        DeviceError: a CUDA device asked on a machine without CUDA, or a CUDA index
            beyond the devices there are (checked before any weight is read).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {str(device)!r}; expected {CHOICES}") from None
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DeviceError(f"device {str(device)!r} asked, but CUDA is not available here (torch {torch.__version__}, "
                          f"{build}); use cpu or auto")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise DeviceError(f"device {str(device)!r} asked, but this machine has {count} CUDA device(s): "
                          + ", ".join(f"cuda:{i}" for i in range(count)))
    return resolved


def check_device_map(device_map: str | Mapping[str, object] | None, *, device: str | torch.device = "cpu") -> None:
    """Refuse a device map given with an explicit device other than the CPU, or without accelerate.

    Args:
        device_map: ``None``, ``"auto"`` (or another of transformers' strategies), or
            ``{module path: device}``.
        device: the device also asked for; only the default ``"cpu"`` goes with a map.

    Raises:
        DeviceError: both given, or accelerate is not installed.
    """
    if device_map is None:
        return
    if str(device) != "cpu":
        raise DeviceError(f"device {str(device)!r} and device map {_shown(device_map)} exclude each other: "
                          "a device map places every layer itself")
    if importlib.util.find_spec("accelerate") is None:
        raise DeviceError(f"device map {_shown(device_map)} needs the accelerate package (pip install accelerate)")


def _shown(device_map: str | Mapping[str, object]) -> str:
    return repr(device_map) if isinstance(device_map, str) else f"of {len(device_map)} entries"


def check_placed(model: nn.Module) -> None:
    """Refuse a model whose device map offloads weights (to the CPU next to GPUs, or to disk).

    Offloaded parameters stay on the ``meta`` device and are loaded for each forward pass
    only, so the weights that edits change in place are not there.

    Raises:
        DeviceError: naming the offloaded modules.
    """
    meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if not meta:
        return
    entries = getattr(model, "hf_device_map", None) or {}
    offloaded = [key for key in entries if any(name.startswith(f"{key}.") for name in meta)] or meta
    shown = ", ".join(offloaded[:3]) + (f" and {len(offloaded) - 3} more" if len(offloaded) > 3 else "")
    raise DeviceError(f"the device map offloads {shown} to the CPU or disk; memla changes weights in place and "
                      "needs every layer on a device (device map 'auto' offloads when the GPUs are too small: "
                      "use more or larger GPUs, or a smaller dtype)")


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go (and its outputs come back): the input embedding's device."""
    return model.get_input_embeddings().weight.device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (else buffer): where tensors meeting it belong.

    Raises:
        ValueError: the module holds no tensors.
    """
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    if tensor is None:
        raise ValueError(f"{type(module).__name__} holds no parameters or buffers")
    return tensor.device


def is_split(model: nn.Module) -> bool:
    """Whether accelerate placed the model over several devices (``model.hf_device_map``)."""
    return len({str(d) for d in getattr(model, "hf_device_map", {}).values()}) > 1


def model_devices(model: nn.Module) -> list[str]:
    """The devices holding a model's parameters, in parameter order (one entry per device)."""
    return list(dict.fromkeys(str(p.device) for p in model.parameters()))
