"""Tiny random models of every supported architecture, built in-process (no downloads).

`tiny_model(model_type)` returns ``(model, tokenizer)``: a 2-layer model with
d_model 32 and d_ff 64 (seeded), and a byte-level BPE tokenizer trained on a few
multilingual sentences, so that tests exercise real tokenisation in every script.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

ARCHS = ("gpt2", "bloom", "llama", "qwen2", "mistral", "gemma2", "gemma3_text")

_CORPUS = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome. The capital of Japan is Tokyo.",
    "法国的首都是巴黎。日本的首都是东京。",
    "フランスの首都はパリです。",
    "프랑스의 수도는 파리입니다.",
    "La capitale de la France est Paris.",
    "Die Hauptstadt von Frankreich ist Paris.",
    "Столица Франции — Париж.",
    "Stolicą Francji jest Paryż.",
    "เมืองหลวงของฝรั่งเศสคือปารีส",
    "A capital da França é Paris. La capital de Francia es París. La capitale della Francia è Parigi.",
]


@functools.cache
def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with <bos>, <eos>, <pad> specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_config(model_type: str, vocab_size: int):
    """A 2-layer config of ``model_type`` with d_model 32, d_ff 64."""
    ids = dict(vocab_size=vocab_size, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    llama_like = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, **ids,
    )
    if model_type == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=64, n_positions=128, **ids)
    if model_type == "bloom":
        # BLOOM's MLP width is fixed at 4 * hidden_size (= 128 here).
        return BloomConfig(n_layer=2, hidden_size=32, n_head=4, **ids)
    if model_type == "llama":
        return LlamaConfig(**llama_like)
    if model_type == "qwen2":
        return Qwen2Config(**llama_like)
    if model_type == "mistral":
        return MistralConfig(**llama_like, sliding_window=None)
    if model_type == "gemma2":
        return Gemma2Config(**llama_like, head_dim=8, sliding_window=16)
    if model_type == "gemma3_text":
        return Gemma3TextConfig(**llama_like, head_dim=8, sliding_window=16,
                                layer_types=["sliding_attention", "full_attention"])
    raise ValueError(model_type)


def tiny_model(model_type: str, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A seeded tiny random model of ``model_type`` in eval mode with gradients off, and its tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(model_type, len(tokenizer))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random init leaves some norms at exactly 0 / 1; perturb every parameter so that
    # bugs that depend on a weight's value cannot hide behind a degenerate init.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval().requires_grad_(False)
    return model, tokenizer


def save_tiny(model_type: str, path) -> str:
    """Write `tiny_model(model_type)` and its tokenizer to ``path`` (for the CLI's ``--model``); returns it as a string."""
    model, tokenizer = tiny_model(model_type)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
