"""`memla explore`'s engine on a tiny model: the page's callbacks give what the library calls they wrap give.

Gradio-free (`memla.explore.fact`, `configs`, `session`, `views`, `command`), so these run in
`make test` without the ui extra; the browser test is tests/test_explore_ui.py (`make test-ui`).
"""

from __future__ import annotations

import shlex
import sys
import threading
import zipfile

import pytest
import torch
from tiny import tiny_model

from memla.cli import build_parser, main
from memla.cli.edit import build_request
from memla.compare import compare
from memla.data import MAX_TEXT_CHARS, load_dataset
from memla.editors import EditRequest, apply, get_editor
from memla.editors.adapter import load_edit
from memla.errors import EditError, MemlaError
from memla.evaluate.cells import score_cells
from memla.evaluate.metrics import record_value
from memla.explore import Explorer, Settings, fact_from_record, fact_from_rows
from memla.explore import views
from memla.explore.command import reproduce_command
from memla.explore.configs import configs_text, parse_configs
from memla.langs import LANGS
from memla.models import model_fingerprint

METHODS = ["ft", "memla", "ike"]


@pytest.fixture(scope="module")
def record():
    return load_dataset("mkeb-mini")[0]  # the capital of France: Paris -> Rome, 12 languages


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")  # 4096 positions: every mkeb-mini text fits


@pytest.fixture
def explorer(tiny):
    ex = Explorer(*tiny, Settings(max_tokens=512))
    yield ex
    ex.close()


@pytest.fixture
def fact(record):
    return fact_from_record(record, "en", dataset="mkeb-mini")


def typed(fact, **changes):
    """The fact's tables as the page returns them, with the source row's cells changed."""
    rows = [list(r) for r in fact.rows]
    for col, value in changes.items():
        rows[0][("lang", "prompt", "subject", "new", "old").index(col)] = value
    return fact_from_rows(fact.source, rows, [list(r) for r in fact.neighbours], picked=fact)


# --------------------------------------------------------------------------- the fact


def test_a_picked_record_fills_12_languages_and_edits_as_the_record(fact, record):
    assert fact.langs == LANGS and fact.picked
    assert len(fact.neighbours) == sum(len(v) for v in record.neighborhood_prompts.values())
    assert fact.request() == EditRequest.from_record(record, "en")
    changed = typed(fact, new="Berlin")
    assert not changed.picked and changed.request().target_new == "Berlin"
    assert changed.request().record_id is None and changed.request().paraphrases == ()


def test_empty_rows_are_dropped_and_cells_may_be_none(fact):
    rows = [list(r) for r in fact.rows[:2]] + [["", None, float("nan"), "", ""]]
    out = fact_from_rows("en", rows, [["en", "The capital of Japan is", "Tokyo"], [None, None, None]])
    assert out.langs == ("en", "zh") and out.neighbours == (("en", "The capital of Japan is", "Tokyo"),)


@pytest.mark.parametrize("edit, expected", [
    (dict(prompt="The capital of France is"), "en edit.prompt: no {} subject slot"),
    (dict(prompt="{} and {}"), "en edit.prompt: 2 {} slots"),
    (dict(new=""), "en edit.target_new"),
    (dict(new="Paris"), "en edit.target_new: equals target_true"),
    (dict(subject="x" * (MAX_TEXT_CHARS + 1)), f"more than the limit of {MAX_TEXT_CHARS}"),
    (dict(lang="xx"), "unknown language code"),
])
def test_bad_facts_give_one_line_messages(explorer, fact, edit, expected):
    lang = edit.pop("lang", None)
    rows = [list(r) for r in fact.rows]
    if lang:
        rows[1][0] = lang
    bad = typed(fact, **edit) if edit else fact_from_rows("en", rows, [], picked=fact)
    with pytest.raises(MemlaError) as err:
        explorer.check(bad)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("rows, source, expected", [
    ([["en", "The capital of {} is", "France", "Rome", "Paris"], ["en", "{} is in", "France", "Asia", "Europe"]],
     "en", "language en appears more than once"),
    ([["en", "The capital of {} is", "France", "Rome", "Paris"]], "fr", "source language 'fr' has no row"),
    ([["", "The capital of {} is", "France", "Rome", "Paris"]], "en", "row 1: no language code"),
])
def test_bad_tables_give_one_line_messages(rows, source, expected):
    with pytest.raises(MemlaError, match=expected):
        fact_from_rows(source, rows, [])


