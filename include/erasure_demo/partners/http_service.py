"""A demo partner with a real HTTP API (aiohttp) over its own store (:class:`PartnerStore`).

Partner endpoints (paths from the catalog's ``sync_api`` section):

* ``DELETE {delete_path}``  erase a subject: 200 JSON ``{"deletion_id", "subject_id", "deleted": true}``,
  404 when there is nothing to erase. An ``Idempotency-Key`` seen before replays the first answer
  (``"replayed": true``), also after a restart: the key is stored with the deletion, in one transaction.
* ``GET {lookup_path}``     200 ``{"subject_id", "data", "is_test"}`` or 404 (used to verify erasure).
* ``POST {create_path}``    body ``{"subject_id", "data"}``: create a *test* subject (the canary), 201.
* ``GET /healthz``          200 ``{"status": "ok", ...}``; 503 during an outage.

Admin endpoints (never subject to faults):

* ``GET|PUT|DELETE /admin/faults``  read / merge / reset fault settings (:class:`Faults`)
* ``POST /admin/seed``              ``{"subject_ids": [...], "data": {...}}`` or ``{"prefix", "count", "start"}``
* ``GET /admin/deletions[?subject_id=]`` the partner's deletion log (with idempotency keys)
* ``GET /admin/stats``              subject count and response counters by status

Faults: ``error_rate`` (answer ``error_status``, default 503, without deleting), ``latency_ms`` +
``latency_jitter_ms``, ``down`` or an outage window (``outage_start``/``outage_end`` epoch seconds,
or ``outage_seconds`` from now: connections are dropped without an answer), ``rate_limit_per_s``
(429 with ``Retry-After``), ``silent_delete_failure`` (answers like a real delete but keeps the data —
the canary and verification must catch it), ``accept_delete_after_s`` (answer ``202 Accepted`` and erase
that many seconds later), ``accept_never_delete`` (answer 202, never erase), ``reject_pattern`` / ``subject_status`` (answer a fixed status, e.g. 422 or
409, for matching subject ids).
"""

from __future__ import annotations

import asyncio
import errno
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from aiohttp import web

from erasure_demo.partners.store import PartnerStore

ADMIN_PREFIX = "/admin"


@dataclass
class Faults:
    error_rate: float = 0.0
    error_status: int = 503
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    down: bool = False
    outage_start: float | None = None
    outage_end: float | None = None
    rate_limit_per_s: float | None = None
    retry_after_s: float | None = None
    silent_delete_failure: bool = False
    accept_delete_after_s: float | None = None
    """Answer deletes ``202 Accepted`` and erase the subject this many seconds later (0: at once,
    after answering); ``accept_never_delete`` answers 202 and never erases."""
    accept_never_delete: bool = False
    reject_pattern: str | None = None
    reject_status: int = 422
    subject_status: dict[str, int] = field(default_factory=dict)

    def update(self, data: dict[str, Any]) -> None:
        """Merge settings; unknown keys or bad values raise ValueError naming the field."""
        names = {f.name for f in fields(self)}
        data = dict(data)
        if "outage_seconds" in data:
            secs = float(data.pop("outage_seconds"))
            now = time.time()
            data.setdefault("outage_start", now)
            data.setdefault("outage_end", now + secs)
        for k, v in data.items():
            if k not in names:
                raise ValueError(f"unknown fault setting '{k}' (known: {sorted(names | {'outage_seconds'})})")
            if k == "error_rate" and not (0.0 <= float(v) <= 1.0):
                raise ValueError("fault 'error_rate' must be between 0 and 1")
            if k in ("error_status", "reject_status") and not (100 <= int(v) <= 599):
                raise ValueError(f"fault '{k}' must be an HTTP status code")
            if k == "reject_pattern" and v is not None:
                re.compile(v)
            if k == "rate_limit_per_s" and v is not None and float(v) <= 0:
                raise ValueError("fault 'rate_limit_per_s' must be > 0 or null")
            if k == "accept_delete_after_s" and v is not None and float(v) < 0:
                raise ValueError("fault 'accept_delete_after_s' must be >= 0 or null")
            if k == "subject_status" and not isinstance(v, dict):
                raise ValueError("fault 'subject_status' must be an object {subject_id: status}")
            setattr(self, k, v)

    def in_outage(self, now: float | None = None) -> bool:
        if self.down:
            return True
        if self.outage_end is None:
            return False
        now = time.time() if now is None else now
        return (self.outage_start or 0) <= now < self.outage_end


