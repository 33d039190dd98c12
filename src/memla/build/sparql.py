"""SPARQL endpoints for fact extraction (MKEB §3.1): over HTTP, in-process, cached.

Every endpoint answers ``select(query)`` with the bindings of the SPARQL 1.1
JSON results format (``[{var: {"type": "uri"|"literal", "value": ..., "xml:lang": ...}}]``),
so the extraction code never knows where the answers came from:

- `HttpSparqlEndpoint` — any SPARQL protocol server (default: the public
  Wikidata Query Service), through `PoliteSession` (User-Agent, rate limit,
  retries with backoff on 429 / 5xx / timeouts);
- `OxigraphEndpoint` — a `pyoxigraph` store in this process, e.g. loaded from a
  Turtle / N-Triples dump (offline builds, tests);
- `CachedEndpoint` — an on-disk cache of query results in front of either, so a
  re-run (or a resumed build) repeats no query.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from memla.atomic import write_json_atomic
from memla.build.errors import BuildError, ServiceError
from memla.build.http import PoliteSession, RequestStats

log = logging.getLogger(__name__)

WIKIDATA_ENDPOINT = "https://query.wikidata.org/sparql"

Binding = dict[str, dict[str, str]]

RDF_SUFFIXES = {
    ".ttl": "TURTLE",
    ".nt": "N_TRIPLES",
    ".nq": "N_QUADS",
    ".trig": "TRIG",
    ".rdf": "RDF_XML",
    ".owl": "RDF_XML",
}


class SparqlEndpoint(Protocol):
    """What the fact extraction needs from a SPARQL service."""

    name: str
    stats: RequestStats

    def select(self, query: str) -> list[Binding]:
        """Run a SELECT query; return its bindings in the SPARQL JSON results layout."""
        ...


def parse_results(payload: Any, *, source: str) -> list[Binding]:
    """Check and unpack a SPARQL 1.1 JSON results document.

    Args:
        payload: the decoded JSON document.
        source: where it came from, for the error message.

    Returns:
        ``payload["results"]["bindings"]``.

    Raises:
        BuildError: the document does not have that layout.
    """
    try:
        bindings = payload["results"]["bindings"]
    except (TypeError, KeyError) as err:
        raise BuildError(f"{source}: not a SPARQL JSON results document (missing {err})") from None
    if not isinstance(bindings, list) or not all(isinstance(b, dict) for b in bindings):
        raise BuildError(f"{source}: SPARQL results 'bindings' is not a list of objects")
    return bindings


class HttpSparqlEndpoint:
    """A SPARQL 1.1 protocol endpoint reached over HTTP (MKEB §3.1 uses Wikidata's).

    Args:
        url: the endpoint address (default: the public Wikidata Query Service).
        session: the polite HTTP session to use; by default one with a one-second
            interval between queries, as Wikidata asks of bots.
        max_get_length: queries longer than this many characters are POSTed.
    """

    def __init__(
        self, url: str = WIKIDATA_ENDPOINT, *, session: PoliteSession | None = None, max_get_length: int = 2000
    ) -> None:
        self.url = url
        self.name = url
        self.http = session or PoliteSession("sparql", min_interval=1.0, timeout=65.0)
        self.max_get_length = max_get_length

    @property
    def stats(self) -> RequestStats:
        """Counters of the underlying HTTP session."""
        return self.http.stats

    def select(self, query: str) -> list[Binding]:
        """Run a SELECT query over HTTP.

        Args:
            query: the SPARQL text.

        Returns:
            The result bindings.

        Raises:
            ServiceError: the endpoint kept failing or rejected the query.
            BuildError: the answer was not SPARQL JSON results.
        """
        headers = {"Accept": "application/sparql-results+json"}
        if len(query) > self.max_get_length:
            resp = self.http.request("POST", self.url, data={"query": query}, headers=headers)
        else:
            resp = self.http.request("GET", self.url, params={"query": query}, headers=headers)
        try:
            payload = resp.json()
        except ValueError:
            raise ServiceError(
                f"sparql: {self.url} answered with something other than JSON", service="sparql"
            ) from None
        return parse_results(payload, source=self.url)


class OxigraphEndpoint:
    """An in-process SPARQL engine (`pyoxigraph`), e.g. over a local dump of Wikidata triples.

    Args:
        store: a `pyoxigraph.Store`; a fresh in-memory one if ``None``.
        name: a name for caches and the report.
    """

    def __init__(self, store: Any = None, *, name: str = "oxigraph") -> None:
        pyoxigraph = _import_pyoxigraph()
        self.store = store if store is not None else pyoxigraph.Store()
        self.name = name
        self.stats = RequestStats()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> OxigraphEndpoint:
        """Load an RDF file (Turtle, N-Triples, N-Quads, TriG, RDF/XML) into a new in-memory store.

        Args:
            path: the file; its format is taken from the suffix.

        Returns:
            The endpoint, named after the file.
        """
        pyoxigraph = _import_pyoxigraph()
        path = Path(path)
        fmt = RDF_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise BuildError(f"{path}: unknown RDF file type (known: {', '.join(sorted(RDF_SUFFIXES))})")
        if not path.is_file():
            raise BuildError(f"{path}: no such file")
        store = pyoxigraph.Store()
        try:
            store.load(path=str(path), format=getattr(pyoxigraph.RdfFormat, fmt))
        except (SyntaxError, ValueError, OSError) as err:
            raise BuildError(f"{path}: cannot load RDF: {err}") from None
        return cls(store, name=f"file:{path.resolve()}")

    def select(self, query: str) -> list[Binding]:
        """Run a SELECT query in process; same answer layout as over HTTP.

        Args:
            query: the SPARQL text.

        Returns:
            The result bindings.
        """
        pyoxigraph = _import_pyoxigraph()
        self.stats.requests += 1
        try:
            solutions = self.store.query(query)
        except SyntaxError as err:
            raise BuildError(f"{self.name}: bad SPARQL query: {err}") from None
        raw = solutions.serialize(format=pyoxigraph.QueryResultsFormat.JSON)
        return parse_results(json.loads(raw), source=self.name)


class CachedEndpoint:
    """An on-disk cache of query results in front of another endpoint.

    One JSON file per (endpoint name, query), named by its SHA-256, written
    atomically; a hit sends no request and counts in ``stats.cache_hits``.

    Args:
        inner: the endpoint that answers misses.
        cache_dir: the folder of cached answers (created when needed).
    """

    def __init__(self, inner: SparqlEndpoint, cache_dir: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.cache_dir = Path(cache_dir)

    @property
    def stats(self) -> RequestStats:
        """Counters of the inner endpoint (cache hits included)."""
        return self.inner.stats

    def path_for(self, query: str) -> Path:
        """The cache file of ``query``."""
        digest = hashlib.sha256(f"{self.name}\n{query}".encode()).hexdigest()
        return self.cache_dir / f"{digest}.json"

    def select(self, query: str) -> list[Binding]:
        """Answer from the cache, else from the inner endpoint (and store the answer).

        Args:
            query: the SPARQL text.

        Returns:
            The result bindings.
        """
        path = self.path_for(query)
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                bindings = parse_results(cached, source=str(path))
            except (ValueError, BuildError) as err:
                log.warning("ignoring unreadable SPARQL cache file %s (%s)", path, err)
            else:
                self.stats.cache_hits += 1
                return bindings
        bindings = self.inner.select(query)
        write_json_atomic(path, {"endpoint": self.name, "query": query, "results": {"bindings": bindings}})
        return bindings


def open_endpoint(
    spec: str | None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    user_agent: str | None = None,
    min_interval: float = 1.0,
    timeout: float = 65.0,
    max_retries: int = 5,
    backoff: float = 2.0,
    sleep: Callable[[float], None] | None = None,
) -> SparqlEndpoint:
    """Open the endpoint a user named: an http(s) URL or a local RDF file.

    Args:
        spec: ``None`` (public Wikidata), an ``http(s)://`` URL, or a path to a
            ``.ttl`` / ``.nt`` / ``.nq`` / ``.trig`` / ``.rdf`` file queried in process.
        cache_dir: where to cache query results (``None``: no cache).
        user_agent: the User-Agent for HTTP endpoints.
        min_interval: seconds between HTTP queries (rate limit).
        timeout: seconds to wait for an HTTP answer.
        max_retries: retries on 429 / 5xx / timeouts.
        backoff: the first backoff in seconds (doubled each retry).
        sleep: the sleep function (tests inject a no-op).

    Returns:
        The endpoint, wrapped in a `CachedEndpoint` when ``cache_dir`` is given.
    """
    spec = spec or WIKIDATA_ENDPOINT
    endpoint: SparqlEndpoint
    if spec.startswith(("http://", "https://")):
        kwargs: dict[str, Any] = {}
        if sleep is not None:
            kwargs["sleep"] = sleep
        session = PoliteSession(
            "sparql",
            user_agent=user_agent,
            min_interval=min_interval,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            **kwargs,
        )
        endpoint = HttpSparqlEndpoint(spec, session=session)
    else:
        endpoint = OxigraphEndpoint.from_file(spec)
    return CachedEndpoint(endpoint, cache_dir) if cache_dir is not None else endpoint


def _import_pyoxigraph():
    try:
        import pyoxigraph
    except ImportError:
        raise BuildError("querying a local RDF file needs pyoxigraph: pip install pyoxigraph (or memla[dev])") from None
    return pyoxigraph