def test_texts_longer_than_the_token_limit_are_refused(tiny, fact):
    ex = Explorer(*tiny, Settings(max_tokens=3))
    with pytest.raises(MemlaError, match="more than the token limit"):
        ex.check(fact)
    ex.close()


# --------------------------------------------------------------------------- configs


def test_configs_text_round_trips_and_keeps_what_was_changed():
    text = configs_text(["ft", "rome"])
    assert parse_configs(text, ["ft", "rome"]) == {"ft": get_editor("ft").config, "rome": get_editor("rome").config}
    edited = text.replace("lr: 0.0005", "lr: 0.01", 1)
    assert parse_configs(edited, ["ft"])["ft"].lr == 0.01
    assert "lr: 0.01" in configs_text(["ft", "ike"], edited) and "rome" not in configs_text(["ft", "ike"], edited)
    assert configs_text(["ft"], ": : not yaml [") == configs_text(["ft"])


@pytest.mark.parametrize("text, expected", [
    ("ft: [1, 2", "configs: not valid YAML"),
    ("- ft", "expected a mapping of method names"),
    ("ft: {speed: fast}", "unknown FTConfig key(s) speed"),
    ("ft: {lr: fast}", "FTConfig.lr must be a number"),
])
def test_bad_configs_give_one_line_messages(text, expected):
    with pytest.raises(MemlaError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_configs(text, ["ft"])


# --------------------------------------------------------------------------- edits


def test_runs_match_the_library_calls_and_leave_the_model_pristine(explorer, tiny, fact):
    model, tok = tiny
    before = model_fingerprint(model)
    stages = [(u.method, u.stage) for u in explorer.iter_run(fact, METHODS)]
    assert stages == [("ft", "editing"), ("ft", "measuring"), ("ft", "done"),
                      ("memla", "editing"), ("memla", "measuring"), ("memla", "neurons"), ("memla", "done"),
                      ("ike", "editing"), ("ike", "measuring"), ("ike", "done")]
    runs = explorer.run(fact, METHODS)
    assert model_fingerprint(model) == before
    request = fact.request()
    record = fact.record_for_scoring()
    cells = [(record, lt, ("ns", "fluency")) for lt in fact.langs]
    unedited = score_cells(model, tok, cells)
    for run in runs:
        result = get_editor(run.method).edit(model, tok, request)
        assert run.result.deltas.keys() == result.deltas.keys() and run.result.prefix == result.prefix
        for name, delta in result.deltas.items():
            assert torch.equal(run.result.deltas[name], delta), (run.method, name)
        effects, _ = compare(model, tok, request, result)
        assert list(run.effects) == effects
        with apply(model, result):
            edited = score_cells(model, tok, cells, prefix=result.prefix)
        for lt, b, a in zip(fact.langs, unedited, edited):
            loc = run.locality[lt]
            assert loc.ns_margin_after == record_value(a, "ns_margin")
            assert loc.ns_keep == record_value(a, "ns_keep", b)
            assert loc.fluency_after == record_value(a, "fluency")
        assert len(run.neighbours) == len(fact.neighbours) and len(run.fluency) == 12
        assert run.flips[1] == 12
    assert model_fingerprint(model) == before


def test_memla_neurons_are_the_edits_own(explorer, tiny, fact):
    (run,) = explorer.run(fact, ["memla"])
    info = run.result.info
    assert {str(k): {"specific": s, "independent": i} for k, (s, i) in run.neurons.counts.items()} == info["neurons"]
    assert dict(run.neurons.per_language) == info["neurons_per_language"]
    per_language, independent, _ = get_editor("memla").locate(*tiny, fact.request())
    assert {t.lang for t in run.neurons.top} == set(per_language)
    for t in run.neurons.top:
        assert 0 < t.relative <= 1 and (t.rank != 1 or t.relative == 1.0)
        assert t.kind == ("independent" if (t.layer, t.index) in independent
                          else "specific" if (t.layer, t.index) in per_language[t.lang] else "below threshold")


def test_a_method_that_cannot_edit_is_reported_and_the_others_run(explorer, fact):
    runs = explorer.run(fact, ["memla", "ft"], {"memla": {"threshold": 1.0}})
    assert "found no neurons" in runs[0].error and runs[0].result is None
    assert runs[1].error is None and len(runs[1].effects) == 12
    assert views.summary_rows(runs)[0][-1] == runs[0].error


def test_an_editor_that_changes_the_weights_stops_the_explorer(explorer, fact, monkeypatch, tiny):
    class Rogue:
        config = None

        def edit(self, model, tokenizer, request):
            with torch.no_grad():
                next(model.parameters()).add_(1.0)
            raise EditError("nothing to do")

    model = tiny[0]
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    monkeypatch.setattr("memla.explore.session.get_editor", lambda name, config=None: Rogue())
    try:
        with pytest.raises(RuntimeError, match="left the model's weights changed"):
            explorer.run(fact, ["ft"])
        with pytest.raises(RuntimeError, match="restart memla explore"):
            explorer.run(fact, ["ft"])
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])


