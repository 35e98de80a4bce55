"""A demo asynchronous partner: a real Kafka consumer that erases subjects from its own store and acks.

For one catalog target of kind ``kafka``:

* a **consumer process** (``python -m erasure_demo.partners.kafka_partner``; a real OS process so that a
  crash is a real crash) in the partner's own consumer group (``kafka.consumer_group``, static
  membership so a restarted process takes its partitions back at once) reads ``kafka.topic``,
  validates every event (``erasure.events.parse_event``), keeps those for its target, erases the
  subject from its :class:`~erasure_demo.partners.store.PartnerStore` (``$ERASURE_LOCAL/partners/<target>.db``,
  the event id as idempotency key), produces an ack to ``kafka.ack_topic`` (idempotent producer,
  delivery checked) and commits its offsets only after the acks were delivered (at-least-once).
  A redelivered or replayed event (same event id) is answered with the first outcome, not erased twice.
  While the broker is unreachable it waits: acks stay queued (no delivery timeout) and commits are
  retried with back-off up to 30 s, and librdkafka's connection errors are logged once a minute at
  most, with the number of similar lines left out.
* a **supervisor** (the caller's thread) restarts the process after a crash (``restart_delay_s``,
  doubled after each crash that follows a short run, up to 30 s) and
  serves the partner's HTTP API on the host/port of ``kafka.lookup_url`` with
  :class:`erasure_demo.partners.http_service.PartnerService` (``GET /subjects/{id}`` lookup,
  ``POST /test-subjects`` test data for the canary, ``/admin/seed``, ``/admin/stats``, ``/healthz``).

Fault settings (``GET|PUT|DELETE /admin/faults`` on the lookup URL, or ``faults=`` / the environment
variable ``ERASURE_KAFKA_PARTNER_FAULTS_<TARGET>`` as JSON at start):

* ``slow_ms``        sleep this long per event of the target
* ``drop_rate``      drop this fraction of events: no erasure, no ack, offset committed (a lost event)
* ``drop_next``      drop the next N events (deterministic; counted from when the setting was written)
* ``fail_rate``      ack this fraction with outcome ``failed`` (nothing erased)
* ``crash_every``    crash (``os._exit``) after every N-th erasure, after erasing and before acking or
                     committing: the restarted process gets the event again and re-acks it
* ``restart_delay_s`` pause before the supervisor restarts a crashed process (default 1)
* the HTTP partner's settings (``down``, ``outage_seconds`` ...) also pause consumption while active.

``run(target, catalog)`` (called by ``erasure_demo.partners.run`` for every kafka target) starts both and
blocks; :class:`KafkaPartner` is the handle used by tests (``start()`` / ``stop()``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from erasure.ack_auth import sign_headers
from erasure.catalog import Catalog, Target
from erasure.events import SchemaError, new_ack, parse_event
from erasure.settings import get_settings
from erasure.targets.kafka import KafkaSpec
from erasure_demo.partners.http_service import Faults, PartnerServer, PartnerService

log = logging.getLogger("erasure_demo.partners.kafka")

CRASH_EXIT_CODE = 70
MAX_BACKOFF_S = 30.0
QUIET_LOG_INTERVAL_S = 60.0


class QuietLog(logging.Filter):
    """Let through one record per kind (its text without digits) per ``interval`` seconds; the next one
    says how many were left out. librdkafka repeats its connection errors while a broker is down."""

    def __init__(self, interval: float = QUIET_LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = "".join(ch for ch in record.getMessage() if not ch.isdigit())[:160]
        now = time.monotonic()
        at, skipped = self._seen.get(kind, (-1e18, 0))
        if now - at < self.interval:
            self._seen[kind] = (at, skipped + 1)
            return False
        self._seen[kind] = (now, 0)
        if skipped:
            record.msg = (
                f"{record.getMessage()} ({skipped} similar lines in the last {now - at:.0f}s left out)"
            )
            record.args = ()
        return True


@dataclass
class KafkaFaults:
    slow_ms: float = 0.0
    drop_rate: float = 0.0
    drop_next: int = 0
    fail_rate: float = 0.0
    crash_every: int = 0
    restart_delay_s: float = 1.0

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def update(self, data: dict[str, Any]) -> None:
        """Merge settings (all or nothing); a bad value raises ValueError naming the field."""
        new: dict[str, float | int] = {}
        for k, v in data.items():
            if k not in self.names():
                raise ValueError(f"unknown kafka fault setting '{k}' (known: {sorted(self.names())})")
            try:
                val: float | int = int(v) if k in ("drop_next", "crash_every") else float(v)
            except (TypeError, ValueError):
                raise ValueError(f"fault '{k}' must be a number, got {v!r}") from None
            if k in ("drop_rate", "fail_rate") and not 0.0 <= val <= 1.0:
                raise ValueError(f"fault '{k}' must be between 0 and 1, got {v!r}")
            if val < 0:
                raise ValueError(f"fault '{k}' must be >= 0, got {v!r}")
            new[k] = val
        for k, val in new.items():
            setattr(self, k, val)


def _env_faults(name: str) -> dict[str, Any]:
    raw = os.environ.get(f"ERASURE_KAFKA_PARTNER_FAULTS_{name.upper()}")
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"ERASURE_KAFKA_PARTNER_FAULTS_{name.upper()}: must be a JSON object")
    return data


# ============================================================================ supervisor (parent)
class KafkaPartner:
    """One Kafka partner: consumer process (restarted after crashes) + HTTP API. ``start()``/``stop()``."""

    def __init__(
        self,
        target: Target,
        *,
        bootstrap: str | None = None,
        data_dir: str | Path | None = None,
        group_id: str | None = None,
        faults: dict[str, Any] | None = None,
        http: bool = True,
        http_port: int | None = None,
    ) -> None:
        if target.kind != "kafka":
            raise ValueError(
                f"target '{target.name}': kind is '{target.kind}', a Kafka partner needs kind 'kafka'"
            )
        self.target = target
        self.spec = target.spec_as(KafkaSpec)
        settings = get_settings()
        self.bootstrap = bootstrap or settings.kafka_bootstrap
        base = Path(data_dir or settings.local_dir / "partners")
        self.store_path = base / f"{target.name}.db"
        self.faults_path = base / f"{target.name}.kafka-faults.json"
        self.stats_path = base / f"{target.name}.kafka-stats.json"
        self.group_id = group_id or self.spec.consumer_group or f"partner-{target.name}"
        self.kafka_faults = KafkaFaults()
        self.kafka_faults.update({**_env_faults(target.name), **(faults or {})})
        self.http = http and (self.spec.lookup_url is not None or http_port is not None)
        self.http_port = http_port
        self.server: Any = None
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- faults shared with the consumer process through a small JSON file ---------------------
    def set_faults(self, data: dict[str, Any]) -> dict[str, Any]:
        kafka_keys = {k: v for k, v in data.items() if k in KafkaFaults.names()}
        http_keys = {k: v for k, v in data.items() if k not in KafkaFaults.names()}
        if http_keys:
            if self.server is None:
                raise ValueError(f"unknown kafka fault setting(s) {sorted(http_keys)} (no HTTP service)")
            self.server.service.faults.update(http_keys)
        self.kafka_faults.update(kafka_keys)
        self._write_faults()
        return self.faults()

    def reset_faults(self) -> dict[str, Any]:
        self.kafka_faults = KafkaFaults()
        if self.server is not None:
            self.server.service.faults = Faults()
        self._write_faults()
        return self.faults()

    def faults(self) -> dict[str, Any]:
        out = asdict(self.kafka_faults)
        if self.server is not None:
            out.update(asdict(self.server.service.faults))
        return out

    def _write_faults(self) -> None:
        data = asdict(self.kafka_faults)
        if self.server is not None:
            f = self.server.service.faults
            data.update({"down": f.down, "outage_start": f.outage_start, "outage_end": f.outage_end})
        data["written_at"] = time.time()
        tmp = self.faults_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.faults_path)

    def stats(self) -> dict[str, Any]:
        try:
            data = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            data = {}
        return {**data, "restarts": self.restarts, "running": self.running}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> KafkaPartner:
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        self.stats_path.unlink(missing_ok=True)
        if self.http and self.server is None:
            self._start_http()
        self._write_faults()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._supervise, name=f"kafka-partner-{self.target.name}", daemon=True
        )
        self._thread.start()
        return self

    def _start_http(self) -> None:
        host, port = "127.0.0.1", self.http_port or 0
        if self.spec.lookup_url and self.http_port is None:
            parts = urlsplit(self.spec.lookup_url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
        server = PartnerServer(self.target.name, self.store_path, host=host, port=port)
        server.service = _KafkaPartnerService(self, server.service)
        self.server = server
        server.start()
        log.info("kafka partner %s: HTTP on %s", self.target.name, server.url)

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable, "-m", "erasure_demo.partners.kafka_partner",
            "--target-json", self.target.model_dump_json(),
            "--bootstrap", self.bootstrap,
            "--group-id", self.group_id,
            "--store", str(self.store_path),
            "--faults-file", str(self.faults_path),
            "--stats-file", str(self.stats_path),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        return subprocess.Popen(cmd)  # noqa: S603 - our own module, fixed arguments

    def _supervise(self) -> None:
        delay = self.kafka_faults.restart_delay_s
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                started = time.monotonic()
                self._proc = self._spawn()
            code = self._proc.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            if time.monotonic() - started > 60:  # it had been running well: no back-off
                delay = self.kafka_faults.restart_delay_s
            log.warning(
                "kafka partner %s: consumer exited with %s (%s); restarting in %.1fs",
                self.target.name,
                code,
                "simulated crash" if code == CRASH_EXIT_CODE else "crash",
                delay,
            )
            self._stop.wait(delay)
            delay = min(max(delay, 0.5) * 2, MAX_BACKOFF_S)

    def kill(self) -> None:
        """SIGKILL the consumer process (a hard crash); the supervisor restarts it."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # graceful: finishes its batch, leaves the group
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.server is not None:
            self.server.close()
            self.server = None

    def __enter__(self) -> KafkaPartner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _KafkaPartnerService(PartnerService):
    """The HTTP partner API, with fault settings and stats that also cover the consumer process."""

    def __init__(self, partner: KafkaPartner, base: PartnerService) -> None:
        super().__init__(base.name, base.store, **{f"{k}_path": v for k, v in base.paths.items()})
        self.partner = partner

    async def admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.partner.faults())

    async def admin_set_faults(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object of fault settings")
            return web.json_response(self.partner.set_faults(data))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def admin_reset_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.partner.reset_faults())

    async def admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "partner": self.name,
                "subjects": self.store.count(),
                "responses": dict(self.counters),
                "kafka": self.partner.stats(),
            }
        )


