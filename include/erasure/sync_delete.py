"""Async HTTP client for partners' delete APIs.

One :class:`SyncDeleteClient` per target and batch. It bounds concurrency (a fixed number of workers
over one connection pool), spaces requests with a client-side rate limit, applies a timeout per
request, sends an ``Idempotency-Key`` header (stable per erasure task, so a retried or replayed call
is recognised by the partner) and classifies responses:

==========================  ===================================================================
202                          ``accepted``           accepted, not deleted: not a success until verified
2xx                          ``deleted``            success
404, 410                     ``already_gone``       success (the subject's data is not there)
409                          ``conflict``           success (the partner reports the erasure as done/in hand)
429                          backpressure: every worker pauses for ``Retry-After`` (seconds or an
                             HTTP date, capped), then the call is repeated; counted separately
5xx, 408, timeouts,          retried with exponential backoff and jitter, up to ``max_retries``;
connection errors            then ``retryable_failure``
other 4xx, 3xx               ``permanent_failure`` (recorded with the response; not retried)
==========================  ===================================================================

:meth:`SyncDeleteClient.lookup` asks the partner's lookup path afterwards (404/410 gone, 200 still there),
with the same limiter, retries and backpressure, so verification runs at the deletes' concurrency.

No Airflow and no database here: callers (``erasure.dispatch``) record outcomes.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from erasure.vocab import CheckOutcome, DeleteOutcome

SNIPPET_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How one subject's delete call is retried inside a batch."""

    max_retries: int = 4
    """Retries after 5xx / 408 / timeouts / connection errors (so ``max_retries + 1`` calls at most)."""
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0
    max_throttle_waits: int = 30
    """How many 429 responses one subject may see before it is given up for this batch."""
    max_retry_after_s: float = 60.0
    """Cap on a partner's ``Retry-After``."""

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1-based): exponential with 'equal jitter'."""
        d = min(self.max_delay_s, self.base_delay_s * (2 ** (retry - 1)))
        return d / 2 + random.uniform(0, d / 2)  # noqa: S311 - jitter, not crypto


@dataclass
class DeleteResult:
    """Outcome of erasing one subject at one partner, with the evidence to keep."""

    subject_id: str
    idempotency_key: str
    outcome: DeleteOutcome
    http_status: int | None = None
    response_id: str | None = None
    response_snippet: str = ""
    error: str | None = None
    calls: int = 0
    throttled: int = 0
    started_at: str = ""
    finished_at: str = ""
    elapsed_ms: float = 0.0
    key: Any = None
    """Caller's correlation key (e.g. the erasure task id); not sent anywhere."""

    @property
    def ok(self) -> bool:
        return self.outcome in DeleteOutcome.successes()

    @property
    def permanent(self) -> bool:
        return self.outcome == DeleteOutcome.PERMANENT_FAILURE

    def evidence(self) -> dict[str, Any]:
        """The JSON kept in the tracking store (no caller key)."""
        # the task row already names the subject; no caller key (a plain dict: asdict() deep-copies)
        return {
            "idempotency_key": self.idempotency_key,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "response_id": self.response_id,
            "response_snippet": self.response_snippet,
            "error": self.error,
            "calls": self.calls,
            "throttled": self.throttled,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_ms": self.elapsed_ms,
        }


class RateLimiter:
    """Spaces call starts at ``rate`` per second (no bursts); ``None`` means unlimited."""

    def __init__(self, rate_per_s: float | None) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._next = 0.0
        self._pause_until = 0.0

    def pause(self, seconds: float) -> None:
        """Backpressure from the partner (429): nobody starts a call for ``seconds``."""
        self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            if now < self._pause_until:
                await asyncio.sleep(self._pause_until - now)
                continue
            if not self.interval:
                return
            slot = max(now, self._next)
            self._next = slot + self.interval
            if slot > now:
                await asyncio.sleep(slot - now)
            if time.monotonic() >= self._pause_until:
                return


