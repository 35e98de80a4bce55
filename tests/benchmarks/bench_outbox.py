"""Benchmark (issues 5 and 15): the outbox publisher vs what a user would pick instead, the provider's
``ProduceToTopicOperator``, and vs a raw confluent-kafka producer loop, on the same broker.

Run (default N=20,000 events, 3 rounds, ~2 min)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_outbox.py -q -s

Knobs: ``BENCH_OUTBOX_N`` (events), ``BENCH_OUTBOX_ROUNDS``, ``BENCH_OUTBOX_BATCH`` (publisher batch size),
``BENCH_OUTBOX_N_SYNC`` (records for the operator's default synchronous mode, 1,000, scaled to N).

* **outbox_cold** (the goal's side): ``erasure.outbox.publish_pending(dsn, bootstrap)`` as the DAG calls it,
  creating its producer inside the measurement, over N enqueued outbox rows in the session's tracking
  database: lock a batch (``FOR UPDATE SKIP LOCKED``), validate every payload with the event schema,
  produce (idempotent, ``acks=all``, keyed by subject, with headers), wait for every delivery report,
  and mark the batch's rows published (partition, offset, ``publish_count``) in one UPDATE.
* **operator** (the goal's baseline, >= 1.0x): ``ProduceToTopicOperator.execute()`` publishing the same
  N (key, value) records from memory with ``synchronous=False`` (its fastest setting; one ``flush`` at the
  end), its producer made by its hook from a connection with the publisher's producer settings; no
  database, no headers, nothing recorded. **operator_sync**: its default (``synchronous=True``, a flush
  per record), on ``BENCH_OUTBOX_N_SYNC`` records, time scaled to N (for information).
* **outbox** / **raw** (for information): the publisher with a warmed producer handed in vs the same N
  records (same value bytes, keys and headers) in memory, one ``Producer.produce()`` per message with a
  delivery callback, then ``flush()`` — same producer settings, no database. **raw_batch**:
  ``produce_batch`` without headers; **outbox_no_kafka**: the publisher with a stand-in producer that
  "delivers" at once (the tracking store's ceiling); **validated_no_db**: the publisher's per-message
  work (validate, produce with headers, keep each report) without the database.

Each round publishes every side to fresh topics (6 partitions), alternating which side of each pair goes
first; the outbox rows are reset (``published_at = NULL``, vacuumed) between sides. Medians (and bests)
of every side and the ratios go to ``.local/bench/outbox.json``. No assertion on time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from erasure import outbox
from erasure.events import parse_event
from erasure.kafka_admin import TopicSpec, ensure_topics
from tests.helpers.db import query
from tests.integration._outbox_support import kafka_catalog, seed_kafka_tasks

pytestmark = [pytest.mark.benchmark, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

N = int(os.environ.get("BENCH_OUTBOX_N", "20000"))
ROUNDS = int(os.environ.get("BENCH_OUTBOX_ROUNDS", "3"))
BATCH = int(os.environ.get("BENCH_OUTBOX_BATCH", "2000"))
N_SYNC = int(os.environ.get("BENCH_OUTBOX_N_SYNC", "1000"))


def _topic(bootstrap: str) -> str:
    name = f"bench.outbox.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(name, 6, 3600 * 1000, "benchmark")])
    return name


def _warm(producer: Any, topic: str) -> None:
    """Before the clock starts (every side alike): the producer has its id and the new topic's leaders
    (one warm-up record per partition, delivered). Without this a freshly created topic sometimes
    costs a metadata retry (~0.5 s) inside the measurement."""
    parts = producer.list_topics(topic, timeout=10).topics[topic].partitions
    for p in parts:
        producer.produce(topic, value=b"warm-up", key=b"warm-up", partition=p)
    assert producer.flush(30) == 0


def _raw(bootstrap: str, messages: list[tuple[bytes, bytes, Any]]) -> float:
    from confluent_kafka import Producer

    topic = _topic(bootstrap)
    p = Producer(outbox.producer_config(bootstrap))
    _warm(p, topic)
    errors: list[Any] = []
    delivered = [0]

    def cb(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[0] += 1

    t0 = time.perf_counter()
    for value, key, headers in messages:
        while True:
            try:
                p.produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
    left = p.flush(120)
    secs = time.perf_counter() - t0
    assert left == 0 and not errors and delivered[0] == len(messages), (left, errors[:3])
    return secs


def _raw_batch(bootstrap: str, messages: list[tuple[bytes, bytes, Any]]) -> float:
    from confluent_kafka import Producer

    topic = _topic(bootstrap)
    p = Producer(outbox.producer_config(bootstrap))
    _warm(p, topic)
    errors: list[Any] = []

    def cb(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)

    t0 = time.perf_counter()
    for i in range(0, len(messages), BATCH):
        chunk = [{"value": v, "key": k} for v, k, _ in messages[i : i + BATCH]]
        while chunk:
            n = p.produce_batch(topic, chunk, on_delivery=cb)
            chunk = [m for m in chunk if "_error" in m] if n < len(chunk) else []
            for m in chunk:
                m.pop("_error")
            if chunk:
                p.poll(0.05)
    left = p.flush(120)
    secs = time.perf_counter() - t0
    assert left == 0 and not errors, (left, errors[:3])
    return secs


def _operator_producer(messages: list[tuple[bytes, bytes, Any]]) -> Any:
    """``producer_function`` of the provider's operator: the same (key, value) pairs, from memory."""
    for value, key, _ in messages:
        yield key, value


