"""Saving and loading edits: PEFT LoRA adapters for low-rank deltas, safetensors for dense ones.

A weight edit ``ΔW`` of rank ``k`` is written as LoRA factors ``B = U_k S_k``,
``A = V_kᵀ`` (from an SVD in float64) with ``lora_alpha = r`` so that PEFT's
scaling is 1; the MEMLA scale ``c`` (Eq. 8) is already inside ``ΔW`` and so ends
up folded into ``B``.  Per-module ranks go through ``rank_pattern`` /
``alpha_pattern``.  The folder loads with ``peft.PeftModel.from_pretrained(base,
path)``.  Dense deltas (FT) are saved as ``deltas.safetensors``.  Both forms load
back with `load_edit`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from memla.editors.base import EditResult
from memla.errors import EditError
from memla.models import arch_spec
from memla.outputs import check_out_dir, replace_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DENSE_WEIGHTS = "deltas.safetensors"
EDIT_INFO = "memla_edit.json"
RANK_TOL = 1e-6  # singular values below this fraction of the largest are numerical noise


def low_rank_factors(delta: Tensor, *, max_rank: int | None = None) -> tuple[Tensor, Tensor] | None:
    """``(B, A)`` with ``B @ A == delta`` for a ``[d_out, d_in]`` delta, or ``None`` if not low-rank.

    Args:
        delta: the update in ``nn.Linear`` orientation ``[d_out, d_in]``.
        max_rank: rank above which the delta counts as dense (default: half the smaller side).
    """
    d = delta.detach().double()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return None
    k = int((s > s[0] * RANK_TOL).sum())
    if k > (max_rank if max_rank is not None else min(d.shape) // 2):
        return None
    B = (u[:, :k] * s[:k]).float()  # (d_out, k)
    A = vh[:k].float()  # (k, d_in)
    return B, A


def _module_of(param_name: str) -> str:
    if not param_name.endswith(".weight"):
        raise EditError(f"only weight deltas can be saved as LoRA, got {param_name}")
    return param_name.removesuffix(".weight")


def save_edit(result: EditResult, model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Save an edit into folder ``path``: a PEFT LoRA adapter when every delta is low-rank, else dense.

    The folder is written beside ``path`` and renamed into place (`memla.outputs.replace_dir`),
    so it never holds files of an earlier edit next to the new ones.

    Args:
        result: the edit.
        model: the model it was made for (its weight layout and name).
        path: output folder (created; must be new or empty unless ``overwrite``).
        overwrite: replace a non-empty folder.

    Returns:
        ``"lora"`` or ``"dense"``: the form written.

    Raises:
        EditError: the edit has no weight deltas (IKE).
        MemlaError: ``path`` is a file, or a non-empty folder without ``overwrite``.
    """
    check_out_dir(path, option="edit folder", overwrite=overwrite)
    if not result.deltas:
        raise EditError("this edit has no weight deltas to save (IKE edits are prompts, not weights)")
    with replace_dir(path) as out:
        return _write_edit(result, model, out)


def _write_edit(result: EditResult, model: nn.Module, out: Path) -> str:
    """Write the edit's files into the empty folder ``out``; returns the form written."""
    spec = arch_spec(model)
    factors = {}
    for name, delta in result.deltas.items():
        module = _module_of(name)
        f = low_rank_factors(spec.to_linear(delta))  # (d_out, d_in); one layout per model, as fan_in_fan_out
        if f is None:
            factors = None
            break
        factors[module] = f
    info = {"method": result.info.get("method"), "info": _jsonable(result.info)}
    if factors is None:
        save_file({k: v.detach().contiguous().cpu() for k, v in result.deltas.items()}, str(out / DENSE_WEIGHTS))
        (out / EDIT_INFO).write_text(json.dumps({**info, "form": "dense"}, indent=1))
        return "dense"
    ranks = {m: int(a.shape[0]) for m, (_, a) in factors.items()}
    r0 = max(ranks.values())
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": getattr(model.config, "_name_or_path", None),
        "r": r0,
        "lora_alpha": r0,
        "rank_pattern": {re.escape(m): r for m, r in ranks.items()},
        "alpha_pattern": {re.escape(m): r for m, r in ranks.items()},
        "target_modules": sorted(factors),
        "fan_in_fan_out": spec.down_layout == "conv1d",
        "lora_dropout": 0.0,
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    tensors = {}
    for module, (B, A) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A.contiguous()  # (k, d_in)
        tensors[f"base_model.model.{module}.lora_B.weight"] = B.contiguous()  # (d_out, k)
    save_file(tensors, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))
    (out / EDIT_INFO).write_text(json.dumps({**info, "form": "lora"}, indent=1))
    return "lora"