def parse_retry_after(value: str | None, default: float, cap: float) -> float:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); ``default`` when absent/bad."""
    if not value:
        return min(default, cap)
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return min(default, cap)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        secs = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(secs, cap))


def classify(status: int) -> DeleteOutcome | Literal["retry", "throttle"]:
    """Map an HTTP status to an outcome, or to 'retry' / 'throttle' (what the client does next)."""
    if status == 202:
        return DeleteOutcome.ACCEPTED
    if 200 <= status < 300:
        return DeleteOutcome.DELETED
    if status in (404, 410):
        return DeleteOutcome.ALREADY_GONE
    if status == 409:
        return DeleteOutcome.CONFLICT
    if status == 429:
        return "throttle"
    if status == 408 or status >= 500:
        return "retry"
    return DeleteOutcome.PERMANENT_FAILURE


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _response_id(headers: Any, body: str) -> str | None:
    for h in ("X-Request-Id", "X-Deletion-Id", "Request-Id"):
        if headers.get(h):
            return str(headers[h])
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if isinstance(data, dict):
            for k in ("deletion_id", "request_id", "id"):
                if data.get(k) is not None:
                    return str(data[k])
    return None


@dataclass
class LookupResult:
    """One lookup of a subject after its erasure: ``pass`` gone, ``fail`` still there, ``error`` unknown."""

    outcome: CheckOutcome
    http_status: int | None
    detail: str
    calls: int = 0
    throttled: int = 0


@dataclass
class SyncDeleteClient:
    """Deletes subjects at one partner. Use as ``async with SyncDeleteClient(...) as c``."""

    base_url: str
    delete_path: str = "/subjects/{subject_id}"
    lookup_path: str = "/subjects/{subject_id}"
    concurrency: int = 16
    rate_limit_per_s: float | None = None
    timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    token: str | None = None
    user_agent: str = "erasure-pipeline/0.1"
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _limiter: RateLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if "{subject_id}" not in self.delete_path:
            raise ValueError(f"delete_path must contain {{subject_id}}, got {self.delete_path!r}")
        self.base_url = self.base_url.rstrip("/")
        self._limiter = RateLimiter(self.rate_limit_per_s)

    @classmethod
    def for_target(cls, target: Any, token: str | None = None, **overrides: Any) -> SyncDeleteClient:
        """Build from a catalog ``Target`` of kind ``sync_api`` (token resolved by the caller)."""
        from erasure.targets.sync_api import SyncApiSpec

        spec = target.spec_as(SyncApiSpec)
        kw: dict[str, Any] = {
            "base_url": spec.base_url,
            "delete_path": spec.delete_path,
            "lookup_path": spec.lookup_path,
            "concurrency": spec.concurrency,
            "rate_limit_per_s": spec.rate_limit_per_s,
            "timeout_s": spec.timeout_s,
            "retry": RetryPolicy(max_retries=spec.max_retries),
            "token": token,
        }
        kw.update(overrides)
        return cls(**kw)

    async def __aenter__(self) -> SyncDeleteClient:
        headers = {"User-Agent": self.user_agent}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=headers,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, subject_id: str) -> str:
        return self.base_url + self.delete_path.replace("{subject_id}", quote(subject_id, safe=""))

    def lookup_url_for(self, subject_id: str) -> str:
        return self.base_url + self.lookup_path.replace("{subject_id}", quote(subject_id, safe=""))

    async def lookup(self, subject_id: str) -> LookupResult:
        """``GET`` the subject at the lookup path: 404/410 gone (pass), 200 still there (fail), anything
        else after the retries could not tell (error). Never raises for HTTP/network problems."""
        if self._session is None:
            raise RuntimeError("use 'async with SyncDeleteClient(...)' before calling lookup()")
        url = self.lookup_url_for(subject_id)
        retries = throttled = calls = 0
        while True:
            await self._limiter.acquire()
            calls += 1
            try:
                async with self._session.get(url, allow_redirects=False) as resp:
                    body = await resp.text(errors="replace")
                    status, headers = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, headers, body = None, None, f"{type(exc).__name__}: {exc}"
            if status in (404, 410):
                return LookupResult(CheckOutcome.PASS, status, f"GET {url} -> {status}", calls, throttled)
            if status == 200:
                return LookupResult(
                    CheckOutcome.FAIL,
                    status,
                    f"GET {url} -> 200: the subject's data is still there",
                    calls,
                    throttled,
                )
            if status == 429 and headers is not None and throttled < self.retry.max_throttle_waits:
                throttled += 1
                self._limiter.pause(
                    parse_retry_after(
                        headers.get("Retry-After"),
                        self.retry.backoff(min(throttled, 8)),
                        self.retry.max_retry_after_s,
                    )
                )
                continue
            if (status is None or status == 408 or status >= 500) and retries < self.retry.max_retries:
                retries += 1
                await asyncio.sleep(self.retry.backoff(retries))
                continue
            shown = body[:200] if status is None else f"{status}: {body[:200]}"
            return LookupResult(CheckOutcome.ERROR, status, f"GET {url} -> {shown}", calls, throttled)

    async def delete(self, subject_id: str, idempotency_key: str, key: Any = None) -> DeleteResult:
        """Erase one subject, retrying per the policy. Never raises for HTTP/network problems."""
        if self._session is None:
            raise RuntimeError("use 'async with SyncDeleteClient(...)' before calling delete()")
        res = DeleteResult(
            subject_id, idempotency_key, DeleteOutcome.RETRYABLE_FAILURE, key=key, started_at=_now_iso()
        )
        t0 = time.monotonic()
        url = self.url_for(subject_id)
        retries = 0
        while True:
            await self._limiter.acquire()
            res.calls += 1
            try:
                async with self._session.delete(
                    url, headers={"Idempotency-Key": idempotency_key}, allow_redirects=False
                ) as resp:
                    body = await resp.text(errors="replace")
                    status, headers = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                res.http_status, res.response_id, res.response_snippet = None, None, ""
                res.error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
                verdict: DeleteOutcome | str = "retry"
            else:
                res.http_status = status
                res.response_id = _response_id(headers, body)
                res.response_snippet = body[:SNIPPET_CHARS]
                verdict = classify(status)
                res.error = None if verdict in DeleteOutcome.successes() else f"HTTP {status}: {body[:200]}"
                if verdict == "throttle":
                    res.throttled += 1
                    if res.throttled <= self.retry.max_throttle_waits:
                        wait = parse_retry_after(
                            headers.get("Retry-After"),
                            self.retry.backoff(min(res.throttled, 8)),
                            self.retry.max_retry_after_s,
                        )
                        self._limiter.pause(wait)
                        continue
                    verdict = DeleteOutcome.RETRYABLE_FAILURE
            if verdict == "retry":
                retries += 1
                if retries <= self.retry.max_retries:
                    await asyncio.sleep(self.retry.backoff(retries))
                    continue
                verdict = DeleteOutcome.RETRYABLE_FAILURE
            res.outcome = DeleteOutcome(verdict)
            break
        res.finished_at = _now_iso()
        res.elapsed_ms = round((time.monotonic() - t0) * 1000, 1)
        return res

    async def delete_many(
        self,
        items: Iterable[tuple[Any, str, str]],
        on_result: Callable[[DeleteResult], Awaitable[None] | None] | None = None,
    ) -> list[DeleteResult]:
        """Erase ``(key, subject_id, idempotency_key)`` items with ``concurrency`` workers.

        ``on_result`` is called as each subject finishes (so callers can record it at once).
        """
        queue: asyncio.Queue[tuple[Any, str, str]] = asyncio.Queue()
        for it in items:
            queue.put_nowait(it)
        results: list[DeleteResult] = []

        async def worker() -> None:
            while True:
                try:
                    key, subject_id, idem = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                r = await self.delete(subject_id, idem, key=key)
                results.append(r)
                if on_result is not None:
                    maybe = on_result(r)
                    if maybe is not None:
                        await maybe

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(1, queue.qsize())))))
        return results