def test_a_stop_ends_the_run_before_the_next_stage(explorer, tiny, fact):
    before = model_fingerprint(tiny[0])
    stop = threading.Event()
    seen = []
    for update in explorer.iter_run(fact, METHODS, stop=stop):
        seen.append((update.method, update.stage))
        if update.stage == "measuring" and update.method == "memla":
            stop.set()  # the measuring under way finishes; the neurons stage does not start
    assert seen == [("ft", "editing"), ("ft", "measuring"), ("ft", "done"), ("memla", "editing"),
                    ("memla", "measuring"), ("memla", "cancelled"), ("ike", "cancelled")]
    assert model_fingerprint(tiny[0]) == before
    assert [r.method for r in explorer.run(fact, ["ft"])] == ["ft"]  # the lock was released


def test_bad_methods_are_refused_before_any_edit(explorer, fact):
    with pytest.raises(MemlaError, match="choose at least one method"):
        explorer.run(fact, [])
    with pytest.raises(MemlaError, match="unknown method 'memlaa'"):
        explorer.run(fact, ["ft", "memlaa"])


def test_adapters_load_back_and_ike_has_none(explorer, tiny, fact, tmp_path):
    ft, memla, ike = explorer.run(fact, METHODS)
    for run in (ft, memla):
        with zipfile.ZipFile(explorer.export_adapter(run)) as z:
            z.extractall(tmp_path / run.method)
        loaded = load_edit(tmp_path / run.method, tiny[0])
        for name, delta in run.result.deltas.items():
            assert torch.allclose(loaded.deltas[name], delta, atol=1e-6), (run.method, name)
    with pytest.raises(EditError, match="no weight edit to save"):
        explorer.export_adapter(ike)


# --------------------------------------------------------------------------- views


def test_views_have_12_rows_per_method_and_charts(explorer, fact):
    runs = explorer.run(fact, ["ft", "memla"])
    rows = views.result_rows(runs)
    assert [r[0] for r in rows] == ["ft"] * 12 + ["memla"] * 12
    assert all(len(r) == len(views.RESULT_COLUMNS) for r in rows)
    assert {r[6] for r in rows} <= {"yes", "no"}
    assert [r[1] for r in views.summary_rows(runs)] == [f"{r.flips[0]} / 12" for r in runs]
    assert len(views.neighbour_rows(runs)) == 2 * len(fact.neighbours)
    assert len(views.fluency_rows(runs)) == 24
    assert {r[0] for r in views.neuron_rows(runs)} == {"memla"}
    assert views.flip_heatmap(runs).startswith(b"\x89PNG") and views.neuron_chart(runs).startswith(b"\x89PNG")
    assert views.neuron_chart(runs[:1]) is None and views.flip_heatmap([]) is None


