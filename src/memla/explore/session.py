"""The explore page's engine, free of any UI library: one model, edits on request, plain results.

`Explorer` holds the model loaded once.  `Explorer.iter_run` checks a `Fact`, then for each
chosen method edits it (`memla.editors`), measures the edit in every language of the fact
(`memla.compare.compare`: P(new) / P(old) and greedy completions before → after; and
`memla.evaluate.cells.score_cells`: the neighbourhood prompts' NS-margin and NS-keep and the
fluency of the edit prompt's continuation, via `memla.evaluate.metrics`), and for MEMLA-family
methods shows the knowledge neurons (`memla.neurons`).  It yields an `Update` at every stage,
so the page can show progress per method, and stops between stages when asked (Cancel).

Every use of the model holds one lock, and every edit is applied only inside
``with apply(model, result):`` and checked afterwards with the model fingerprint: each edit
starts from the pristine weights, and two visitors never see each other's edits.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from memla.compare import LangEffect, compare
from memla.editors import EditRequest, EditResult, apply, editor_entry, get_editor
from memla.editors.adapter import save_edit
from memla.editors.memla import MemlaEditor
from memla.errors import EditError, MemlaError
from memla.evaluate.cells import score_cells
from memla.evaluate.metrics import keep_share, record_value
from memla.explore.fact import Fact, check_fact
from memla.models import model_fingerprint
from memla.neurons import attribute

log = logging.getLogger(__name__)

TOP_NEURONS = 10  # neurons listed per locating language
LOCALITY_METRICS = ("ns", "fluency")  # what score_cells measures per language (NS items carry NS-margin and NS-keep)


@dataclass(frozen=True)
class Settings:
    """How the page's model was loaded (the reproduce command repeats it) and its token limit.

    Attributes:
        model: ``--model`` as given (None: the embedded default).
        dtype: ``--dtype``.
        device: ``--device`` (resolved).
        device_map: ``--device-map`` or None.
        max_tokens: the longest text accepted, in tokens (``--max-tokens``).
    """

    max_tokens: int
    model: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None


@dataclass(frozen=True)
class LangLocality:
    """One language's locality before and after an edit (`memla.evaluate.metrics`; None where not measurable).

    Attributes:
        ns_margin_before / ns_margin_after: share of neighbourhood prompts whose own answer beats ``target_new``.
        ns_keep: share of the unedited greedy continuations the edit left unchanged.
        fluency_before / fluency_after: n-gram entropy (bits) of the edit prompt's continuation.
        repeats_after: mentions of ``target_new`` in the edited continuation.
    """

    ns_margin_before: float | None
    ns_margin_after: float | None
    ns_keep: float | None
    fluency_before: float | None
    fluency_after: float | None
    repeats_after: float | None


@dataclass(frozen=True)
class NeighbourCheck:
    """A neighbourhood prompt before and after an edit.

    Attributes:
        kept_before / kept_after: the model prefers the prompt's own answer over ``target_new``
            (NS-margin); None when the answer is ``target_new`` itself.
        keep: NS-keep of this prompt (`memla.evaluate.metrics.keep_share`).
    """

    lang: str
    prompt: str
    answer: str
    before: str
    after: str
    kept_before: bool | None
    kept_after: bool | None
    keep: float


@dataclass(frozen=True)
class FluencyCheck:
    """The edit prompt's greedy continuation before and after an edit, with its n-gram entropy and repeats."""

    lang: str
    prompt: str
    before: str
    after: str
    entropy_before: float
    entropy_after: float
    repeats_after: int


@dataclass(frozen=True)
class TopNeuron:
    """One of the highest-scoring neurons of a locating language.

    Attributes:
        kind: ``"independent"`` (in I = ∩_k N^k, Eq. 3), ``"specific"`` (in N^k but not I, Eq. 4)
            or ``"below threshold"`` (scored, not selected).
        relative: the score over the language's highest score (the threshold compares this).
    """

    lang: str
    rank: int
    layer: int
    index: int
    score: float
    relative: float
    kind: str


@dataclass(frozen=True)
class NeuronView:
    """The knowledge neurons of a MEMLA-family edit (paper §4.1).

    Attributes:
        counts: per edited layer, ``(language-specific, language-independent)`` neurons (the edit's info).
        per_language: neurons located per language, ``|N^k|``.
        top: the `TOP_NEURONS` highest integrated-gradients scores on the edit prompt, per locating language.
    """

    counts: Mapping[int, tuple[int, int]]
    per_language: Mapping[str, int]
    top: tuple[TopNeuron, ...]


