"""The explore page: a Gradio Blocks UI over `memla.explore.session.Explorer`.

Gradio is an optional extra (``pip install 'memla[ui]'``) and is imported only here, when
the page is built.  The callbacks are thin: they turn the page's inputs into a `Fact`, ask
the explorer, and lay out `memla.explore.views` rows and charts.  Bad input shows as an
inline message (and a toast), never a traceback; elements carry stable ``elem_id`` values
(``explore-...``) for browser tests.  Edits run one at a time (``concurrency_limit=1`` on
the edit event, and the explorer's lock around every use of the model); Cancel asks the
visitor's own edit to stop before its next stage.
"""

# no `from __future__ import annotations` here: Gradio recognises the `gr.Request` parameters of the
# callbacks by their annotation objects, and `gr` is imported inside `build_app`
import io
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from memla.data import Record
from memla.editors import registry
from memla.errors import MemlaError
from memla.explore import views
from memla.explore.command import reproduce_command
from memla.explore.configs import configs_text, parse_configs
from memla.explore.fact import FACT_COLUMNS, NEIGHBOUR_COLUMNS, Fact, fact_from_record, fact_from_rows
from memla.explore.session import Explorer, MethodRun
from memla.langs import LANGS
from memla.models import describe

log = logging.getLogger(__name__)

INSTALL_HINT = "the explore page needs the ui extra: pip install 'memla[ui]'"


