"""Helpers of the Kafka outbox / ack tests and benchmark (issue 5): a catalog whose Kafka targets use
unique topics, bulk creation of requests + Kafka tasks, reading a topic back, a private broker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from erasure.catalog import Catalog, load_catalog

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_catalog(
    directory: Path,
    events_topic: str,
    ack_topic: str,
    targets: dict[str, int | None],
    **target_kw: Any,
) -> tuple[Path, Catalog]:
    """A catalog with one ``kafka`` target per ``{name: lookup port or None}``, all on the given topics."""
    data = {
        "version": 1,
        "pipeline_owner": "privacy",
        "subject_types": [{"name": "customer"}],
        "teams": [{"name": "privacy"}, {"name": "marketing"}],
        "targets": [
            {
                "name": name,
                "kind": "kafka",
                "owner": "marketing",
                "subject_types": ["customer"],
                "identity_key": "customer_id",
                "retry_backoff_minutes": 1,
                **target_kw,
                "kafka": {
                    "topic": events_topic,
                    "ack_topic": ack_topic,
                    "ack_timeout_minutes": 30,
                    "consumer_group": f"partner-{name}-{uuid.uuid4().hex[:6]}",
                    **({"lookup_url": f"http://127.0.0.1:{port}"} if port else {}),
                },
            }
            for name, port in targets.items()
        ],
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_catalog(path)


def seed_kafka_tasks(
    dsn: str,
    targets: list[str],
    n: int,
    *,
    prefix: str | None = None,
    request_status: str = "in_progress",
    kind: str = "kafka",
) -> list[str]:
    """``n`` requests (subject ids ``cus_<prefix><i>``) with one pending task per target. Returns subject ids."""
    prefix = prefix or uuid.uuid4().hex[:8]
    subjects = [f"cus_{prefix}{i:06d}" for i in range(n)]
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """
                WITH r AS (
                    INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source,
                                                 status, due_at)
                    SELECT 'ext-' || s, 'customer', s, 'test', 'api', %s, now() + interval '30 days'
                      FROM unnest(%s::text[]) s
                    RETURNING id)
                INSERT INTO erasure.task (request_id, target, kind)
                SELECT r.id, t, %s FROM r CROSS JOIN unnest(%s::text[]) t
                """,
                (request_status, subjects, kind, targets),
            )
    finally:
        conn.close()
    return subjects


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Any]:
    """Every message currently in ``topic`` (all partitions, from the beginning to the end)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})  # fmt: skip
    try:
        md = c.list_topics(topic, timeout=timeout).topics[topic]
        ends = {}
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if hi > lo:
                ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        pos = {p: -1 for p in ends}
        while any(pos[p] < ends[p] - 1 for p in ends) and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is None:
                    out.append(m)
                    pos[m.partition()] = m.offset()
        return out
    finally:
        c.close()


def signer(keys: dict[str, str]) -> Any:
    """``sign(value)`` -> the headers a partner would send: signed with the key of the target the ack
    names (``erasure.ack_auth``); no header for values that are not a JSON ack of a known target."""
    import json

    from erasure.ack_auth import sign_headers

    def sign(value: bytes | None) -> list[tuple[str, bytes]] | None:
        try:
            target = json.loads(value or b"").get("target")
        except (ValueError, AttributeError):
            return None
        return sign_headers(keys[target], value or b"") if target in keys else None

    return sign


def produce_raw(
    bootstrap: str, topic: str, values: list[bytes | None], key: bytes | None = None, sign: Any = None
) -> None:
    """Produce ``values``; ``sign(value)`` (e.g. :func:`signer`) gives each message's headers."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    errs: list[Any] = []
    for v in values:
        headers = sign(v) if sign else None
        p.produce(
            topic, value=v, key=key, headers=headers, on_delivery=lambda e, m: errs.append(e) if e else None
        )
    assert p.flush(30) == 0 and not errs, errs


class PrivateBroker:
    """A second, private single-node KRaft broker on its own ports and log dir (never the shared one),
    started like ``scripts/stack.sh up_kafka`` from the jars in ``.local/kafka/libs``. ``kill()`` is a
    ``kill -9``; ``start()`` again restarts it on the same data."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        libs = Path(os.environ.get("ERASURE_LOCAL", ROOT / ".local")) / "kafka" / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"Kafka jars missing in {libs}: run scripts/stack.sh setup")
        self.cp = f"{libs}/*"
        self.java = shutil.which("java") or "java"
        self.jopts = ["-Xms128m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                      f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}"]  # fmt: skip

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def setup(self) -> PrivateBroker:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = self.dir / "data"
        template = (ROOT / "tools" / "kafka" / "server.properties.in").read_text()
        (self.dir / "server.properties").write_text(
            template.replace("@CONTROLLER_PORT@", str(self.controller_port))
            .replace("@PORT@", str(self.port))
            .replace("@LOG_DIRS@", str(data))
        )
        (self.dir / "log4j2.properties").write_text(
            f"""rootLogger.level=WARN
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName={self.dir / "server.log"}
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
"""
        )
        cluster = subprocess.run(
            [self.java, "-cp", self.cp, *self.jopts, "kafka.tools.StorageTool", "random-uuid"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        subprocess.run(
            [self.java, "-cp", self.cp, *self.jopts, "kafka.tools.StorageTool", "format", "--standalone",
             "-t", cluster, "-c", str(self.dir / "server.properties")],
            check=True, capture_output=True,
        )  # fmt: skip
        return self

    def start(self, timeout: float = 120, wait: bool = True) -> PrivateBroker:
        """Start the broker; with ``wait`` (the default) return once it lists a registered broker."""
        out = open(self.dir / "kafka.out", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [self.java, "-cp", self.cp, *self.jopts, "kafka.Kafka", str(self.dir / "server.properties")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_port(self, timeout: float = 120) -> None:
        """Return once the broker's port accepts connections (all ``scripts/stack.sh`` waits for)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"private broker exited ({self.proc.returncode}); see {self.dir}/kafka.out"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"private broker port not open within {timeout}s") from None
                time.sleep(0.05)

    def wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"private broker exited ({self.proc.returncode}); see {self.dir}/kafka.out"
                )
            try:
                md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
                if md.brokers:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"private broker not ready within {timeout}s; see {self.dir}/kafka.out")

    def kill(self) -> None:
        """kill -9 (no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