@dataclass(frozen=True)
class MethodRun:
    """What one method did to the fact.

    Attributes:
        method: registry name.
        config: the config it ran with.
        result: the edit (None when the method could not edit the fact).
        seconds: wall time of the edit.
        effects: per language, P(new) / P(old) and completions before → after (`memla.compare`).
        locality: per language, `LangLocality`.
        neighbours: per neighbourhood prompt, `NeighbourCheck`.
        fluency: per language, `FluencyCheck`.
        neurons: MEMLA-family methods only.
        error: why the method could not edit the fact (an `EditError`), else None.
    """

    method: str
    config: Any
    result: EditResult | None = None
    seconds: float = 0.0
    effects: tuple[LangEffect, ...] = ()
    locality: Mapping[str, LangLocality] = field(default_factory=dict)
    neighbours: tuple[NeighbourCheck, ...] = ()
    fluency: tuple[FluencyCheck, ...] = ()
    neurons: NeuronView | None = None
    error: str | None = None

    @property
    def flips(self) -> tuple[int, int]:
        """``(languages flipped, languages with an old object to compare with)``."""
        judged = [e.flipped for e in self.effects if e.flipped is not None]
        return sum(judged), len(judged)


@dataclass(frozen=True)
class Update:
    """Progress of one method: ``stage`` is "editing", "measuring", "neurons", "done", "failed" or "cancelled"."""

    method: str
    stage: str
    run: MethodRun | None = None


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).replace("\n", " ⏎ ").strip()


def lang_locality(before: Mapping[str, Any], after: Mapping[str, Any]) -> LangLocality:
    """NS-margin, NS-keep and fluency of one language from `score_cells`' raw cells before and after."""
    return LangLocality(
        ns_margin_before=record_value(before, "ns_margin"), ns_margin_after=record_value(after, "ns_margin"),
        ns_keep=record_value(after, "ns_keep", before),
        fluency_before=record_value(before, "fluency"), fluency_after=record_value(after, "fluency"),
        repeats_after=record_value(after, "repeats"),
    )


def _checks(tokenizer, lang: str, before: Mapping[str, Any], after: Mapping[str, Any]):
    """The neighbourhood and fluency rows of one language from the raw cells before and after."""

    def kept(item):
        return None if item.get("margin") is None else bool(item["margin"]["kept"])

    neighbours = [NeighbourCheck(lang, b["prompt"], b["answer"], _decode(tokenizer, b["continuation"]),
                                 _decode(tokenizer, a["continuation"]), kept(b), kept(a),
                                 keep_share(a["continuation"], b["continuation"]))
                  for b, a in zip(before["ns"], after["ns"])]
    fluency = [FluencyCheck(lang, b["prompt"], b["continuation"].replace("\n", " ⏎ ").strip(),
                            a["continuation"].replace("\n", " ⏎ ").strip(), b["entropy"], a["entropy"], a["repeats"])
               for b, a in zip(before["fluency"], after["fluency"])]
    return neighbours, fluency


def neuron_view(model: nn.Module, tokenizer, editor: MemlaEditor, request: EditRequest, result: EditResult, *,
                top: int = TOP_NEURONS) -> NeuronView:
    """The neurons a MEMLA-family edit located and edited, with the top-scoring ones per language.

    The neuron sets come from the editor's own `MemlaEditor.locate` and the scores from
    `memla.neurons.attribute` with the editor's settings (both read the attribution cache the
    edit wrote when ``ig_cache`` is on).

    Args:
        model, tokenizer: the unedited model and its tokenizer.
        editor: the editor that made ``result``.
        request: the edit request.
        result: the edit (its info holds the per-layer counts).
        top: neurons listed per language.
    """
    cfg = editor.config
    per_language, independent, _ = editor.locate(model, tokenizer, request)
    rows = []
    for lang, found in per_language.items():
        fact = request.in_lang(lang)
        scores = attribute(model, tokenizer, fact.text, fact.target_true, lang=lang, cache=cfg.ig_cache,
                           steps=cfg.ig_steps, baseline=cfg.ig_baseline, point=cfg.ig_point)  # (L, d_ff)
        peak = float(scores.max())
        values, flat = scores.flatten().topk(min(top, scores.numel()))
        for rank, (value, i) in enumerate(zip(values.tolist(), flat.tolist()), 1):
            layer, index = divmod(i, scores.shape[1])
            kind = ("independent" if (layer, index) in independent
                    else "specific" if (layer, index) in found else "below threshold")
            rows.append(TopNeuron(lang, rank, layer, index, value, value / peak if peak > 0 else 0.0, kind))
    counts = {int(layer): (v["specific"], v["independent"]) for layer, v in result.info.get("neurons", {}).items()}
    return NeuronView(dict(sorted(counts.items())), dict(result.info.get("neurons_per_language", {})), tuple(rows))