# --------------------------------------------------------------------------- the reproduce command


def _command_request(command: str, tmp_path, monkeypatch):
    """The request `memla edit` builds from the command's last line (heredoc files written into tmp_path)."""
    monkeypatch.chdir(tmp_path)
    lines = command.splitlines()
    while lines[0].startswith("cat > "):
        path, end = lines[0].split()[2], lines.index("EOF")
        (tmp_path / path).write_text("\n".join(lines[1:end]) + "\n", encoding="utf-8")
        lines = lines[end + 1:]
    (line,) = lines
    args = build_parser().parse_args(shlex.split(line)[1:])
    return args, build_request(args)[0]


@pytest.mark.parametrize("change", [{}, {"new": "Berlin"}, {"subject": "France|Francia"}])
def test_the_command_builds_the_same_request(fact, change, tmp_path, monkeypatch):
    page = typed(fact, **change) if change else fact
    args, request = _command_request(reproduce_command(page, "rome", get_editor("rome").config,
                                                       Settings(max_tokens=512)), tmp_path, monkeypatch)
    expected = page.request()
    if "subject" in change:  # '|' cannot go into --translation: a dataset file holds the fact (its id comes along)
        expected = EditRequest.from_record(page.record_for_scoring(), "en")
    assert request == expected
    assert args.method == "rome" and args.config is None and args.save_adapter == "runs/rome-" + (
        "france-francia" if "subject" in change else "france")


def test_the_command_carries_changed_settings_and_the_model(fact, tmp_path, monkeypatch):
    config = parse_configs("memla: {max_steps: 5, locate_langs: [en, de]}", ["memla"])["memla"]
    settings = Settings(max_tokens=512, model="some/model", dtype="bfloat16", device="cuda:1")
    command = reproduce_command(fact, "memla", config, settings)
    args, _ = _command_request(command, tmp_path, monkeypatch)
    assert get_editor("memla", args.config).config == config
    assert (tmp_path / "memla.yaml").read_text() == "locate_langs:\n- en\n- de\nmax_steps: 5\n"
    assert (args.model, args.dtype, args.device) == ("some/model", "bfloat16", "cuda:1")
    ike = reproduce_command(fact, "ike", get_editor("ike").config, Settings(max_tokens=512))
    assert "--save-adapter" not in ike and "--config" not in ike


# --------------------------------------------------------------------------- the command line


def test_explore_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["explore"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "memla explore: error: the explore page needs the ui extra: pip install 'memla[ui]'"


@pytest.mark.parametrize("argv, expected", [
    (["--methods", "memla,romee"], "unknown method 'romee'"),
    (["--methods", ","], "--methods names no method"),
    (["--dataset", "no-such-file.json"], "no-such-file.json"),
])
def test_explore_refuses_bad_options_before_loading(argv, expected, capsys, monkeypatch):
    monkeypatch.setattr("memla.cli.explore.load_model_from_args", lambda args: pytest.fail("model loaded"))
    assert main(["explore", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_another_host_gets_a_warning(capsys):
    from memla.cli.explore import _warn_host

    _warn_host("127.0.0.1")
    _warn_host("localhost")
    assert capsys.readouterr().out == ""
    _warn_host("0.0.0.0")
    assert "reachable from other machines" in capsys.readouterr().out


def test_explore_help_explains_the_options():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["explore"]
    text = sub.format_help()
    for option in ("--port", "--host", "--dataset", "--methods", "--model", "--device", "--max-tokens"):
        assert option in text
