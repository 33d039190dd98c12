"""Evaluation: scoring primitives, the paper's metrics, and the resumable benchmark runner.

- `memla.evaluate.batching`: batched prompt passes (left padding, KV caches, a shared leading prefix).
- `memla.evaluate.scoring`: batched teacher-forced log-probabilities and greedy generation.
- `memla.evaluate.metrics`: token F1, ES / PS / NS / QS per cell, transferability, standard errors,
  downstream accuracy (`TaskResult`).
- `memla.evaluate.cells`: records evaluated in many target languages in one batched pass.
- `memla.evaluate.store`: the append-only JSONL result file and the run manifest.
- `memla.evaluate.runner`: `run_bench`, the method × record × ls × lt loop behind ``memla bench``.
- `memla.evaluate.sequential`: many edits in a row, measured at checkpoints (``memla bench --sequential``),
  and downstream accuracy before / after N edits (``memla downstream``).
- `memla.evaluate.tasks`: the downstream tasks on local JSONL files (built-in ``piqa-mini``, ``nli-mini``,
  ``xnli-mini``).
- `memla.evaluate.downstream`: downstream accuracy of a model as it is (memla or lm-eval engine).
- `memla.evaluate.lmeval`: the adapter to lm-evaluation-harness (optional extra ``memla[lm-eval]``).
"""

from memla.evaluate.cells import evaluate_record
from memla.evaluate.metrics import METRICS, UNEDITED, Stat, summarize, token_f1
from memla.evaluate.runner import RunSummary, run_bench
from memla.evaluate.scoring import TargetScore, greedy_generate, score_targets
from memla.evaluate.store import ResultStore, load_run
from memla.tokens import encode_pair

__all__ = [
    "METRICS",
    "ResultStore",
    "RunSummary",
    "Stat",
    "TargetScore",
    "UNEDITED",
    "encode_pair",
    "evaluate_record",
    "greedy_generate",
    "load_run",
    "run_bench",
    "score_targets",
    "summarize",
    "token_f1",
]
