"""A polite HTTP client shared by the SPARQL, LLM and translation clients (MKEB §3.1).

It sends a User-Agent, keeps a minimum interval between requests (a polite rate
for public endpoints such as Wikidata's), retries HTTP 429 / 5xx, timeouts and
connection errors with exponential backoff (honouring ``Retry-After``), and
counts what it did for the build report.  ``sleep`` and ``clock`` are injectable
so tests run in milliseconds.  Headers and form fields are never logged: they
may carry API keys.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import requests

from memla import __version__
from memla.build.errors import ServiceError

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = (
    f"memla/{__version__} (multilingual knowledge-editing dataset builder; python-requests/{requests.__version__})"
)
"""Sent when no User-Agent is configured; Wikidata asks for one that names the tool
(set ``MEMLA_USER_AGENT`` / ``--user-agent`` to add your contact address)."""

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass
class RequestStats:
    """What one client did, for the build report.

    Attributes:
        requests: HTTP requests sent (every attempt counts).
        retries: attempts that were repeated after a retryable failure.
        failures: calls that gave up after the last retry.
        cache_hits: answers served from an on-disk cache without a request.
        slept_s: seconds spent in backoff and rate-limit waits.
    """

    requests: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    slept_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or an HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class PoliteSession:
    """``requests`` with a User-Agent, a rate limit, retries and backoff.

    Args:
        service: a short name used in log lines, errors and the report.
        user_agent: the User-Agent header (default `DEFAULT_USER_AGENT`).
        timeout: seconds to wait for the server (connect and read).
        max_retries: retries after the first attempt for 429 / 5xx / timeouts.
        backoff: the first backoff in seconds; doubled on each retry.
        max_backoff: the longest single backoff (``Retry-After`` included).
        min_interval: the least number of seconds between two requests.
        sleep: the sleep function (tests inject a no-op).
        clock: a monotonic clock (tests may inject one).
        session: an existing `requests.Session` to reuse.
        redact: secrets (API keys) to blank out of any error message built
            from a server's answer, in case the server echoes them.
    """

    def __init__(
        self,
        service: str,
        *,
        user_agent: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        min_interval: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
        redact: tuple[str, ...] = (),
    ) -> None:
        if max_retries < 0 or timeout <= 0 or backoff < 0 or min_interval < 0:
            raise ValueError("timeout must be > 0; max_retries, backoff and min_interval >= 0")
        self.service = service
        self.user_agent = user_agent or DEFAULT_USER_AGENT
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.min_interval = min_interval
        self.sleep = sleep
        self.clock = clock
        self.session = session or requests.Session()
        self.redact = tuple(x for x in redact if x)
        self.stats = RequestStats()
        self._last: float | None = None

    def scrub(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        for secret in self.redact:
            text = text.replace(secret, "***")
        return text

    def _wait_turn(self) -> None:
        if self.min_interval and self._last is not None:
            wait = self.min_interval - (self.clock() - self._last)
            if wait > 0:
                self.pause(wait)
        self._last = self.clock()

    def pause(self, seconds: float) -> None:
        """Sleep for ``seconds`` (through the injected sleep), counting it in the stats."""
        self.stats.slept_s += seconds
        self.sleep(seconds)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request, retrying retryable failures; return the successful response.

        Args:
            method: ``"GET"`` or ``"POST"``.
            url: the address (no secrets in it: it may appear in errors).
            params: query-string fields.
            data: form fields.
            json: a JSON body.
            headers: extra headers (the User-Agent is added).

        Returns:
            The first response with a status below 400.

        Raises:
            ServiceError: a non-retryable status (400, 401, 403, 404, ...) or the
                retries are spent.  The message names the service and status only.
        """
        all_headers = {"User-Agent": self.user_agent, **(headers or {})}
        attempt = 0
        while True:
            self._wait_turn()
            self.stats.requests += 1
            status: int | None = None
            retry_after: float | None = None
            try:
                resp = self.session.request(
                    method, url, params=params, data=data, json=json, headers=all_headers, timeout=self.timeout
                )
            except requests.Timeout:
                reason = f"timed out after {self.timeout:g} s"
            except requests.ConnectionError as err:
                reason = f"connection failed ({type(err).__name__})"
            else:
                if resp.status_code < 400:
                    return resp
                status = resp.status_code
                reason = f"HTTP {status}"
                if status not in RETRY_STATUS:
                    self.stats.failures += 1
                    raise ServiceError(
                        f"{self.service}: {reason} from {url}: {self.scrub(_snippet(resp))}",
                        service=self.service,
                        status=status,
                    )
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
            if attempt >= self.max_retries:
                self.stats.failures += 1
                raise ServiceError(
                    f"{self.service}: {reason} from {url}; gave up after {attempt + 1} attempt(s)",
                    service=self.service,
                    status=status,
                )
            delay = min(self.max_backoff, retry_after if retry_after is not None else self.backoff * 2**attempt)
            log.info("%s: %s; retry %d/%d in %.1f s", self.service, reason, attempt + 1, self.max_retries, delay)
            attempt += 1
            self.stats.retries += 1
            self.pause(delay)


def _snippet(resp: requests.Response, limit: int = 200) -> str:
    """The start of an error body, on one line (servers rarely echo credentials there)."""
    text = " ".join((resp.text or "").split())
    return text[:limit] + ("..." if len(text) > limit else "") if text else "(empty body)"