def run(target: Target | str, catalog: Catalog | None = None, *, stop: threading.Event | None = None) -> None:
    """Run the Kafka partner of ``target`` until ``stop`` is set (forever when None). Blocking."""
    if isinstance(target, str):
        if catalog is None:
            raise ValueError("run(): give a Target, or a target name and the catalog")
        target = catalog.target(target)
    partner = KafkaPartner(target).start()
    try:
        (stop or threading.Event()).wait()
    finally:
        partner.stop()


# ============================================================================ consumer (child)
class _Consumer:
    def __init__(self, args: argparse.Namespace) -> None:
        from confluent_kafka import Consumer, Producer

        from erasure.outbox import producer_config
        from erasure_demo.partners.store import PartnerStore

        self.target = Target.model_validate_json(args.target_json)
        self.spec = self.target.spec_as(KafkaSpec)
        # acks are signed with the target's key (erasure.ack_auth), from ERASURE_ACK_KEY_<TARGET>
        from erasure.settings import ack_keys_from_env

        self.ack_key = (ack_keys_from_env([self.target.name]).get(self.target.name) or [None])[0]
        if self.ack_key is None:
            log.warning("no ERASURE_ACK_KEY_%s: acks go unsigned and are refused", self.target.name.upper())
        self.store = PartnerStore(args.store)
        self.faults_file = Path(args.faults_file)
        self.stats_file = Path(args.stats_file)
        self.parent_pid = args.parent_pid
        self.faults: dict[str, Any] = {}
        self._faults_mtime = 0.0
        self._dropped_since_write = 0
        self.stats = {"events": 0, "other_targets": 0, "malformed": 0, "erased": 0, "not_found": 0,
                      "failed": 0, "dropped": 0, "replayed": 0, "acks": 0}  # fmt: skip
        self.stopping = False
        self.fatal = False
        rdkafka_log = logging.getLogger("erasure_demo.partners.kafka.rdkafka")
        rdkafka_log.addFilter(QuietLog())
        self._quiet = logging.getLogger("erasure_demo.partners.kafka.wait")
        self._quiet.addFilter(QuietLog())
        quiet = {
            "logger": rdkafka_log,
            "error_cb": self._on_error,
            "reconnect.backoff.ms": 1000,
            "reconnect.backoff.max.ms": 10000,
        }
        self.consumer = Consumer(
            {
                **quiet,
                "bootstrap.servers": args.bootstrap,
                "group.id": args.group_id,
                "group.instance.id": f"{args.group_id}-1",  # static membership: a restart takes over at once
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10000,
            }
        )
        # acks wait in the producer's queue while the broker is down (0: no delivery timeout)
        self.producer = Producer(
            producer_config(args.bootstrap, **{"linger.ms": 2, "message.timeout.ms": 0, **quiet})
        )

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            log.error("kafka client: fatal error %s; exiting (restarted)", err)
            self.stopping = True
            self.fatal = True
            return
        self._quiet.warning("kafka client: %s (waiting for the broker)", err)

    def _wait(self, what: str, attempt: int) -> int:
        """Sleep an exponential back-off (1 s doubling to 30 s) before trying ``what`` again."""
        delay = min(2.0**attempt, MAX_BACKOFF_S)
        self._quiet.warning("broker unreachable: %s again in up to %.0fs", what, delay)
        end = time.monotonic() + delay
        while not self.stopping and time.monotonic() < end:
            time.sleep(0.2)
        return attempt + 1

    def _load_faults(self) -> None:
        try:
            st = self.faults_file.stat()
        except OSError:
            return
        if st.st_mtime != self._faults_mtime:
            self._faults_mtime = st.st_mtime
            try:
                self.faults = json.loads(self.faults_file.read_text())
            except (OSError, ValueError):
                return
            self._dropped_since_write = 0

    def _paused(self) -> bool:
        f = self.faults
        if f.get("down"):
            return True
        start, end = f.get("outage_start"), f.get("outage_end")
        return start is not None and end is not None and start <= time.time() < end

    def loop(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        _WAIT_FOR_BROKER = {  # noqa: N806
            KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._WAIT_COORD, KafkaError._TIMED_OUT,
            KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR, KafkaError.REQUEST_TIMED_OUT,
        }  # fmt: skip

        self.consumer.subscribe([self.spec.topic])
        while not self.stopping:
            if os.getppid() != self.parent_pid:
                log.warning("supervisor is gone; exiting")
                break
            self._load_faults()
            if self._paused():
                time.sleep(0.2)
                continue
            msgs = self.consumer.consume(100, timeout=0.5)
            if not msgs:
                continue
            self._load_faults()  # settings written before these events were published apply to them
            acks: list[tuple[str, bytes]] = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer: %s", err)
                    continue
                ack = self._handle(m.value())
                if ack is not None:
                    acks.append(ack)
            if not self._send_acks(acks):
                break  # stopping with acks undelivered: no commit, the events come again
            attempt = 0
            while True:
                try:
                    self.consumer.commit(asynchronous=False)  # offsets only after the acks were delivered
                    break
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.code() == KafkaError._NO_OFFSET:
                        break
                    if err.fatal() or self.stopping:
                        raise
                    if not err.retriable() and err.code() not in _WAIT_FOR_BROKER:
                        # e.g. the group moved on during a long outage: the events come again and
                        # are answered from the store (replay), so going on is safe
                        log.warning("commit failed (%s); the events will be redelivered and replayed", err)
                        break
                    attempt = self._wait(f"committing offsets ({err})", attempt)
            self._write_stats()
        if self.fatal:
            raise SystemExit(1)
        self.consumer.close()

    def _handle(self, raw: bytes | None) -> tuple[str, bytes] | None:
        try:
            ev = parse_event(raw)  # validated on the consuming side
        except SchemaError as exc:
            self.stats["malformed"] += 1
            log.warning("skipping malformed event: %s", exc)
            return None
        if ev.target != self.target.name:
            self.stats["other_targets"] += 1
            return None
        self.stats["events"] += 1
        f = self.faults
        if f.get("slow_ms"):
            time.sleep(float(f["slow_ms"]) / 1000)
        if self._dropped_since_write < int(f.get("drop_next") or 0) or random.random() < float(  # noqa: S311
            f.get("drop_rate") or 0
        ):
            self._dropped_since_write += 1
            self.stats["dropped"] += 1
            return None
        eid = str(ev.event_id)
        if random.random() < float(f.get("fail_rate") or 0):  # noqa: S311
            self.stats["failed"] += 1
            ack = new_ack(ev, self.target.name, "failed", {"error": "injected failure (fail_rate)"})
            return eid, ack.to_bytes()
        earlier = [d for d in self.store.deletions(ev.subject.id) if d["idempotency_key"] == eid]
        if earlier:  # a redelivered or replayed event: answer as the first time, erase nothing again
            existed = bool(earlier[0]["existed"])
            self.stats["replayed"] += 1
            details = {"replayed": True, "first_deleted_at": earlier[0]["deleted_at"]}
        else:
            existed = self.store.delete(ev.subject.id, idempotency_key=eid)
            details = {"deleted_at": time.time()}
            crash_every = int(f.get("crash_every") or 0)
            if crash_every and (self.stats["erased"] + self.stats["not_found"] + 1) % crash_every == 0:
                self._write_stats()
                log.warning("simulated crash after erasing %s (crash_every=%s)", eid, crash_every)
                os._exit(CRASH_EXIT_CODE)  # erased, not acked, offset not committed
        outcome = "erased" if existed else "not_found"
        self.stats[outcome] += 1
        ack = new_ack(ev, self.target.name, outcome, {"partner": self.target.name, **details})
        return eid, ack.to_bytes()

    def _send_acks(self, acks: list[tuple[str, bytes]]) -> bool:
        """Deliver the acks, waiting for the broker as long as it takes; False if stopped before."""
        pending, attempt = list(acks), 0
        while pending:
            failed: list[tuple[str, bytes]] = []

            def cb(err: Any, msg: Any, failed: list[tuple[str, bytes]] = failed) -> None:
                if err is not None:
                    if err.fatal():
                        raise RuntimeError(f"ack producer: fatal error {err}")  # exit; restarted
                    failed.append((msg.key().decode(), msg.value()))

            for key, value in pending:
                while True:
                    try:
                        self.producer.produce(
                            self.spec.ack_topic, key=key.encode(), value=value, on_delivery=cb,
                            headers=sign_headers(self.ack_key, value) if self.ack_key else None,
                        )  # fmt: skip
                        break
                    except BufferError:
                        self.producer.poll(0.1)
            while self.producer.flush(5) > 0:
                if self.stopping:
                    return False
                self._quiet.warning("broker unreachable: %d acks queued, waiting", len(self.producer))
            if failed:
                if self.stopping:
                    return False
                attempt = self._wait(f"sending {len(failed)} acks ({failed and 'delivery failed'})", attempt)
            pending = failed
        self.stats["acks"] += len(acks)
        return True

    def _write_stats(self) -> None:
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.stats, "pid": os.getpid(), "at": time.time()}))
        tmp.replace(self.stats_file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="erasure_demo.partners.kafka_partner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--target-json", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group-id", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--faults-file", required=True)
    p.add_argument("--stats-file", required=True)
    p.add_argument("--parent-pid", type=int, default=os.getppid())
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s kafka-partner %(message)s")
    logging.getLogger("erasure_demo.partners.kafka.rdkafka").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    c = _Consumer(args)

    def on_term(*_: Any) -> None:
        c.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    c.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