def _operator(bootstrap: str, messages: list[tuple[bytes, bytes, Any]], synchronous: bool) -> float:
    """The provider's ``ProduceToTopicOperator`` (what a user would pick instead) publishing the same
    records: its own producer from the connection (same settings as the publisher), no headers (it cannot
    send them), no database, nothing recorded. ``synchronous=True`` is its default (a flush per message)."""
    from airflow.providers.apache.kafka.operators.produce import ProduceToTopicOperator
    from confluent_kafka import Producer

    topic = _topic(bootstrap)
    _warm(Producer(outbox.producer_config(bootstrap)), topic)
    conn_id = f"bench_kafka_{uuid.uuid4().hex[:6]}"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {"conn_type": "kafka", "extra": outbox.producer_config(bootstrap)}
    )
    op = ProduceToTopicOperator(
        task_id="produce",
        topic=topic,
        kafka_config_id=conn_id,
        producer_function=_operator_producer,
        producer_function_args=[messages],
        synchronous=synchronous,
    )
    try:
        t0 = time.perf_counter()
        op.execute(context={})
        secs = time.perf_counter() - t0
    finally:
        os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
    return secs


def _outbox_cold(dsn: str, bootstrap: str) -> float:
    """The publisher as the DAG runs it: its own producer (created inside the measurement, like the
    operator's), over the N outbox rows."""
    from confluent_kafka import Producer

    topic = _topic(bootstrap)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE erasure.outbox SET topic = %s, published_at = NULL", (topic,))
        cur.execute("VACUUM ANALYZE erasure.outbox")
    conn.close()
    _warm(Producer(outbox.producer_config(bootstrap)), topic)
    t0 = time.perf_counter()
    res = outbox.publish_pending(dsn, bootstrap, batch_size=BATCH)
    secs = time.perf_counter() - t0
    assert res.published == N, res
    return secs


def _outbox(dsn: str, bootstrap: str) -> float:
    from confluent_kafka import Producer

    topic = _topic(bootstrap)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE erasure.outbox SET topic = %s, published_at = NULL", (topic,))
        cur.execute("VACUUM ANALYZE erasure.outbox")
    conn.close()
    p = Producer(outbox.producer_config(bootstrap))
    _warm(p, topic)
    t0 = time.perf_counter()
    res = outbox.publish_pending(dsn, bootstrap, batch_size=BATCH, producer=p)
    secs = time.perf_counter() - t0
    p.flush(30)
    assert res.published == N, res
    assert query(dsn, "SELECT count(*)::int AS n FROM erasure.outbox WHERE published_at IS NULL")[0]["n"] == 0
    return secs


