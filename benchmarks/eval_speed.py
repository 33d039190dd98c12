"""Speed of evaluating one edit in all 12 target languages (`memla.evaluate.cells.evaluate_record`).

Evaluates mkeb-mini test records on the (unedited) default model three ways and
prints one Markdown table (median of ``--repeats`` runs, after one warm-up):

- batched: every prompt of every target language in one scoring pass and one
  generation pass (what ``memla bench`` does);
- per language: one call per target language (12 smaller batches);
- one row per forward: no batching at all;
- IKE prefix: batched, with the in-context prefix of the ``ike`` editor (k = 32
  demonstrations, computed once per call and shared through the KV cache), and
  the same without sharing (``--ike-unshared``; slow).

It also times the runner's per-edit restore check (`memla.models.model_fingerprint`).

Usage::

    MEMLA_CACHE=/tmp/memla-cache .venv/bin/python benchmarks/eval_speed.py [--records 2] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from memla import load_model
from memla.data import load_dataset
from memla.evaluate.cells import evaluate_record
from memla.langs import LANGS
from memla.models import model_fingerprint


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model (default: embedded Gemma 3 270M)")
    parser.add_argument("--records", type=int, default=2, help="mkeb-mini test records per run (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default: 3)")
    parser.add_argument("--skip-unbatched", action="store_true", help="leave out the one-row-per-forward setting")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-ike", action="store_true", help="leave out the IKE-prefix settings")
    parser.add_argument("--ike-unshared", action="store_true", help="also time the IKE prefix without KV sharing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    load_s = time.perf_counter() - t0
    records = [r for r in load_dataset("mkeb-mini", split="test") if set(LANGS) <= set(r.edit)][: args.records]
    n_prompts = sum(
        len(r.paraphrase_prompts.get(lt, ())) + 1 + len(r.neighborhood_prompts.get(lt, ())) + len(r.multi_hop_questions.get(lt, ()))
        for r in records for lt in LANGS
    ) / len(records)

    settings = {
        "batched: all 12 lt in one pass": lambda: [evaluate_record(model, tok, r, LANGS) for r in records],
        "per language: 12 calls": lambda: [evaluate_record(model, tok, r, [lt]) for r in records for lt in LANGS],
    }
    if not args.skip_unbatched:
        settings["one row per forward"] = lambda: [evaluate_record(model, tok, r, LANGS, max_batch_tokens=1) for r in records]
    if not args.no_ike:
        from memla.editors import EditRequest, get_editor

        ike = get_editor("ike")
        prefixes = [ike.edit(model, tok, EditRequest.from_record(r, "en")).prefix for r in records]
        n_prefix = statistics.mean(len(tok(p)["input_ids"]) for p in prefixes)
        settings[f"IKE prefix ({n_prefix:.0f} tokens), shared KV"] = lambda: [
            evaluate_record(model, tok, r, LANGS, prefix=p) for r, p in zip(records, prefixes)]
        if args.ike_unshared:
            import memla.evaluate.batching as batching

            def unshared():
                limit, batching.SHARE_MIN_TOKENS = batching.SHARE_MIN_TOKENS, 10**9
                try:
                    return [evaluate_record(model, tok, r, LANGS, prefix=p) for r, p in zip(records, prefixes)]
                finally:
                    batching.SHARE_MIN_TOKENS = limit

            settings["IKE prefix, not shared"] = unshared
    rows = []
    for name, fn in settings.items():
        times = [t / len(records) for t in _time(fn, args.repeats)]
        rows.append((name, statistics.median(times), min(times), max(times)))
    fp = [t for t in _time(lambda: model_fingerprint(model), args.repeats)]
    rows.append(("restore check (model_fingerprint)", statistics.median(fp), min(fp), max(fp)))

    print(f"model {args.model or 'default (Gemma 3 270M)'} ({load_s:.1f} s to load), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}; "
          f"mkeb-mini test, {len(records)} record(s), {n_prompts:.0f} prompts per edit over 12 languages "
          f"(x2 targets for ES/PS); median of {args.repeats} runs after a warm-up; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print("| setting | s per edit (median) | min | max |")
    print("|---|---:|---:|---:|")
    for name, med, lo, hi in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} |")


if __name__ == "__main__":
    main()
