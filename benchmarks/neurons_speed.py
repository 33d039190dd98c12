"""Speed and memory of knowledge-neuron attribution on the default model (Gemma 3 270M).

Two prompts (6 and 11 tokens), all 18 layers, steps = 20 (360 IG rows): the reference implementation
(per layer, full sequence, full logits) against the fast path (prefix KV cache,
per-layer entry, batched one-token rows, hand-written LM-head gradient), and the
fast path with a bf16 LM head, which the API does not offer because it changes
the thresholded neuron sets (the "same sets" column).  Prints
one table: median wall time of ``--runs`` runs (after one warm-up), the CPU time
(which a busy machine inflates less than the wall time), the ratio,
the peak resident memory above the loaded model, and the agreement.  With
``--profile`` it also prints where the fast path's time goes.

    MEMLA_CACHE=/tmp/memla-cache python benchmarks/neurons_speed.py [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from memla import load_model
from memla.neurons import NeuronSet, attribute
from memla.neurons._common import Head
from memla.neurons.attribution import attribute_with, make_options


def rss_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset the peak-RSS counter (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(fn, runs: int):
    """Median wall and CPU time over ``runs`` runs after one warm-up, peak RSS above the start, last result."""
    fn()
    times, cpus, peaks = [], [], []
    for _ in range(runs):
        base = rss_mib("VmRSS")
        reset_peak()
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        peaks.append(rss_mib("VmHWM") - base)
    return statistics.median(times), times, statistics.median(cpus), max(peaks), out


def stage_profile(model, tok, prompt: str, target: str) -> list[tuple[str, float]]:
    """Wall time of the fast path's stages (one run), by wrapping its functions."""
    from memla.neurons import _common, fast

    spent: dict[str, float] = {}
    originals = []

    def wrap(owner, name, label):
        fn = getattr(owner, name)
        originals.append((owner, name, fn))

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)

    wrap(fast._Stack, "clean_pass", "clean pass + KV cache (1 forward, T tokens)")
    wrap(fast._Stack, "_layer", "decoder layers forward (growing batch)")
    wrap(_common.Head, "__call__", "LM head: logits, softmax, p @ W (blocked)")
    wrap(fast.torch.autograd, "grad", "autograd backward through the layers")
    try:
        start = time.perf_counter()
        attribute(model, tok, prompt, target)
        total = time.perf_counter() - start
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    rows = sorted(spent.items(), key=lambda kv: -kv[1])
    rows.append(("other (baselines, row setup, accumulation)", total - sum(spent.values())))
    rows.append(("total", total))
    return rows


PROMPTS = (
    ("The capital of France is", "Paris"),  # 6 tokens with BOS: short
    ("The city that serves as the capital of France is", "Paris"),  # 11 tokens: a typical MKEB length
)


def bench_prompt(model, tok, prompt: str, target: str, runs: int) -> list[tuple]:
    """Rows ``(name, median, times, cpu, peak, scores)`` for the three variants on one prompt."""
    opts = make_options(model)
    bf16 = Head(model, dtype=torch.bfloat16)
    variants = [
        ("reference (per layer, full seq, full logits)",
         lambda: attribute(model, tok, prompt, target, method="reference")),
        ("fast, fp32", lambda: attribute(model, tok, prompt, target)),
        ("fast, bf16 LM head (measured only, not offered)",
         lambda: attribute_with(model, tok, prompt, target, opts, lang=None, head=bf16, fingerprint=None)),
    ]
    return [(name, *measure(fn, runs)) for name, fn in variants]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", default=None, help="benchmark this prompt only (default: two built-in prompts)")
    parser.add_argument("--target", default="Paris")
    parser.add_argument("--profile", action="store_true", help="also print the fast path's stage times")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model()
    load = os.getloadavg()[0]
    prompts = [(args.prompt, args.target)] if args.prompt else list(PROMPTS)
    print(f"\nneurons_speed: Gemma 3 270M, 18 layers x 20 steps (360 IG rows), {torch.get_num_threads()} threads, "
          f"load average at start {load:.1f}")
    header = f"| {'prompt':>6s} | {'method':48s} | {'median s':>8s} | {'runs s':>20s} | {'CPU s':>6s} | " \
             f"{'speed-up':>8s} | {'peak MiB':>8s} | {'max diff/max':>13s} | {'same sets':>9s} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for prompt, target in prompts:
        results = bench_prompt(model, tok, prompt, target, args.runs)
        ref, base_time = results[0][-1], results[0][1]
        n_tokens = f"{len(tok(prompt).input_ids)} tok"
        for name, med, times, cpu, peak, scores in results:
            diff = float((scores - ref).abs().max() / ref.abs().max())
            same = all(NeuronSet.from_scores(scores, threshold=t) == NeuronSet.from_scores(ref, threshold=t)
                       for t in (0.1, 0.2, 0.3))
            runs = " ".join(f"{t:.2f}" for t in times)
            print(f"| {n_tokens:>6s} | {name:48s} | {med:8.2f} | {runs:>20s} | {cpu:6.1f} | "
                  f"{base_time / med:7.1f}x | {peak:8.0f} | {diff:13.1e} | {'yes' if same else 'NO':>9s} |",
                  flush=True)
    if args.profile:
        prompt, target = prompts[0]
        print(f"\nwhere the fast path's time goes ({prompt!r}, one run):")
        for label, secs in stage_profile(model, tok, prompt, target):
            print(f"  {label:48s} {secs:6.2f} s")


if __name__ == "__main__":
    main()
