"""The fast path of integrated-gradients attribution (paper §4.1, Eq. 1–2).

Only the activation at the predicting position is scaled, so everything before
that position is the same for every IG row: one clean forward of the
teacher-forced sequence records the hidden states and fills a KV cache, which
the rows of each target token reuse cut back to that token's prefix, and each
row is a one-token forward and backward.  A row that
scales layer ``l`` needs nothing below ``l``: it enters the stack at layer ``l``
with the clean hidden state there.  All (layer × path × step) rows of a chunk
run as one batch that grows as the layers go up (rows join at their own
layer), only the last position reaches the LM head, and the head's probability
and gradient are two matrix products (`Head`).  Gradients are taken with
``torch.autograd.grad`` with respect to the scaled activations only; no weight
gradient is ever formed.

The decoder layers are called directly, with the same masks, rotary embeddings
and ALiBi biases the model's own forward would pass them; three call
conventions cover the supported architectures (GPT-2, BLOOM and the
Llama-style decoders including Gemma 2/3 with their sliding-window layers).
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from memla.devices import input_device
from memla.hooks import trace
from memla.models import arch_spec, get_module, num_layers

from ._common import Example, Head, alphas, baseline_acts, point_module, replace_rows


def attribute_fast(
    model: nn.Module,
    tokenizer,
    example: Example,
    layers: list[int],
    *,
    steps: int,
    baseline: str,
    point: str,
    head: Head,
    max_rows: int = 512,
    progress=None,
) -> Tensor:
    """IG scores (Eq. 2) with a reused prefix, per-layer entry and batched one-token rows.

    Args:
        model, tokenizer: the model and its tokenizer.
        example: the tokenised prompt and target.
        layers: the layers to attribute, ascending.
        steps, baseline, point: as in `memla.neurons.attribute`.
        head: the LM head (`Head`).
        max_rows: most IG rows run as one batch (bounds the autograd graph's memory).
        progress: an optional callable, called once per chunk with its number of rows.

    Returns:
        ``(L, d_ff)`` float32 scores on the CPU, summed over target tokens, averaged over baseline paths.
    """
    stack = _Stack(model, point)
    hidden, act, full = stack.clean_pass(example, layers)  # (L, m, d), (L, m, d_ff), cache
    end = example.position(len(example.targets) - 1) + 1  # positions in ``full``
    bases = baseline_acts(model, tokenizer, example, layers, point, baseline)  # (L, m, P, d_ff)
    n_layers, m, n_paths, d_ff = bases.shape
    device = stack.device  # the per-row tensors live here; `replace_rows` moves each layer's rows to its layer
    alpha = alphas(steps).to(device)  # (steps,)
    per_layer = n_paths * steps  # rows of one layer, ordered (path, step)
    scores = torch.zeros(n_layers, d_ff, dtype=torch.float32, device=device)  # (L, d_ff)
    for j, target in enumerate(example.targets):
        pos = example.position(j)
        drop = end - pos  # the prefix of target token j is everything before its position
        grad_sum = torch.zeros(n_layers, n_paths, d_ff, dtype=torch.float32, device=device)  # (L, P, d_ff)
        total = n_layers * per_layer
        for start in range(0, total, max_rows):
            stop = min(start + max_rows, total)
            entries = {}  # layer -> (li, first row within the layer, leaf values)
            for li in range(start // per_layer, (stop - 1) // per_layer + 1):
                lo = max(start, li * per_layer) - li * per_layer
                hi = min(stop, (li + 1) * per_layer) - li * per_layer
                r = torch.arange(lo, hi, device=device)
                base = bases[li, j, r // steps].double()  # (n, d_ff)
                values = base + alpha[r % steps, None] * (act[li, j].double() - base)  # (n, d_ff)
                entries[layers[li]] = (li, lo, values.to(act.dtype))
            grads = stack.run(full, drop, pos, {layer: (hidden[e[0], j], e[2]) for layer, e in entries.items()},
                              head, target)
            for layer, (li, lo, _) in entries.items():
                g = grads[layer].float()  # (n, d_ff)
                paths = torch.arange(lo, lo + g.shape[0], device=device) // steps  # (n,)
                grad_sum[li].index_add_(0, paths, g)
            if progress is not None:
                progress(stop - start)
        diff = (act[:, j, None] - bases[:, j]).float()  # (L, P, d_ff)
        scores += (diff * grad_sum / steps).mean(dim=1)
    return scores.cpu()


class _Stack:
    """Calls the decoder layers from a given layer upwards for one query position."""

    def __init__(self, model: nn.Module, point: str):
        self.model = model
        self.device = input_device(model)  # where the token ids go and the per-layer states are gathered
        self.spec = arch_spec(model)
        self.config = model.config
        self.point = point
        self.n_layers = num_layers(model)
        self.blocks = get_module(model, self.spec.layers)
        self.final_norm = get_module(model, self.spec.final_norm)
        self.dtype = next(model.parameters()).dtype
        self.kind = {"gpt2": "gpt2", "bloom": "bloom"}.get(self.config.model_type, "decoder")
        if self.kind == "decoder":
            types = getattr(self.config, "layer_types", None)
            if not types:  # Mistral: one window for every layer, when set
                sliding = getattr(self.config, "sliding_window", None) is not None
                types = ["sliding_attention" if sliding else "full_attention"] * self.n_layers
            self.layer_types = list(types)
            inner = get_module(model, self.spec.layers.rsplit(".", 1)[0])
            self.rotary = inner.rotary_emb
            self.rotary_per_type = "layer_type" in inspect.signature(self.rotary.forward).parameters

    @torch.no_grad()
    def clean_pass(self, example: Example, layers: list[int]) -> tuple[Tensor, Tensor, DynamicCache]:
        """One forward of the teacher-forced sequence: what every IG row starts from.

        Returns:
            ``(hidden, act, cache)``: ``hidden[i, j]`` is the hidden state entering
            layer ``layers[i]`` at the position predicting target token ``j``,
            ``(L, m, d)``; ``act[i, j]`` the activation at the attribution point
            there, ``(L, m, d_ff)``; ``cache`` the KV cache of every position of
            the pass (sliding-window layers keep their past, so that `_fork` can
            cut it back to any prefix).  The LM head is never run.
        """
        spec, m = self.spec, len(example.targets)
        positions = [example.position(j) for j in range(m)]
        ids = torch.tensor([example.ids[: positions[-1] + 1]], device=self.device)  # (1, T)
        cache = DynamicCache(config=self.config)
        for layer in cache.layers:
            if hasattr(layer, "activate_past_recording"):
                layer.activate_past_recording()
        blocks = [f"{spec.layers}.{layer}" for layer in layers]
        points = [point_module(spec, self.point, layer) for layer in layers]
        names = list(dict.fromkeys([*blocks, *points, f"{spec.layers}.{self.n_layers - 1}"]))
        with trace(self.model, names, retain_input=True, retain_output=self.point == "mlp_in", stop=True,
                   detach=True) as tr:
            self.model(input_ids=ids, cache=cache, use_cache=True)
        field = "input" if self.point == "down_in" else "output"
        hidden = torch.stack([tr[n].input[0, positions].to(self.device) for n in blocks])  # (L, m, d)
        act = torch.stack([getattr(tr[n], field)[0, positions].to(self.device) for n in points])  # (L, m, d_ff)
        return hidden, act, cache

    def run(
        self, full: DynamicCache, drop: int, pos: int, entries: dict[int, tuple[Tensor, Tensor]], head: Head,
        target: int,
    ) -> dict[int, Tensor]:
        """Run one chunk of IG rows and return dP(target)/dx' for each row.

        Args:
            full: the clean pass's KV cache; not modified.
            drop: how many of its last positions to leave out (the prefix is the rest).
            pos: the predicting position.
            entries: ``{layer: (h, values)}``: the clean hidden state entering
                ``layer`` ``(d,)`` and the scaled activations of the rows that
                scale that layer ``(n, d_ff)``.
            head: the LM head.
            target: the target token id.

        Returns:
            ``{layer: grads}``, ``(n, d_ff)`` per layer.
        """
        first = min(entries)
        sizes, b = {}, 0
        for i in range(first, self.n_layers):
            b += entries[i][1].shape[0] if i in entries else 0
            sizes[i] = b
        cache = _fork(full, drop, sizes)
        ctx = self._context(cache, pos)
        leaves = {layer: values.detach().requires_grad_(True) for layer, (_, values) in entries.items()}
        names = {point_module(self.spec, self.point, layer): layer for layer in entries}

        def put(x, name):  # x: (B_i, 1, d_ff); the rows that enter at this layer are last
            return replace_rows(x, leaves[names[name]], position=-1)

        kwargs = {"edit_input": put} if self.point == "down_in" else {"edit": put}
        with torch.enable_grad(), trace(self.model, list(names), retain_output=False, **kwargs):
            hidden = None  # (B_i, 1, d)
            for i in range(first, self.n_layers):
                if i in entries:
                    h = entries[i][0].to(self.dtype)
                    new = h[None, None].expand(entries[i][1].shape[0], 1, -1)  # (n, 1, d)
                    hidden = new if hidden is None else torch.cat([hidden, new.to(hidden.device)], dim=0)
                hidden = self._layer(i, hidden, cache, ctx)
            final = self.final_norm(hidden)[:, -1]  # (B, d)
            _, grad_h = head(final, target)  # (B, d)
            order = sorted(leaves)
            grads = torch.autograd.grad(final, [leaves[layer] for layer in order], grad_outputs=grad_h)
        return dict(zip(order, grads))

    def _context(self, cache: DynamicCache, pos: int) -> dict:
        """The per-call arguments the model's forward would give its layers, for batch 1 (they broadcast)."""
        dummy = torch.zeros(1, 1, self.config.hidden_size, dtype=self.dtype, device=self.device)  # (1, 1, d)
        pos_ids = torch.tensor([[pos]], device=self.device)  # (1, 1)
        mask_kwargs = dict(config=self.config, inputs_embeds=dummy, attention_mask=None, cache=cache,
                           position_ids=pos_ids)
        ctx = {"pos_ids": pos_ids, "full": create_causal_mask(**mask_kwargs)}
        if self.kind == "decoder":
            if "sliding_attention" in self.layer_types:
                ctx["sliding"] = create_sliding_window_causal_mask(**mask_kwargs)
            if self.rotary_per_type:
                ctx["rope"] = {t: self.rotary(dummy, pos_ids, t) for t in set(self.layer_types)}
            else:
                rope = self.rotary(dummy, pos_ids)
                ctx["rope"] = {t: rope for t in set(self.layer_types)}
        elif self.kind == "bloom":
            ctx["kv_length"] = pos + 1
        return ctx

    def _layer(self, i: int, hidden: Tensor, cache: DynamicCache, ctx: dict) -> Tensor:
        block = self.blocks[i]
        if self.kind == "decoder":
            kind = self.layer_types[i]
            out = block(hidden, attention_mask=ctx["sliding" if kind == "sliding_attention" else "full"],
                        position_embeddings=ctx["rope"][kind], position_ids=ctx["pos_ids"], cache=cache,
                        use_cache=True)
        elif self.kind == "gpt2":
            out = block(hidden, cache=cache, attention_mask=ctx["full"], use_cache=True,
                        position_ids=ctx["pos_ids"])
        else:
            # lazy: importing BLOOM's modeling module costs seconds, and only BLOOM needs it
            from transformers.models.bloom.modeling_bloom import build_alibi_tensor

            ones = torch.ones(hidden.shape[0], ctx["kv_length"], device=hidden.device)
            alibi = build_alibi_tensor(ones, self.config.n_head, dtype=hidden.dtype)  # (B*H, 1, kv)
            out = block(hidden, layer_past=cache, attention_mask=ctx["full"], use_cache=True,
                        output_attentions=False, alibi=alibi)
        return out[0] if isinstance(out, tuple) else out


def _fork(full: DynamicCache, drop: int, sizes: dict[int, int]) -> DynamicCache:
    """A prefix of ``full`` whose layer ``i`` holds the prefix keys/values repeated ``sizes[i]`` times.

    Layer objects are copied (so the sliding-window bookkeeping travels along)
    and cut back by ``drop`` positions with their own ``crop``; the tensors are
    sliced and expanded views, never written: ``update`` concatenates.
    """
    cache = copy.copy(full)
    cache.layers = [copy.copy(layer) for layer in full.layers]
    for i, layer in enumerate(cache.layers):
        if not layer.is_initialized:
            continue
        layer.crop(-drop)
        b = sizes.get(i)
        if b:
            layer.keys = layer.keys.expand(b, -1, -1, -1)  # (b, H_kv, T, hd)
            layer.values = layer.values.expand(b, -1, -1, -1)  # (b, H_kv, T, hd)
    return cache
