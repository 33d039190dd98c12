"""Fact extraction (memla.build.facts / sparql): pyoxigraph in process and a real HTTP SPARQL server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "build"))

pytest.importorskip("pyoxigraph")

from build_fakes import TTL, FakeServer, Reply, oxigraph_store, sparql_handler  # noqa: E402

from memla.build.errors import BuildError, ServiceError  # noqa: E402
from memla.build.facts import (  # noqa: E402
    Chain,
    Fact,
    extract_chains,
    extract_facts,
    fetch_labels,
    parse_relation,
    parse_relations,
)
from memla.build.http import PoliteSession  # noqa: E402
from memla.build.sparql import CachedEndpoint, HttpSparqlEndpoint, OxigraphEndpoint, open_endpoint  # noqa: E402
from memla.errors import MemlaError  # noqa: E402


@pytest.fixture(scope="module")
def local():
    return OxigraphEndpoint.from_file(TTL)


def no_sleep(_s: float) -> None:
    pass


def test_single_facts_functional_and_entity_only(local):
    facts = extract_facts(local, "P36")
    subjects = {f.subject for f in facts}
    assert Fact("Q142", "P36", "Q90") in facts
    assert "Q750" not in subjects  # Bolivia has two capitals
    assert "Q999999" not in subjects  # literal object
    assert facts == sorted(facts, key=lambda f: (f.subject[0], int(f.subject[1:]), f.object[0], int(f.object[1:])))
    both = extract_facts(local, "P36", functional=False)
    assert {f.object for f in both if f.subject == "Q750"} == {"Q1491", "Q35204"}


def test_facts_need_source_label_and_limit(local):
    # Warsaw has no Japanese label, Sucre none but English
    ja = extract_facts(local, "P36", source_lang="ja")
    assert all(f.object != "Q270" for f in ja)
    assert len(extract_facts(local, "P36", limit=2)) == 2


def test_two_hop_chains_inverse_and_forward(local):
    inv = extract_chains(local, "^P85", "P36")
    assert Chain("Q42264", "^P85", "Q142", "P36", "Q90") in inv
    assert {c.middle for c in inv} == {"Q142", "Q183", "Q17", "Q38"}
    fwd = extract_chains(local, "P17", "P36", middles=["Q142", "Q183", "Q17"], batch_size=2)
    assert set(fwd) == {Chain("Q243", "P17", "Q142", "P36", "Q90"), Chain("Q82425", "P17", "Q183", "P36", "Q64")}
    assert extract_chains(local, "P17", "P36", middles=["Q38"]) == []


def test_labels_in_several_languages_with_tag_fallback(local):
    labels = fetch_labels(local, ["Q142", "Q148", "Q270", "P36", "Q4"], langs=["en", "zh", "ja", "fr"], batch_size=2)
    assert labels["Q142"] == {"en": "France", "zh": "法国", "ja": "フランス", "fr": "France"}
    assert labels["Q148"]["zh"] == "中华人民共和国"  # only tagged zh-hans in the graph
    assert "ja" not in labels["Q270"]
    assert labels["P36"]["zh"] == "首都"
    assert "Q4" not in labels


def test_relation_specs():
    assert parse_relation("^P85") == ("P85", True)
    assert parse_relations("P36, P37,,P36") == ("P36", "P37")
    for bad in ("Q5", "P0", "capital", "P36x"):
        with pytest.raises(MemlaError):
            parse_relation(bad)
    with pytest.raises(MemlaError):
        parse_relations(" , ")


def test_local_file_errors(tmp_path):
    with pytest.raises(BuildError, match="unknown RDF file type"):
        OxigraphEndpoint.from_file(tmp_path / "x.csv")
    with pytest.raises(BuildError, match="no such file"):
        OxigraphEndpoint.from_file(tmp_path / "x.ttl")
    bad = tmp_path / "bad.ttl"
    bad.write_text("this is not turtle", encoding="utf-8")
    with pytest.raises(BuildError, match="cannot load"):
        OxigraphEndpoint.from_file(bad)


def test_http_endpoint_matches_in_process_and_is_polite():
    with FakeServer(sparql_handler(oxigraph_store())) as srv:
        session = PoliteSession("sparql", user_agent="memla-test/1 (test@example.org)", sleep=no_sleep)
        http = HttpSparqlEndpoint(srv.url + "/sparql", session=session)
        facts = extract_facts(http, "P36")
        assert facts == extract_facts(OxigraphEndpoint.from_file(TTL), "P36")
        req = srv.requests[0]
        assert req.method == "GET" and req.path == "/sparql"
        assert req.headers["User-Agent"] == "memla-test/1 (test@example.org)"
        assert "application/sparql-results+json" in req.headers["Accept"]
        # long queries go by POST
        labels = fetch_labels(HttpSparqlEndpoint(srv.url, session=session, max_get_length=10), ["Q142"], langs=["de"])
        assert labels == {"Q142": {"de": "Frankreich"}}
        assert srv.requests[-1].method == "POST"


def test_http_retries_429_and_5xx_with_backoff():
    slept: list[float] = []
    script = [Reply(429, "slow down", {"Retry-After": "7"}), Reply(503, "busy"), Reply(500, "oops")]
    with FakeServer(sparql_handler(oxigraph_store()), script=script) as srv:
        session = PoliteSession("sparql", sleep=slept.append, backoff=0.5, max_retries=5)
        facts = extract_facts(HttpSparqlEndpoint(srv.url, session=session), "P37")
    assert len(facts) == 6
    assert slept == [7.0, 1.0, 2.0]  # Retry-After honoured, then 0.5 * 2**attempt
    assert session.stats.requests == 4 and session.stats.retries == 3 and session.stats.failures == 0


def test_http_gives_up_and_does_not_retry_client_errors():
    with FakeServer(lambda r: Reply(502, "bad gateway")) as srv:
        session = PoliteSession("sparql", sleep=no_sleep, max_retries=2)
        with pytest.raises(ServiceError, match="HTTP 502.*3 attempt"):
            HttpSparqlEndpoint(srv.url, session=session).select("SELECT * WHERE { ?s ?p ?o }")
        assert len(srv.requests) == 3
    with FakeServer(lambda r: Reply(400, "syntax error")) as srv:
        session = PoliteSession("sparql", sleep=no_sleep)
        with pytest.raises(ServiceError, match="HTTP 400"):
            HttpSparqlEndpoint(srv.url, session=session).select("SELECT")
        assert len(srv.requests) == 1


def test_http_timeout_and_non_json():
    with FakeServer(lambda r: Reply(200, "{}", delay=0.5)) as srv:
        session = PoliteSession("sparql", sleep=no_sleep, timeout=0.1, max_retries=1)
        with pytest.raises(ServiceError, match="timed out"):
            HttpSparqlEndpoint(srv.url, session=session).select("SELECT * WHERE { ?s ?p ?o }")
        assert session.stats.requests == 2
    with FakeServer(lambda r: Reply(200, "<html>not json</html>")) as srv:
        with pytest.raises(ServiceError, match="other than JSON"):
            HttpSparqlEndpoint(srv.url, session=PoliteSession("sparql", sleep=no_sleep)).select("SELECT * {}")
    with FakeServer(lambda r: Reply(200, {"head": {}})) as srv:
        with pytest.raises(BuildError, match="not a SPARQL JSON results"):
            HttpSparqlEndpoint(srv.url, session=PoliteSession("sparql", sleep=no_sleep)).select("SELECT * {}")


def test_rate_limit_waits_between_requests():
    now = [100.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    with FakeServer(lambda r: Reply(200, {"results": {"bindings": []}})) as srv:
        session = PoliteSession("sparql", sleep=sleep, clock=lambda: now[0], min_interval=1.5)
        ep = HttpSparqlEndpoint(srv.url, session=session)
        ep.select("SELECT * {}")
        now[0] += 0.5
        ep.select("SELECT * {}")
        ep.select("SELECT * {}")
    assert slept == [pytest.approx(1.0), pytest.approx(1.5)]


def test_query_cache_on_disk(tmp_path):
    with FakeServer(sparql_handler(oxigraph_store())) as srv:
        ep = open_endpoint(srv.url, cache_dir=tmp_path / "cache", sleep=no_sleep, min_interval=0)
        assert isinstance(ep, CachedEndpoint)
        first = extract_facts(ep, "P36")
        n = len(srv.requests)
        again = open_endpoint(srv.url, cache_dir=tmp_path / "cache", sleep=no_sleep, min_interval=0)
        assert extract_facts(again, "P36") == first
        assert len(srv.requests) == n and again.stats.cache_hits == 1
    # a corrupt cache file is ignored, not fatal
    for f in (tmp_path / "cache").iterdir():
        f.write_text("{broken", encoding="utf-8")
    local = CachedEndpoint(OxigraphEndpoint.from_file(TTL), tmp_path / "cache2")
    assert extract_facts(local, "P36") == first


def test_open_endpoint_local_file(tmp_path):
    ep = open_endpoint(str(TTL))
    assert isinstance(ep, OxigraphEndpoint)
    assert ep.name.startswith("file:")
