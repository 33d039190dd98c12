"""Seconds per edit and peak memory of every editing method on the default model.

Each method runs in its own worker process (so that peak RSS is per method):
the worker loads the model, edits ``--edits`` records of mkeb-mini's test split
in the source language, and reports the median, min and max seconds per edit,
the RSS after loading the model and the peak RSS.  Caches that would make
repeated edits free (MEMLA's attribution cache) are disabled.

    python benchmarks/edit_speed.py                      # all registered methods
    python benchmarks/edit_speed.py --methods memla,rome --edits 5
    python benchmarks/edit_speed.py --methods memla,memla-local --config cfg.yaml

``--config`` takes the file ``memla bench --config`` takes (``{method: {field: value}}``);
methods it does not name keep their defaults, so memla measured beside a reconfigured
memla-local is still the baseline of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

def worker(method: str, edits: int, lang: str, overrides: dict) -> dict:
    import torch

    from memla import load_model
    from memla.data import load_dataset
    from dataclasses import fields

    from memla.editors import EditRequest, editor_entry, get_editor
    from memla.errors import EditError

    torch.manual_seed(0)
    model, tok = load_model()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB)
    no_cache = {"ig_cache": False} if "ig_cache" in {f.name for f in fields(editor_entry(method).config_cls)} else {}
    editor = get_editor(method, {**overrides, **no_cache})  # MEMLA's attribution cache off: every edit pays its attribution
    records = load_dataset("mkeb-mini", split="test")[:edits]
    times, skipped = [], None
    for record in records:
        request = EditRequest.from_record(record, lang, langs=("en", "zh", "fr"))
        t0 = time.perf_counter()
        try:
            editor.edit(model, tok, request)
        except EditError as err:
            skipped = str(err)
            break
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": method, "times": times, "rss_model": rss_model, "rss_peak": peak, "skipped": skipped,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", help="comma-separated methods (default: all registered)")
    parser.add_argument("--edits", type=int, default=3, help="edits per method; the median is reported (default: 3)")
    parser.add_argument("--lang", default="en", help="source language (default: en)")
    parser.add_argument("--config", help="YAML/JSON file {method: {field: value}} of config overrides (as memla bench)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.edits, args.lang, json.loads(args.overrides))))
        return
    from memla.config import read_method_configs
    from memla.editors import registry
    from memla.errors import MemlaError
    from memla.evaluate.runner import resolve_methods

    methods = args.methods.split(",") if args.methods else list(registry())
    try:
        configs = read_method_configs(args.config)
        resolve_methods(methods, configs)  # unknown methods or fields fail here, before any worker starts
    except MemlaError as err:
        parser.error(str(err))
    rows = []
    for method in methods:
        out = subprocess.run([sys.executable, __file__, "--worker", method, "--edits", str(args.edits), "--lang", args.lang,
                              "--overrides", json.dumps(configs.get(method, {}))], capture_output=True, text=True,
                             env=os.environ)
        if out.returncode != 0:
            rows.append({"method": method, "error": out.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = next((statistics.median(r["times"]) for r in rows if r.get("method") == "memla" and r.get("times")), None)
    print(f"edit speed on the default model (Gemma 3 270M, fp32, CPU), {args.edits} edits of mkeb-mini test "
          f"records in {args.lang}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
          + (f"; config overrides {json.dumps(configs)}" if configs else "") + "\n")
    print("| method | median s/edit | min | max | ratio vs memla | RSS after load (GiB) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error") or r.get("skipped") or not r.get("times"):
            reason = r.get("error") or r.get("skipped") or "no edits"
            print(f"| {r['method']} | skipped: {reason} | | | | | |")
            continue
        med = statistics.median(r["times"])
        ratio = f"{med / ref:.2f}" if ref else "-"
        print(f"| {r['method']} | {med:.2f} | {min(r['times']):.2f} | {max(r['times']):.2f} | {ratio} | "
              f"{r['rss_model']:.2f} | {r['rss_peak']:.2f} |")


if __name__ == "__main__":
    main()
