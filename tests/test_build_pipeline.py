"""End to end: `memla.build.build_dataset` and `memla build` on the fixture graph with a fake LLM server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "build"))

pytest.importorskip("pyoxigraph")

from build_fakes import TTL, FakeServer, Reply, llm_brain  # noqa: E402

from memla.build import BuildConfig, ChatClient, LLMTranslator, OxigraphEndpoint, build_dataset  # noqa: E402
from memla.build.errors import ServiceError  # noqa: E402
from memla.data import load_dataset, validate  # noqa: E402
from memla.errors import MemlaError  # noqa: E402

LANGS = ("en", "zh", "fr", "de", "ja")


def config(**kw) -> BuildConfig:
    base = dict(relations=("P36", "P37"), n=6, langs=LANGS, hop_relations=("^P85", "P17"), seed=0)
    return BuildConfig(**{**base, **kw})


def is_generation(req) -> bool:
    return not req.json()["messages"][1]["content"].startswith("Translate each string")


def run(srv, tmp_path, cfg=None, **kw):
    client = ChatClient(srv.url + "/v1", "fake-model", sleep=lambda s: None, max_retries=1)
    return build_dataset(
        cfg or config(),
        endpoint=OxigraphEndpoint.from_file(TTL),
        client=client,
        translator=LLMTranslator(client),
        work_dir=tmp_path / "work",
        out=tmp_path / "data.json",
        **kw,
    )


def test_end_to_end_dataset_validates_and_loads(tmp_path):
    with FakeServer(llm_brain) as srv:
        report = run(srv, tmp_path)
    out = tmp_path / "data.json"
    raw = json.loads(out.read_text(encoding="utf-8"))
    assert validate(raw).errors == []
    records = load_dataset(out)
    assert len(records) == 6 == report.records
    assert {r.relation for r in records} == {"P36", "P37"}
    assert all(set(r.edit) == set(LANGS) for r in records)
    by_subject = {r.edit["en"].subject: r for r in records if r.relation == "P36"}
    france = by_subject.get("France") or next(iter(by_subject.values()))
    # entity names come from Wikidata labels, not from the translator
    for rec in records:
        assert not rec.edit["zh"].subject.startswith("[")
        assert rec.edit["zh"].prompt.count("{}") == 1
        assert rec.neighborhood_answers["de"] and all(not a.startswith("[") for a in rec.neighborhood_answers["de"])
    assert any(r.multi_hop_questions for r in records)
    hop = next(r for r in records if r.multi_hop_questions)
    assert hop.multi_hop_new_answer["en"] == hop.edit["en"].target_new
    assert hop.edit["en"].subject not in hop.multi_hop_questions["en"][0]
    assert france.relation_description == "capital"
    # the report: stages, requests, languages
    rep = json.loads((tmp_path / "data.report.json").read_text(encoding="utf-8"))
    assert list(rep["stages"]) == ["facts", "chains", "labels", "plan", "generate", "translate", "assemble"]
    assert rep["stages"]["generate"]["count"] == 6 and rep["stages"]["generate"]["dropped"] == 0
    assert rep["requests"]["llm"]["requests"] == len(srv.requests)
    assert rep["requests"]["sparql"]["requests"] > 0
    assert rep["languages"] == {lang: 6 for lang in LANGS}
    assert rep["validation"]["errors"] == 0


def test_drops_are_reported(tmp_path):
    """A model that never writes the {} slot for France gets France dropped after 3 tries."""

    def stubborn(req):
        reply = llm_brain(req)
        body = req.json()["messages"][1]["content"]
        if is_generation(req) and "Fact: (France, capital" in body:
            sample = json.loads(
                json.loads(reply.body if isinstance(reply.body, str) else json.dumps(reply.body))["choices"][0][
                    "message"
                ]["content"]
            )
            sample["prompt"] = "The capital of France is"
            return Reply(200, {"choices": [{"message": {"content": json.dumps(sample)}}]})
        return reply

    with FakeServer(stubborn) as srv:
        report = run(srv, tmp_path, config(relations=("P36",), n=7, hop_relations=()))
    assert report.stages["generate"]["dropped"] == 1
    assert report.drops["generate:placeholder"] == 1
    assert report.records == 6  # only 7 capitals with labels; France is gone
    assert any(d["stage"] == "generate" and d["reason"] == "placeholder" for d in report.dropped)


def test_resume_after_crash_in_generation_and_translation(tmp_path):
    calls = {"gen": 0}

    def crash_after_two(req):
        if is_generation(req):
            calls["gen"] += 1
            if calls["gen"] > 2:
                return Reply(400, {"error": "simulated crash"})
        return llm_brain(req)

    with FakeServer(crash_after_two) as srv:
        with pytest.raises(ServiceError, match="HTTP 400"):
            run(srv, tmp_path)
    log_lines = (tmp_path / "work" / "generated.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(log_lines) == 2

    def crash_on_ja(req):
        if not is_generation(req) and "to Japanese (ja)" in req.json()["messages"][1]["content"]:
            return Reply(400, {"error": "simulated crash"})
        return llm_brain(req)

    with FakeServer(crash_on_ja) as srv:
        with pytest.raises(ServiceError):
            run(srv, tmp_path)
        gen = [r for r in srv.requests if is_generation(r)]
    assert len(gen) == 4  # the two samples of the first run were not asked again

    with FakeServer(llm_brain) as srv:
        report = run(srv, tmp_path)
        gen = [r for r in srv.requests if is_generation(r)]
        tr = [r.json()["messages"][1]["content"] for r in srv.requests if not is_generation(r)]
    assert gen == []
    assert tr and all("to Japanese (ja)" in t for t in tr)  # zh, fr, de came from the translation memory
    assert all(report.stages[s]["cached"] for s in ("facts", "chains", "labels", "plan", "generate"))
    assert report.stages["generate"]["from_cache"] == 6
    assert report.stages["translate"]["texts_from_memory"] > 0
    assert report.requests["sparql"]["requests"] == 0
    assert len(load_dataset(tmp_path / "data.json")) == 6


def test_changed_settings_recompute_stages(tmp_path):
    with FakeServer(llm_brain) as srv:
        run(srv, tmp_path, config(n=2))
        report = run(srv, tmp_path, config(n=2, seed=5))
    assert report.stages["facts"]["cached"] and not report.stages["plan"]["cached"]


def test_source_only_build_needs_no_translator(tmp_path):
    with FakeServer(llm_brain) as srv:
        client = ChatClient(srv.url + "/v1", "fake-model", sleep=lambda s: None)
        report = build_dataset(
            config(langs=("en",), n=3),
            endpoint=OxigraphEndpoint.from_file(TTL),
            client=client,
            translator=None,
            work_dir=tmp_path / "w",
            out=tmp_path / "d.jsonl",
        )
    assert report.records == 3
    assert len(load_dataset(tmp_path / "d.jsonl")) == 3
    with pytest.raises(MemlaError, match="translator"):
        build_dataset(
            config(n=3),
            endpoint=OxigraphEndpoint.from_file(TTL),
            client=None,
            translator=None,
            work_dir=tmp_path / "w",
            out=tmp_path / "d2.json",
        )


def test_config_validation():
    with pytest.raises(MemlaError):
        BuildConfig(relations=("^P36",))
    with pytest.raises(MemlaError):
        BuildConfig(relations=("P36",), n=0)
    with pytest.raises(MemlaError):
        BuildConfig(relations=("P36",), langs="en,xx")
    cfg = BuildConfig(relations="P36,P37", langs="all", hop_relations="^P85")
    assert cfg.relations == ("P36", "P37") and len(cfg.langs) == 12 and cfg.hop_relations == ("^P85",)


def test_cli_build(tmp_path, monkeypatch, capsys):
    from memla.cli import main

    for var in ("MEMLA_LLM_BASE_URL", "MEMLA_LLM_MODEL", "MEMLA_LLM_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "cli.json"
    with FakeServer(llm_brain) as srv:
        monkeypatch.setenv("MEMLA_LLM_API_KEY", "sk-cli-SECRET")
        status = main(
            [
                "build",
                "--relations",
                "P36,P37",
                "--n",
                "3",
                "--langs",
                "en,zh",
                "--out",
                str(out),
                "--endpoint",
                str(TTL),
                "--llm-base-url",
                srv.url + "/v1",
                "--llm-model",
                "fake",
                "--no-progress",
                "--hop-relations",
                "^P85",
            ]
        )
        assert srv.requests[0].headers["Authorization"] == "Bearer sk-cli-SECRET"
    text = capsys.readouterr()
    assert status == 0
    assert "sk-cli-SECRET" not in text.out + text.err
    assert "wrote 3 records" in text.out and "requests made" in text.out
    assert len(load_dataset(out)) == 3
    assert (tmp_path / "cli.build" / "plan.json").is_file() and (tmp_path / "cli.report.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--relations", "capital"], "bad relation"),
        (["--relations", "P36", "--langs", "xx"], "unknown language"),
        (["--relations", "P36", "--llm-model", "m"], "both --llm-base-url and --llm-model"),
        (["--relations", "P36"], "--translator llm needs"),
        (["--relations", "P36", "--translator", "baidu"], "BAIDU_APPID"),
        (["--relations", "P36", "--translator", "hf"], "--hf-model"),
    ],
)
def test_cli_errors_exit_2(tmp_path, monkeypatch, capsys, args, message):
    from memla.cli import main

    for var in ("MEMLA_LLM_BASE_URL", "MEMLA_LLM_MODEL", "OPENAI_BASE_URL", "BAIDU_APPID", "BAIDU_KEY"):
        monkeypatch.delenv(var, raising=False)
    status = main(["build", *args, "--out", str(tmp_path / "x.json"), "--endpoint", str(TTL), "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