class Explorer:
    """The model loaded once, and edits of facts on it, one at a time.

    Args:
        model: the model (never left edited).
        tokenizer: its tokenizer.
        settings: how it was loaded, and the token limit.
    """

    def __init__(self, model: nn.Module, tokenizer, settings: Settings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.lock = threading.Lock()
        self.fingerprint = model_fingerprint(model)
        self.broken: str | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="memla-explore-")

    def close(self) -> None:
        """Delete the adapters prepared for download."""
        self._workdir.cleanup()

    def _check_pristine(self, method: str) -> None:
        """Stop serving edits if ``method`` left the weights changed (every later edit would start from them)."""
        if model_fingerprint(self.model) != self.fingerprint:
            self.broken = f"{method} left the model's weights changed; restart memla explore"
            raise RuntimeError(self.broken)

    def check(self, fact: Fact) -> EditRequest:
        """The fact's edit request, after the checks ``memla edit`` makes (`memla.explore.fact.check_fact`)."""
        return check_fact(fact, self.model, self.tokenizer, max_tokens=self.settings.max_tokens)

    def iter_run(self, fact: Fact, methods: Sequence[str], configs: Mapping[str, Any] | None = None, *,
                 stop: threading.Event | None = None) -> Iterator[Update]:
        """Edit ``fact`` with each method in turn, each from the pristine weights; yield progress and results.

        Args:
            fact: the fact.
            methods: registry names, in the order to run.
            configs: per method, a config (dataclass, dict or None for the defaults).
            stop: once set, the stage under way finishes and no other starts (the page's Cancel).

        Yields:
            `Update` per stage; the "done" / "failed" one carries the method's `MethodRun`; after a
            stop, a "cancelled" one for every method not finished.

        Raises:
            MemlaError: bad input (the fact, a method name or a config), before any edit.
            RuntimeError: an editor left the model changed (the explorer then refuses further edits).
        """
        if self.broken:
            raise RuntimeError(self.broken)
        if not methods:
            raise MemlaError("choose at least one method")
        request = self.check(fact)
        editors = {m: get_editor(m, (configs or {}).get(m)) for m in methods}
        record = fact.record_for_scoring()
        cells = [(record, lt, LOCALITY_METRICS) for lt in fact.langs]
        with self.lock:
            before = score_cells(self.model, self.tokenizer, cells)
        finished = set()
        for method, editor in editors.items():
            steps = self._run_method(method, editor, request, fact, cells, before)
            for update in steps:
                if update.run is None and stop is not None and stop.is_set():  # before the stage's work starts
                    steps.close()
                    break
                yield update
                if update.run is not None:
                    finished.add(method)
        for method in (m for m in editors if m not in finished):
            yield Update(method, "cancelled")

    def _run_method(self, method: str, editor, request: EditRequest, fact: Fact, cells: list,
                    before: list) -> Iterator[Update]:
        """One method's stages: each update is yielded before its stage runs; the last carries the `MethodRun`."""
        yield Update(method, "editing")
        try:
            with self.lock:
                t0 = time.perf_counter()
                try:
                    result = editor.edit(self.model, self.tokenizer, request)
                finally:
                    self._check_pristine(method)
                seconds = time.perf_counter() - t0
        except MemlaError as err:  # the method cannot serve this fact (e.g. no neurons found): the others go on
            yield Update(method, "failed", MethodRun(method, editor.config, error=str(err)))
            return
        yield Update(method, "measuring")
        with self.lock:
            effects, _ = compare(self.model, self.tokenizer, request, result)
            with apply(self.model, result):
                after = score_cells(self.model, self.tokenizer, cells, prefix=result.prefix)
            self._check_pristine(method)
        neighbours, fluency, locality = [], [], {}
        for lt, b, a in zip(fact.langs, before, after):
            n, f = _checks(self.tokenizer, lt, b, a)
            neighbours += n
            fluency += f
            locality[lt] = lang_locality(b, a)
        neurons = None
        if isinstance(editor, MemlaEditor):
            yield Update(method, "neurons")
            with self.lock:
                neurons = neuron_view(self.model, self.tokenizer, editor, request, result)
        yield Update(method, "done", MethodRun(method, editor.config, result, seconds, tuple(effects), locality,
                                               tuple(neighbours), tuple(fluency), neurons))

    def run(self, fact: Fact, methods: Sequence[str], configs: Mapping[str, Any] | None = None) -> list[MethodRun]:
        """`iter_run` to the end: one `MethodRun` per method."""
        return [u.run for u in self.iter_run(fact, methods, configs) if u.run is not None]

    def export_adapter(self, run: MethodRun) -> Path:
        """The edit of ``run`` as a zip of its saved folder (`memla.editors.adapter.save_edit`: a PEFT LoRA
        adapter, or dense deltas for FT), in a temporary folder of this explorer.

        Raises:
            EditError: the method edits by prompting (IKE) or made no edit.
        """
        if run.result is None or not editor_entry(run.method).edits_weights or not run.result.deltas:
            raise EditError(f"{run.method} made no weight edit to save (prompt-based methods such as IKE have no adapter)")
        folder = Path(tempfile.mkdtemp(prefix=f"{run.method}-", dir=self._workdir.name))
        save_edit(run.result, self.model, folder / "edit")
        return Path(shutil.make_archive(str(folder / f"memla-{run.method}-edit"), "zip", folder / "edit"))