class _Bucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else seconds until the next one."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class PartnerService:
    """The aiohttp application of one partner."""

    def __init__(
        self,
        name: str,
        store: PartnerStore,
        *,
        delete_path: str = "/subjects/{subject_id}",
        lookup_path: str = "/subjects/{subject_id}",
        create_path: str = "/test-subjects",
        token: str | None = None,
        idempotency_cache: int = 100_000,
        key_type: str = "customer_id",
    ) -> None:
        self.name = name
        self.key_type = key_type
        """The identifier type the partner keys its subjects by (the identity lookup answers it)."""
        self.store = store
        self.paths = {"delete": delete_path, "lookup": lookup_path, "create": create_path}
        self.token = token
        self.faults = Faults()
        self.counters: Counter[str] = Counter()
        self._bucket: _Bucket | None = None
        self._idem: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._idem_max = idempotency_cache

    # -- app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_route("DELETE", self.paths["delete"], self.handle_delete)
        app.router.add_route("GET", self.paths["lookup"], self.handle_lookup)
        app.router.add_route("POST", self.paths["create"], self.handle_create)
        app.router.add_post("/identities/lookup", self.handle_identity_lookup)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get(f"{ADMIN_PREFIX}/faults", self.admin_get_faults)
        app.router.add_put(f"{ADMIN_PREFIX}/faults", self.admin_set_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/faults", self.admin_set_faults)
        app.router.add_delete(f"{ADMIN_PREFIX}/faults", self.admin_reset_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/seed", self.admin_seed)
        app.router.add_get(f"{ADMIN_PREFIX}/deletions", self.admin_deletions)
        app.router.add_get(f"{ADMIN_PREFIX}/stats", self.admin_stats)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token and request.path != "/healthz":
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    # -- faults ---------------------------------------------------------------------------
    async def _apply_faults(self, request: web.Request, subject_id: str | None) -> web.Response | None:
        """Returns a fault response (or drops the connection), or None to proceed."""
        f = self.faults
        if f.in_outage():
            self.counters["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()  # no answer at all: the client sees a dropped connection
            return web.Response(status=503)  # never reaches the client
        if f.latency_ms or f.latency_jitter_ms:
            await asyncio.sleep((f.latency_ms + random.uniform(0, f.latency_jitter_ms)) / 1000)  # noqa: S311
        if f.rate_limit_per_s:
            if self._bucket is None or self._bucket.rate != f.rate_limit_per_s:
                self._bucket = _Bucket(float(f.rate_limit_per_s))
            wait = self._bucket.take()
            if wait > 0:
                retry_after = f.retry_after_s if f.retry_after_s is not None else max(1, math.ceil(wait))
                return self._json({"error": "rate_limited"}, 429, headers={"Retry-After": f"{retry_after:g}"})
        if f.error_rate and random.random() < f.error_rate:  # noqa: S311
            return self._json({"error": "injected_fault"}, int(f.error_status))
        if subject_id is not None:
            if subject_id in f.subject_status:
                status = int(f.subject_status[subject_id])
                return self._json({"error": "rejected", "subject_id": subject_id}, status)
            if f.reject_pattern and re.search(f.reject_pattern, subject_id):
                return self._json(
                    {"error": "invalid_subject", "detail": f"subject id rejected by {self.name}"},
                    int(f.reject_status),
                )
        return None

    def _json(self, body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
        self.counters[str(status)] += 1
        return web.json_response(body, status=status, headers=headers)

    # -- partner API ----------------------------------------------------------------------
    async def handle_delete(self, request: web.Request) -> web.Response:
        subject_id = request.match_info["subject_id"]
        fault = await self._apply_faults(request, subject_id)
        if fault is not None:
            return fault
        idem = request.headers.get("Idempotency-Key")
        first = self._idem.get(idem) if idem else None
        if idem and first is None:  # not answered since this process started: the store remembers
            first = await asyncio.to_thread(self._stored_answer, idem)
        if first is not None and first[1].get("subject_id") == subject_id:
            status, body = first
            return self._json(
                {**body, "replayed": True}, status, headers={"X-Request-Id": body["deletion_id"]}
            )
        deletion_id = f"del_{uuid.uuid4().hex[:20]}"
        f = self.faults
        if (f.accept_delete_after_s is not None or f.accept_never_delete) and self.store.get(subject_id):
            body = {"deletion_id": deletion_id, "subject_id": subject_id, "accepted": True}
            if not f.accept_never_delete:
                delay = float(f.accept_delete_after_s or 0.0)
                asyncio.get_running_loop().call_later(delay, self.store.delete, subject_id, idem)
            return self._json(body, 202, headers={"X-Request-Id": deletion_id})  # never cached: asked again
        if self.faults.silent_delete_failure:
            existed = self.store.get(subject_id) is not None  # claims success, keeps the data
        else:
            existed = self.store.delete(subject_id, idem, deletion_id)
        status = 200 if existed else 404
        body = {"deletion_id": deletion_id, "subject_id": subject_id, "deleted": existed}
        if idem and not self.faults.silent_delete_failure:  # a fake answer is not remembered as done
            self._idem[idem] = (status, body)
            if len(self._idem) > self._idem_max:
                self._idem.popitem(last=False)
        return self._json(body, status, headers={"X-Request-Id": deletion_id})

    def _stored_answer(self, idem: str) -> tuple[int, dict[str, Any]] | None:
        """The answer first given to ``idem``, rebuilt from the store's deletion log (durable keys)."""
        done = self.store.first_deletion(idem)
        if done is None or not done["deletion_id"]:  # no answer was given with this key
            return None
        existed = bool(done["existed"])
        body = {"deletion_id": done["deletion_id"], "subject_id": done["subject_id"], "deleted": existed}
        return (200 if existed else 404), body

    async def handle_lookup(self, request: web.Request) -> web.Response:
        subject_id = request.match_info["subject_id"]
        fault = await self._apply_faults(request, None)
        if fault is not None:
            return fault
        row = self.store.get(subject_id)
        if row is None:
            return self._json({"error": "not_found", "subject_id": subject_id}, 404)
        return self._json({"subject_id": subject_id, "data": row}, 200)

    async def handle_identity_lookup(self, request: web.Request) -> web.Response:
        """``POST /identities/lookup {"type", "values", "want"}`` -> ``{"results": {value: {type: [...]}}}``
        (the ``sync_api`` resolver of docs/identity.md)."""
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body, dict):
            return self._json({"error": "body must be an object"}, 400)
        id_type, values, want = body.get("type"), body.get("values"), body.get("want")
        if not isinstance(id_type, str) or not id_type.replace("_", "").isalnum():
            return self._json({"error": "field 'type' must be an identifier type name"}, 400)
        if (
            not isinstance(values, list)
            or not all(isinstance(v, str) for v in values)
            or len(values) > 10_000
        ):
            return self._json({"error": "field 'values' must be a list of strings (<= 10000)"}, 400)
        if not isinstance(want, list) or not all(
            isinstance(w, str) and w.replace("_", "").isalnum() for w in want
        ):
            return self._json({"error": "field 'want' must be a list of identifier type names"}, 400)
        self.counters["identity_lookups"] += 1
        return self._json({"results": self.store.lookup(self.key_type, id_type, values, want)}, 200)

    async def _body(self, request: web.Request) -> Any:
        """The request's JSON body, or the response to send instead (a fault, or 400 for bad JSON)."""
        fault = await self._apply_faults(request, None)
        if fault is not None:
            return fault
        try:
            return await request.json()
        except ValueError:
            return self._json({"error": "body must be JSON"}, 400)

    async def handle_create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        sid = body.get("subject_id") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid or len(sid) > 200:
            return self._json({"error": "field 'subject_id' must be a non-empty string (<= 200 chars)"}, 400)
        data = body.get("data", {})
        if not isinstance(data, dict):
            return self._json({"error": "field 'data' must be an object"}, 400)
        self.store.put(sid, data or {"created_by": "canary"}, is_test=True)
        return self._json({"subject_id": sid, "is_test": True}, 201)

    async def handle_health(self, request: web.Request) -> web.Response:
        if self.faults.in_outage():
            return web.json_response({"status": "down", "partner": self.name}, status=503)
        return web.json_response({"status": "ok", "partner": self.name, "subjects": self.store.count()})

    # -- admin ----------------------------------------------------------------------------
    async def admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def admin_set_faults(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object of fault settings")
            self.faults.update(data)
        except (ValueError, TypeError, re.error) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(self.faults))

    async def admin_reset_faults(self, request: web.Request) -> web.Response:
        self.faults = Faults()
        self._bucket = None
        return web.json_response(asdict(self.faults))

    async def admin_seed(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        data = body.get("data") or {"name": "Demo Person", "email": "demo@example.com"}
        if "subject_ids" in body:
            ids = [str(s) for s in body["subject_ids"]]
        elif "count" in body:
            prefix, start = str(body.get("prefix", "cus_")), int(body.get("start", 0))
            ids = [f"{prefix}{i:08d}" for i in range(start, start + int(body["count"]))]
        else:
            return web.json_response(
                {"error": "give 'subject_ids' or 'count' (+ 'prefix', 'start')"}, status=400
            )
        await asyncio.to_thread(self.store.put_many, [(s, data) for s in ids])
        return web.json_response({"seeded": len(ids)})

    async def admin_deletions(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.store.deletions, request.query.get("subject_id"))
        return web.json_response({"deletions": rows})

    async def admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"partner": self.name, "subjects": self.store.count(), "responses": dict(self.counters)}
        )


BIND_RETRY_S = 75.0
"""How long a fixed port that is taken is tried again (a previous run's socket in TIME_WAIT, 60 s).
The stack's default ports lie below Linux's ephemeral range (32768-60999), so no client connection is
given one as its local port; a port overridden into that range can still be, and this waits it out."""


async def start_site(service: PartnerService, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``service`` on host:port (0 = any free port); returns the runner and the bound port."""
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    deadline = time.monotonic() + (BIND_RETRY_S if port else 0.0)
    while True:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
            break
        except OSError as exc:
            await site.stop()
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                await runner.cleanup()
                raise
            await asyncio.sleep(0.5)
    server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port
    return runner, int(bound)


class PartnerServer:
    """A partner served from a background thread (tests, benchmarks): ``start()``, ``url``, ``stop()``.

    ``stop()`` closes the listening socket (clients get connection refused, a real outage);
    ``start()`` again serves the same store on the same port.
    """

    def __init__(
        self,
        name: str,
        store_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **service_kw: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.service = PartnerService(name, PartnerStore(store_path), **service_kw)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> PartnerServer:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name=f"partner-{self.service.name}", daemon=True
            )
            self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_site(self.service, self.host, self.port), self._loop)
        self._runner, self.port = fut.result(timeout=BIND_RETRY_S + 30)
        return self

    def stop(self) -> None:
        """Stop serving (the thread and store stay for a later ``start()``)."""
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
            self._runner = None

    def close(self) -> None:
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None
        self.service.store.close()

    def __enter__(self) -> PartnerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
