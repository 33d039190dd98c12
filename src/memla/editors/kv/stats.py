"""Second-moment statistics of MLP keys, ``C = E[k kᵀ]`` per layer (ROME Eq. 2, MEMIT Eq. 14).

A key ``k`` is the input of a layer's down-projection (``d_ff``) at one token.  ``C`` is
estimated from a text corpus, given as a tuple of items:

* ``"builtin"`` (the default, offline): text the model itself samples (top-k, ROME's
  ``generate_fast``) from seed words in the 12 languages, as many texts as ``samples`` keys
  need, sampled once per model and cached beside the statistics.  It holds no benchmark
  sentence: a corpus made of the dataset's own prompts would let ``C`` see the very
  neighbourhood prompts that locality is scored on (FORMAT 1 did, through mkeb-mini);
* ``"hf:NAME[:CONFIG[:SPLIT]]"``: a Hugging Face dataset's ``text`` column, streamed (needs
  the ``datasets`` package and the network; offline, without ``datasets``, or when the Hub
  cannot be reached while the statistics are computed, ``"builtin"`` is used instead, with
  a warning, and the cache key is the builtin corpus's);
* paths of UTF-8 text files, one text per non-empty line.

Texts are tokenised (at most 256 tokens each, BOS included but its key left out: it is
an outlier that would dominate ``C``) and keys are gathered until ``samples`` keys.
Results are cached under ``memla.models.cache_dir()/"stats"``, keyed by the model
fingerprint, the layer, the corpus hash, the sample count and the dtype.  The model
fingerprint leaves out the down-projection weights (the weights editors change), so the
statistics of the unedited model serve sequential edits, as in MEMIT's code (computed once).
An AlphaEdit-style null-space projection of the preserved keys reads the same ``C``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from memla.atomic import write_atomic
from memla.devices import input_device, module_device
from memla.errors import MemlaError
from memla.hooks import trace
from memla.models import arch_spec, cache_dir, down_param_names, mlp_dims, model_fingerprint, num_layers
from memla.samples import cached_samples, sample_texts
from memla.tokens import encode_text, pad_id, right_pad

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the meaning of stored statistics changes (2: builtin = model samples only)
MAX_TOKENS = 256  # per text
BATCH_TOKENS = 4096  # padded tokens per forward pass
DTYPES = ("float32", "float64")

# Seed words of the model-sampled part of the builtin corpus (4 per language).
SAMPLE_SEEDS = {
    "en": ("The", "In", "It is", "Many"), "zh": ("这", "在", "我们", "历史上"),
    "fr": ("Le", "La", "Il est", "Dans"), "de": ("Der", "Die", "Es ist", "In"),
    "ja": ("日本", "この", "私は", "今日は"), "ko": ("한국", "이", "우리는", "오늘은"),
    "pt": ("O", "A", "Em", "Ele"), "ru": ("В", "Это", "Он", "Мы"),
    "it": ("Il", "La", "In", "Ci sono"), "es": ("El", "La", "En", "Es"),
    "pl": ("W", "To", "Jest", "Polska"), "th": ("ประเทศ", "วันนี้", "เรา", "ใน"),
}
SAMPLE_TOKENS = 48  # new tokens per sampled text
SAMPLE_BATCH = 96  # texts sampled together
SAMPLE_MARGIN = 1.25  # texts for this many times `samples` keys: EOS can end a sample early
# What an unreachable Hub raises in `datasets.load_dataset` (which turns OfflineModeIsEnabled and requests'
# ConnectionError / Timeout into the builtin ConnectionError) and in the streamed reads after it.
HF_NETWORK_ERRORS = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)


# --------------------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Corpus:
    """A resolved corpus: its items, its hash and a way to produce its texts.

    Attributes:
        items: the corpus items as given (``"builtin"``, ``"hf:..."``, file paths).
        key: hash of the contents (files) or recipes (builtin, hf) of the items.
    """

    items: tuple[str, ...]
    key: str

    def texts(self, model: nn.Module, tokenizer, *, samples: int) -> list[str]:
        """The corpus texts in the order keys are drawn from them."""
        out: list[str] = []
        for item in self.items:
            if item == "builtin":
                out += builtin_texts(model, tokenizer, samples=samples)
            elif item.startswith("hf:"):
                out += _hf_texts(item, samples=samples)
            else:
                out += [line for line in Path(item).read_text(encoding="utf-8").splitlines() if line.strip()]
        return out


def builtin_texts(model: nn.Module, tokenizer, *, samples: int) -> list[str]:
    """The builtin corpus: model samples from `SAMPLE_SEEDS`, enough for ``samples`` keys.

    The seeds are cycled (languages stay balanced) in batches of `SAMPLE_BATCH`, batch ``i``
    drawn with generator seed ``i``, so the texts depend only on the model and ``samples``;
    they are cached per model (`memla.samples.cached_samples`; the statistics of missing
    layers reuse them).
    """
    seeds = [s for lang in SAMPLE_SEEDS for s in SAMPLE_SEEDS[lang]]
    n = max(1, math.ceil(samples * SAMPLE_MARGIN / SAMPLE_TOKENS / len(seeds))) * len(seeds)

    def draw() -> list[str]:
        texts = []
        for i in tqdm(range(0, n, SAMPLE_BATCH), desc="sampling the builtin corpus", unit="batch",
                      disable=n <= SAMPLE_BATCH):
            batch = [seeds[j % len(seeds)] for j in range(i, min(i + SAMPLE_BATCH, n))]
            texts += sample_texts(model, tokenizer, batch, new_tokens=SAMPLE_TOKENS, seed=i // SAMPLE_BATCH)
        return texts

    recipe = {"kind": "builtin corpus", "seeds": SAMPLE_SEEDS, "tokens": SAMPLE_TOKENS, "batch": SAMPLE_BATCH, "texts": n}
    return cached_samples(model, tokenizer, recipe, draw)


def _seeds_key() -> str:
    return hashlib.sha256(json.dumps([SAMPLE_SEEDS, SAMPLE_TOKENS, SAMPLE_BATCH]).encode()).hexdigest()[:12]


class HubUnreachable(MemlaError):
    """An ``hf:`` corpus item could not be read from the Hugging Face Hub (network failure)."""


def _hf_texts(item: str, *, samples: int) -> list[str]:
    name, config, split = (item[3:].split(":") + [None, None])[:3]
    import datasets  # optional dependency; resolve_corpus replaced the item when it is missing

    texts, chars = [], 0
    try:
        for row in datasets.load_dataset(name, config, split=split or "train", streaming=True):
            text = str(row.get("text", "")).strip()
            if text:
                texts.append(text)
                chars += len(text)
            if chars > 8 * samples:  # a generous bound on the characters that give `samples` tokens
                break
    except HF_NETWORK_ERRORS as err:
        raise HubUnreachable(f"{item}: the Hugging Face Hub cannot be reached ({type(err).__name__}: {err})") from err
    return texts


def _hf_reachable() -> bool:
    if any(os.environ.get(v, "0") not in ("0", "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_corpus(items: str | Sequence[str]) -> Corpus:
    """Check a corpus specification and hash it.

    Args:
        items: ``"builtin"``, ``"hf:NAME[:CONFIG[:SPLIT]]"``, text file paths, or a sequence of them.

    Returns:
        The `Corpus`; ``hf:`` items are replaced by ``"builtin"`` offline or without ``datasets``.

    Raises:
        MemlaError: a file does not exist or is not UTF-8, or no item is given.
    """
    items = (items,) if isinstance(items, str) else tuple(items)
    if not items:
        raise MemlaError("no corpus given for the covariance statistics")
    resolved, parts = [], []
    for item in items:
        if item.startswith("hf:") and not _hf_reachable():
            log.warning("%s: Hugging Face datasets not reachable (offline or `datasets` not installed); "
                        "using the offline builtin corpus instead", item)
            item = "builtin"
        if item == "builtin":
            parts.append(f"builtin:{FORMAT}:{_seeds_key()}")
        elif item.startswith("hf:"):
            parts.append(item)
        else:
            path = Path(item)
            if not path.is_file():
                raise MemlaError(f"corpus file not found: {path}")
            data = path.read_bytes()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise MemlaError(f"{path}: corpus files must be UTF-8 ({err})") from None
            parts.append("file:" + hashlib.sha256(data).hexdigest())
        resolved.append(item)
    return Corpus(tuple(resolved), hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16])


# --------------------------------------------------------------------------- cache


def stats_dir() -> Path:
    """Folder of cached statistics."""
    return cache_dir() / "stats"


def stats_path(fingerprint: str, layer: int, corpus_key: str, samples: int, dtype: str) -> Path:
    """The cache file of one layer's statistics."""
    return stats_dir() / f"{fingerprint}-L{layer}-{corpus_key}-n{samples}-{dtype}-v{FORMAT}.safetensors"