class _NoKafka:
    """A stand-in producer that 'delivers' at once: measures the outbox's database/validation ceiling."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.offset = 0

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any, on_delivery: Any) -> None:
        self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        done, self.pending = self.pending, []
        for cb in done:
            self.offset += 1
            cb(None, _Delivered(self.offset))
        return len(done)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class _Delivered:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def _outbox_no_kafka(dsn: str) -> float:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE erasure.outbox SET published_at = NULL")
        cur.execute("VACUUM ANALYZE erasure.outbox")
    conn.close()
    t0 = time.perf_counter()
    res = outbox.publish_pending(dsn, "unused:1", batch_size=BATCH, producer=_NoKafka())
    secs = time.perf_counter() - t0
    assert res.published == N, res
    return secs


def _validated_no_db(bootstrap: str, messages: list[tuple[bytes, bytes, Any]]) -> float:
    from functools import partial

    from confluent_kafka import Producer

    topic = _topic(bootstrap)
    p = Producer(outbox.producer_config(bootstrap))
    _warm(p, topic)
    batch = outbox._Batch(conn=None, rows=[])
    t0 = time.perf_counter()
    for i in range(0, len(messages), BATCH):  # batch by batch, like the publisher
        queued: list[outbox.Message] = []
        for value, key, _ in messages[i : i + BATCH]:
            ev = parse_event(value)
            queued.append((topic, value, key, ev.headers(), partial(batch.on_delivery, str(ev.event_id))))
        outbox._produce_all(p, queued)
    left = p.flush(120)
    secs = time.perf_counter() - t0
    assert left == 0 and len(batch.reports) == len(messages)
    assert all(err is None for err, _, _ in batch.reports.values())
    return secs


def test_outbox_publisher_vs_raw_producer(tracking_db, kafka_bootstrap, tmp_path):
    dsn = tracking_db
    _, cat = kafka_catalog(tmp_path, "bench.placeholder", "bench.acks", {"mkt": None})
    seed_kafka_tasks(dsn, ["mkt"], N)
    assert outbox.enqueue_due(dsn, cat, limit=N).enqueued == N
    rows = query(dsn, "SELECT payload::text AS v, message_key AS k FROM erasure.outbox ORDER BY created_at")
    messages = [(r["v"].encode(), r["k"].encode(), parse_event(r["v"]).headers()) for r in rows]

    times: dict[str, list[float]] = {
        "outbox_cold": [], "operator": [], "operator_sync": [], "outbox": [], "raw": [], "raw_batch": [],
        "outbox_no_kafka": [], "validated_no_db": [],
    }  # fmt: skip
    sync_msgs = messages[:N_SYNC]
    for rnd in range(ROUNDS):
        pair = ["outbox_cold", "operator"] if rnd % 2 == 0 else ["operator", "outbox_cold"]
        sides = ["outbox", "raw", "raw_batch"] if rnd % 2 == 0 else ["raw", "raw_batch", "outbox"]
        for side in [*pair, *sides, "operator_sync", "outbox_no_kafka", "validated_no_db"]:
            if side == "outbox_cold":
                times[side].append(_outbox_cold(dsn, kafka_bootstrap))
            elif side == "operator":
                times[side].append(_operator(kafka_bootstrap, messages, synchronous=False))
            elif side == "operator_sync":  # its default: a flush per message; N_SYNC records, scaled to N
                times[side].append(
                    _operator(kafka_bootstrap, sync_msgs, synchronous=True) * N / len(sync_msgs)
                )
            elif side == "outbox":
                times[side].append(_outbox(dsn, kafka_bootstrap))
            elif side == "raw":
                times[side].append(_raw(kafka_bootstrap, messages))
            elif side == "raw_batch":
                times[side].append(_raw_batch(kafka_bootstrap, messages))
            elif side == "validated_no_db":
                times[side].append(_validated_no_db(kafka_bootstrap, messages))
            else:
                times[side].append(_outbox_no_kafka(dsn))
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {N / v[-1]:,.0f}/s" for k, v in times.items()))

    best = {k: N / min(v) for k, v in times.items()}
    median = {k: N / statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "outbox publisher vs the provider's ProduceToTopicOperator (goal) and a raw producer loop",
        "events": N,
        "rounds": ROUNDS,
        "batch_size": BATCH,
        "broker": kafka_bootstrap,
        "producer": {
            k: v for k, v in outbox.producer_config(kafka_bootstrap).items() if k != "bootstrap.servers"
        },
        "median_events_per_s": {k: round(v) for k, v in median.items()},
        "best_events_per_s": {k: round(v) for k, v in best.items()},
        "ratio_vs_operator_median": round(median["outbox_cold"] / median["operator"], 3),
        "ratio_vs_operator_default_sync_median": round(median["outbox_cold"] / median["operator_sync"], 3),
        "ratio_vs_raw_median": round(median["outbox"] / median["raw"], 3),
        "ratio_vs_raw_best": round(best["outbox"] / best["raw"], 3),
        "ratio_vs_raw_batch_median": round(median["outbox"] / median["raw_batch"], 3),
        "ratio_validated_no_db_vs_raw_median": round(median["validated_no_db"] / median["raw"], 3),
        "operator_sync_events_measured": len(sync_msgs),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "goal": ">= 1.0x ProduceToTopicOperator (synchronous=False, its fastest setting); raw loop for information",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(os.environ.get("ERASURE_LOCAL", ROOT / ".local")) / "bench" / "outbox.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