def load_edit(path: str | os.PathLike, model: nn.Module) -> EditResult:
    """Read an edit saved by `save_edit` (or a PEFT LoRA adapter in safetensors on ``model``) as an `EditResult`.

    Raises:
        EditError: the folder holds no edit, two kinds of edit, an unreadable file, or
            deltas that do not fit ``model`` (a module it lacks, another shape).
    """
    src = Path(path)
    if (src / DENSE_WEIGHTS).is_file() and (src / ADAPTER_CONFIG).is_file():
        raise EditError(f"{src} holds both a dense edit ({DENSE_WEIGHTS}) and a LoRA adapter ({ADAPTER_CONFIG}); "
                        "it mixes two saved edits: save the edit again into a new folder")
    if (src / DENSE_WEIGHTS).is_file():
        deltas = _read_tensors(src / DENSE_WEIGHTS)
    elif not (src / ADAPTER_CONFIG).is_file():
        raise EditError(f"{src}: neither {ADAPTER_CONFIG} nor {DENSE_WEIGHTS} found")
    else:
        deltas = _lora_deltas(src, model)
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        if name not in params:
            raise EditError(f"{src}: the edit changes {name}, which this model does not have (an edit of another model?)")
        if tuple(delta.shape) != tuple(params[name].shape):
            raise EditError(f"{src}: the edit of {name} has shape {tuple(delta.shape)}, the model's weight "
                            f"{tuple(params[name].shape)} (an edit of another model?)")
    return EditResult(deltas=deltas, info=_read_info(src))


def _read_tensors(file: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, or an `EditError` naming it."""
    if not file.is_file():
        raise EditError(f"{file} not found (memla reads adapters saved as safetensors)")
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a damaged header or data
        raise EditError(f"{file}: cannot read it as safetensors ({' '.join(str(err).split())[:200]})") from None


def _lora_deltas(src: Path, model: nn.Module) -> dict[str, Tensor]:
    """``{param name: B @ A · alpha / r}`` of the PEFT LoRA adapter in ``src``, in the model's weight layout."""
    try:
        config = json.loads((src / ADAPTER_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EditError(f"{src / ADAPTER_CONFIG}: not valid JSON ({err})") from None
    if config.get("peft_type") != "LORA":
        raise EditError(f"{src}: only LoRA adapters can be loaded, got {config.get('peft_type')}")
    tensors = _read_tensors(src / ADAPTER_WEIGHTS)
    modules = dict(model.named_modules())
    deltas = {}
    for key, A in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        B = tensors.get(key.replace(".lora_A.", ".lora_B."))
        if B is None:
            raise EditError(f"{src / ADAPTER_WEIGHTS}: {module} has lora_A but no lora_B")
        if module not in modules or not hasattr(modules[module], "weight"):
            raise EditError(f"{src}: the adapter targets {module}, which this model does not have "
                            "(an adapter of another model?)")
        r = A.shape[0]
        alpha = _pattern(config.get("alpha_pattern", {}), module, config.get("lora_alpha", r))
        delta = (B.double() @ A.double()) * (alpha / r)  # (d_out, d_in)
        if config.get("fan_in_fan_out"):
            delta = delta.T
        deltas[f"{module}.weight"] = delta.to(modules[module].weight.dtype).contiguous()
    return deltas


def _pattern(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _read_info(src: Path) -> dict:
    f = src / EDIT_INFO
    return json.loads(f.read_text()).get("info", {}) if f.is_file() else {}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