def _load(path: Path) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        return load_file(path)["mom2"]
    except Exception as err:  # a truncated or foreign file: recompute
        log.warning("ignoring unreadable statistics file %s: %s", path, err)
        return None


def _save(path: Path, mom2: Tensor, meta: dict) -> None:
    write_atomic(path, save({"mom2": mom2.contiguous().cpu()}, metadata={k: json.dumps(v) for k, v in meta.items()}))


# --------------------------------------------------------------------------- computation


@dataclass(frozen=True)
class LayerStats:
    """One layer's statistics and where they came from.

    Attributes:
        layer: the layer.
        mom2: ``C = E[k kᵀ]``, ``(d_ff, d_ff)``.
        count: keys actually used (fewer than asked when the corpus is short).
        path: the cache file.
        cached: True when read from the cache.
    """

    layer: int
    mom2: Tensor
    count: int
    path: Path
    cached: bool


def layer_stats(
    model: nn.Module,
    tokenizer,
    layers: Iterable[int],
    *,
    corpus: str | Sequence[str] = ("builtin",),
    samples: int = 50_000,
    dtype: str = "float32",
    progress: bool = True,
) -> dict[int, LayerStats]:
    """``C = E[k kᵀ]`` of the down-projection inputs of ``layers``, from the cache or computed.

    All missing layers are computed in one pass over the corpus that stops after the
    highest one (ROME's ``layer_stats`` with ``to_collect=["mom2"]``).

    Args:
        model, tokenizer: the model and its tokenizer.
        layers: layer indices.
        corpus: see the module docstring.
        samples: number of keys (token positions) to average over.
        dtype: ``"float32"`` or ``"float64"``, the dtype of the products ``k kᵀ`` and of ``C``.
        progress: show a progress bar.

    Returns:
        ``{layer: LayerStats}``.
    """
    if dtype not in DTYPES:
        raise MemlaError(f"statistics dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if samples < 1:
        raise MemlaError("the number of statistics samples must be >= 1")
    layers = sorted(set(layers))
    n = num_layers(model)
    if any(not 0 <= layer < n for layer in layers):
        raise MemlaError(f"layers must be in 0..{n - 1}, got {layers}")
    resolved = resolve_corpus(corpus)
    fp = model_fingerprint(model, skip=down_param_names(model), exact=False)  # unchanged by edits
    out, missing = _cached(fp, layers, resolved.key, samples, dtype)
    if missing:
        try:
            texts = resolved.texts(model, tokenizer, samples=samples)
        except HubUnreachable as err:
            log.warning("%s; using the offline builtin corpus instead", err)
            resolved = resolve_corpus(["builtin" if item.startswith("hf:") else item for item in resolved.items])
            found, missing = _cached(fp, missing, resolved.key, samples, dtype)
            out.update(found)
            texts = resolved.texts(model, tokenizer, samples=samples) if missing else []
    if missing:
        log.warning("computing key statistics of layer(s) %s from %d keys (once; cached in %s)",
                    ", ".join(map(str, missing)), samples, stats_dir())
        mom2s, count = _compute(model, tokenizer, missing, texts, samples=samples, dtype=dtype, progress=progress)
        for layer in missing:
            path = stats_path(fp, layer, resolved.key, samples, dtype)
            meta = {"model": fp, "layer": layer, "corpus": list(resolved.items), "corpus_key": resolved.key,
                    "samples": samples, "count": count, "dtype": dtype, "format": FORMAT}
            _save(path, mom2s[layer], meta)
            out[layer] = LayerStats(layer, mom2s[layer], count, path, False)
    return out


def _cached(fp: str, layers: Sequence[int], corpus_key: str, samples: int, dtype: str
            ) -> tuple[dict[int, LayerStats], list[int]]:
    """The layers' statistics found in the cache, and the layers missing from it."""
    out, missing = {}, []
    for layer in layers:
        path = stats_path(fp, layer, corpus_key, samples, dtype)
        mom2 = _load(path)
        if mom2 is None:
            missing.append(layer)
        else:
            count = int(json.loads(_meta(path).get("count", "0")))
            out[layer] = LayerStats(layer, mom2, count, path, True)
    return out, missing


def _meta(path: Path) -> dict:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


@torch.no_grad()
def _compute(model, tokenizer, layers, texts: Sequence[str], *, samples: int, dtype: str, progress: bool):
    spec = arch_spec(model)
    device = input_device(model)
    names = {layer: spec.path(spec.mlp_down, layer) for layer in layers}
    d_ff = mlp_dims(model)[1]
    acc = {layer: torch.zeros(d_ff, d_ff, dtype=torch.float64, device=module_device(spec.down_module(model, layer)))
           for layer in layers}  # (d_ff, d_ff) each, on its layer's device
    specials = set(tokenizer.all_special_ids)
    count, batch = 0, []
    bar = tqdm(total=samples, unit="key", desc=f"key statistics L{','.join(map(str, layers))}", disable=not progress)

    def flush(batch):
        nonlocal count
        ids, mask = right_pad(batch, pad_id=pad_id(tokenizer), device=device)  # (B, T)
        keep = mask.bool() & ~torch.isin(ids, torch.tensor(sorted(specials), device=device))  # (B, T)
        with trace(model, list(names.values()), retain_input=True, retain_output=False, stop=True) as tr:
            model(input_ids=ids, attention_mask=mask)
        take = min(int(keep.sum()), samples - count)
        for layer, name in names.items():
            x = tr[name].input  # (B, T, d_ff), on the layer's device
            k = x[keep.to(x.device)][:take].to(getattr(torch, dtype))  # (N, d_ff)
            acc[layer] += (k.T @ k).double()  # (d_ff, d_ff)
        count += take
        bar.update(take)

    for text in texts:
        ids = encode_text(tokenizer, text)[:MAX_TOKENS]
        if not ids:
            continue
        batch.append(ids)
        if (len(batch) + 1) * max(len(s) for s in batch) > BATCH_TOKENS:
            flush(batch)
            batch = []
        if count >= samples:
            break
    if batch and count < samples:
        flush(batch)
    bar.close()
    if count == 0:
        raise MemlaError("the statistics corpus gave no keys")
    if count < samples:
        log.warning("the statistics corpus gave only %d of %d keys", count, samples)
    return {layer: (a / count).to(getattr(torch, dtype)).cpu() for layer, a in acc.items()}, count


def covariances(model: nn.Module, tokenizer, layers: Iterable[int], **options) -> dict[int, Tensor]:
    """``{layer: C}`` (see `layer_stats` for the options), without progress bar by default."""
    options.setdefault("progress", False)
    return {layer: s.mom2 for layer, s in layer_stats(model, tokenizer, layers, **options).items()}