def require_gradio():
    """The gradio module, or a one-line `MemlaError` saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise MemlaError(INSTALL_HINT) from None
    return gradio


def record_choices(records: Sequence[Record]) -> list[tuple[str, str]]:
    """``(label, example_id)`` per record for the record picker, e.g. ``"0 · capital: France → Rome"``."""
    out = []
    for r in records:
        fact = r.edit.get("en") or r.edit[r.langs[0]]
        relation = f"{r.relation_description}: " if r.relation_description else ""
        out.append((f"{r.example_id} · {relation}{fact.subject} → {fact.target_new}", str(r.example_id)))
    return out


def _table(rows: list[list[str]], columns: Sequence[str]) -> dict[str, Any]:
    return {"data": rows or [[""] * len(columns)], "headers": list(columns)}


def _image(png: bytes | None):
    from PIL import Image

    return None if png is None else Image.open(io.BytesIO(png))


def _error(err: Exception) -> str:
    """The inline message for an exception: its one line for bad input, its type and text for a bug."""
    if isinstance(err, MemlaError):
        return f"**Cannot edit:** {err}"
    log.error("explore: %s", err, exc_info=err)
    return f"**Internal error** ({type(err).__name__}): {err}"


def build_app(explorer: Explorer, datasets: Mapping[str, Sequence[Record]], *, methods: Sequence[str] = ()):
    """The page as a ``gradio.Blocks`` (not launched).

    Args:
        explorer: the model and its edit engine.
        datasets: the datasets to pick facts from, by the name or path given on the command line.
        methods: the methods chosen when the page opens.
    """
    gr = require_gradio()
    names = list(registry())
    first_name = next(iter(datasets))
    first = datasets[first_name][0]
    start = fact_from_record(first, "en" if "en" in first.edit else first.langs[0], dataset=first_name)
    info = describe(explorer.model)
    model_line = (f"model **{explorer.settings.model or 'default (Gemma 3 270M)'}** · {info['model type']}, "
                  f"{info['layers']} layers, {info['parameters']} parameters · {info['dtype']} on {info['devices']}")

    def on_dataset(name: str):
        choices = record_choices(datasets[name])
        return gr.update(choices=choices, value=choices[0][1])

    def on_load(name: str, record_id: str, source: str):
        record = next(r for r in datasets[name] if str(r.example_id) == str(record_id))
        if source not in record.edit:
            return gr.update(), gr.update(), gr.update(), f"**Cannot load:** record {record_id} has no {source!r} fact"
        fact = fact_from_record(record, source, dataset=name)
        return [list(r) for r in fact.rows], [list(r) for r in fact.neighbours], fact, ""

    def on_clear():
        return [[k, "", "", "", ""] for k in LANGS], [[k, "", ""] for k in LANGS], None, ""

    stops: dict[str, threading.Event] = {}  # per visitor (session): set by Cancel, read between stages

    def on_run(rows, neighbours, source, chosen, configs, picked, request: gr.Request):
        status = {m: ("queued", None) for m in chosen or ()}
        runs: list[MethodRun] = []
        stop = stops[request.session_hash] = threading.Event()
        yield {message: "", status_table: _table(views.status_rows(status), views.STATUS_COLUMNS)}
        try:
            fact = fact_from_rows(source, rows, neighbours, picked=picked)
            parsed = parse_configs(configs, chosen or ())
            for update in explorer.iter_run(fact, chosen or (), parsed, stop=stop):
                status[update.method] = (update.stage, update.run.seconds if update.run else None)
                out = {status_table: _table(views.status_rows(status), views.STATUS_COLUMNS)}
                if update.run is not None:
                    runs.append(update.run)
                    out.update(_results(fact, runs))
                if update.stage == "cancelled":
                    out[message] = "Cancelled."
                yield out
        except Exception as err:  # every failure is a message on the page, never a traceback
            gr.Warning(str(err))
            yield {message: _error(err)}
        finally:
            stops.pop(request.session_hash, None)

    def _results(fact: Fact, runs: list[MethodRun]) -> dict:
        done = [r for r in runs if r.error is None]
        commands = "\n\n".join(f"# {r.method}\n{reproduce_command(fact, r.method, r.config, explorer.settings)}"
                               for r in done)
        savable = [r.method for r in done if r.result is not None and r.result.deltas]
        return {
            summary: _table(views.summary_rows(runs), views.SUMMARY_COLUMNS),
            heatmap: _image(views.flip_heatmap(runs)),
            results: _table(views.result_rows(runs), views.RESULT_COLUMNS),
            neighbourhood: _table(views.neighbour_rows(runs), views.NEIGHBOURHOOD_COLUMNS),
            fluency: _table(views.fluency_rows(runs), views.FLUENCY_COLUMNS),
            neuron_image: _image(views.neuron_chart(runs)),
            neuron_table: _table(views.neuron_rows(runs), views.NEURON_COLUMNS),
            command: commands,
            adapter_method: gr.update(choices=savable, value=savable[0] if savable else None),
            runs_state: runs,
        }

    def on_cancel(request: gr.Request):
        stop = stops.get(request.session_hash)
        if stop is None:
            return "Nothing to cancel."
        stop.set()
        return "Cancelling: the stage under way finishes first."

    def on_adapter(method: str | None, runs: list[MethodRun]):
        run = next((r for r in runs or () if r.method == method), None)
        if run is None:
            return None, "**Cannot save:** run an edit first, then choose its method"
        try:
            return str(explorer.export_adapter(run)), ""
        except MemlaError as err:
            return None, _error(err)

    with gr.Blocks(title="memla explore", analytics_enabled=False) as app:
        picked = gr.State(start)
        runs_state = gr.State([])
        gr.Markdown(f"# memla explore\nEdit one fact, watch it in every language, compare methods, see the "
                    f"knowledge neurons.  {model_line}")
        with gr.Row():
            dataset = gr.Dropdown(list(datasets), value=first_name, label="dataset", elem_id="explore-dataset")
            choices = record_choices(datasets[first_name])
            record_pick = gr.Dropdown(choices, value=choices[0][1], label="record", elem_id="explore-record")
            source_pick = gr.Dropdown(list(LANGS), value=start.source, label="source language (the edit is made in it)",
                                 allow_custom_value=True, elem_id="explore-source")
            load = gr.Button("Fill from the record", elem_id="explore-load")
            clear = gr.Button("Clear (type a fact)", elem_id="explore-clear")
        facts = gr.Dataframe([list(r) for r in start.rows], headers=list(FACT_COLUMNS), type="array",
                             interactive=True, wrap=True, max_height=2000,
                             label="the fact per language: prompt with {} for the subject, subject, new and old object",
                             elem_id="explore-facts")
        with gr.Accordion("neighbourhood prompts (unrelated facts that should not change)", open=False):
            neighbours = gr.Dataframe([list(r) for r in start.neighbours], headers=list(NEIGHBOUR_COLUMNS),
                                      type="array", interactive=True, wrap=True, max_height=2000,
                                      elem_id="explore-neighbours")
        with gr.Row():
            with gr.Column(scale=1):
                chosen = gr.CheckboxGroup(names, value=list(methods), label="methods", elem_id="explore-methods")
                with gr.Row():
                    run = gr.Button("Edit", variant="primary", elem_id="explore-run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="explore-cancel")
                status_table = gr.Dataframe(headers=list(views.STATUS_COLUMNS), type="array", label="progress",
                                            interactive=False, elem_id="explore-status")
            with gr.Column(scale=1):
                configs = gr.Code(configs_text(methods), language="yaml", interactive=True, lines=12, max_lines=24,
                                  label="configs of the chosen methods (editable)", elem_id="explore-configs")
        message = gr.Markdown(elem_id="explore-message")
        with gr.Tab("Results"):
            summary = gr.Dataframe(headers=list(views.SUMMARY_COLUMNS), interactive=False, wrap=True,
                                   label="per method (locality and fluency averaged over the languages)",
                                   elem_id="explore-summary")
            heatmap = gr.Image(type="pil", label="languages × methods", interactive=False, elem_id="explore-heatmap")
            results = gr.Dataframe(headers=list(views.RESULT_COLUMNS), interactive=False, wrap=True,
                                   max_height=4000, column_widths=list(views.RESULT_WIDTHS), label="per language: P = per-token probability, as ES compares",
                                   elem_id="explore-results")
        with gr.Tab("Neighbourhood"):
            neighbourhood = gr.Dataframe(headers=list(views.NEIGHBOURHOOD_COLUMNS), interactive=False, wrap=True,
                                         max_height=4000, label="unrelated prompts: continuation before → after, "
                                         "NS-margin (✓ = own answer beats the new object) and NS-keep",
                                         elem_id="explore-neighbourhood")
        with gr.Tab("Fluency"):
            fluency = gr.Dataframe(headers=list(views.FLUENCY_COLUMNS), interactive=False, wrap=True,
                                   max_height=4000, label="the edit prompt's 16-token continuation (n-gram entropy; "
                                   "'Rome Rome Rome' is 0)", elem_id="explore-fluency")
        with gr.Tab("Neurons"):
            neuron_image = gr.Image(type="pil", label="knowledge neurons per edited layer (MEMLA-family methods)",
                                    interactive=False, elem_id="explore-neuron-chart")
            neuron_table = gr.Dataframe(headers=list(views.NEURON_COLUMNS), interactive=False, max_height=4000,
                                        label="top integrated-gradients scores on the edit prompt, per locating "
                                        "language", elem_id="explore-neurons")
        with gr.Tab("Keep it"):
            command = gr.Code(language="shell", interactive=False, label="memla edit commands that reproduce the edits",
                              elem_id="explore-command")
            with gr.Row():
                adapter_method = gr.Dropdown([], label="method", elem_id="explore-adapter-method")
                adapter_button = gr.Button("Prepare the adapter", elem_id="explore-adapter-button")
            adapter_file = gr.File(label="the edit as a PEFT adapter (zip)", interactive=False,
                                   elem_id="explore-adapter-file")

        dataset.change(on_dataset, dataset, record_pick)
        load.click(on_load, [dataset, record_pick, source_pick], [facts, neighbours, picked, message])
        clear.click(on_clear, None, [facts, neighbours, picked, message])
        chosen.change(configs_text, [chosen, configs], configs)
        outputs = [message, status_table, summary, heatmap, results, neighbourhood, fluency, neuron_image,
                   neuron_table, command, adapter_method, runs_state]
        run.click(on_run, [facts, neighbours, source_pick, chosen, configs, picked], outputs,
                               concurrency_limit=1, concurrency_id="model", show_progress_on=status_table)
        cancel.click(on_cancel, None, message)
        adapter_button.click(on_adapter, [adapter_method, runs_state], [adapter_file, message])
    return app
