"""Transactional outbox for Kafka-kind targets: enqueue, publish, consume acknowledgements.

Three idempotent steps, each safe to re-run or to run concurrently:

1. ``enqueue_due``: for every due ``pending`` task of a Kafka target, in ONE transaction, write an
   ``erasure.outbox`` row (a new event id, the validated event as payload) and move the task
   ``pending -> awaiting_ack`` (guarded ``transition_tasks``: one UPDATE per chunk of tasks, one event
   row per task by the statement-level trigger). Either both happen or neither.
2. ``publish_pending``: produce every outbox row with ``published_at IS NULL`` (idempotent producer,
   ``acks=all``, keyed by subject), wait for every delivery report, and mark a row published
   (``published_at``, partition, offset, ``publish_count + 1``) only after the broker acknowledged it —
   one UPDATE per batch once its delivery reports are in.
   A failed or missing delivery report raises ``PublishError`` after the delivered rows were marked:
   nothing is marked that the broker did not take, and the failing rows stay unpublished for the next run.
3. ``consume_acks``: read ``erasure.acks`` in a bounded poll, record every message in
   ``erasure.ack_log`` (matched | duplicate | unknown | malformed | mismatch | unauthenticated: an ack
   not signed with its target's key, ``erasure.ack_auth``, is never applied), and for a matched ack set
   ``outbox.acked_at/ack`` and move the task to ``succeeded`` (erased / not_found) or ``failed``
   (failed) with the ack as evidence — a poll's acks in one transaction with a fixed number of
   statements (:func:`_apply_acks`). Unknown and malformed acks are recorded and skipped. Consumer
   offsets are committed only after the database transaction; a redelivered message (crash between
   the two) is recognised by ``ack_log``'s unique (topic, partition, offset) and not applied twice.

Replay (issue "reconcile"): re-publishing an event keeps its event id. ``mark_for_replay`` sets
``published_at = NULL`` on unacked rows (and logs ``event_replayed``); the next ``publish_pending``
re-sends them with the same id and increments ``publish_count``. ``republish`` does both at once.

Delivery is at-least-once end to end: the idempotent producer removes duplicates caused by its own
retries (e.g. a broker restart mid-publish), but a publisher that dies after the broker acked and
before the database commit re-sends the row on its next run. Partners therefore dedupe by event id,
and the pipeline records a second ack for the same event as ``duplicate``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import psycopg2.extras

from erasure import privacy
from erasure.ack_auth import AckKeys, authenticate, normalise_keys
from erasure.catalog import Catalog, Target
from erasure.db import transaction
from erasure.events import SchemaError, new_event, parse_ack, parse_event
from erasure.fanout import missing_note, not_found_evidence
from erasure.identity import IdentityCodec
from erasure.intake import identity_codec
from erasure.resolution import identity_of
from erasure.targets.base import verification
from erasure.targets.kafka import KafkaSpec
from erasure.tracking.store import Transition, transition_tasks
from erasure.vocab import AckOutcome, AckStatus, EventType, TargetKind, TaskStatus, VerificationOutcome

log = logging.getLogger(__name__)

ACK_GROUP_ID = "erasure-pipeline-acks"
DEFAULT_ACK_TOPIC = "erasure.acks"
RAW_LIMIT = 4000
ACK_VERIFY_CONCURRENCY = 16
"""Lookups after success acks made at once per batch (threads sharing one HTTP client): one at a time,
with a new client each, the consumer applied ~12-15 acks/s, the partners' pace is hundreds (issue 20)."""
"""At most this many characters of a malformed ack are kept in ack_log.raw."""

# Settings the publisher always uses, whatever the connection says (the delivery guarantee).
ENFORCED_PRODUCER_CONFIG: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 200000,
    "message.timeout.ms": 300000,  # keep retrying (idempotently) through a broker restart
    "retry.backoff.ms": 200,
}
DEFAULT_CONSUMER_CONFIG: dict[str, Any] = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": True,
    "session.timeout.ms": 45000,
}


class PublishError(RuntimeError):
    """At least one outbox row was not acknowledged by the broker; those rows stay unpublished."""

    def __init__(self, failures: list[tuple[str, str]], published: int) -> None:
        self.failures = failures
        self.published = published
        shown = "; ".join(f"{eid}: {err}" for eid, err in failures[:5])
        more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(
            f"{len(failures)} outbox event(s) were not delivered to Kafka ({published} were): {shown}{more}"
        )


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered within the metadata timeout: the ack consumer fails instead of finishing
    green with nothing read (its DAG run fails, which alerts the pipeline owner)."""


def kafka_client_config(kafka: str | Mapping[str, Any]) -> dict[str, Any]:
    """A bootstrap string or a full librdkafka config (e.g. an Airflow connection's extra) -> dict."""
    if isinstance(kafka, str):
        if not kafka:
            raise ValueError("kafka: bootstrap servers must not be empty")
        return {"bootstrap.servers": kafka}
    cfg = dict(kafka)
    if not cfg.get("bootstrap.servers"):
        raise ValueError("kafka config: 'bootstrap.servers' is missing")
    return cfg


def producer_config(kafka: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The publisher's producer config: defaults < caller's config < overrides < enforced guarantees."""
    cfg = {**DEFAULT_PRODUCER_CONFIG, **kafka_client_config(kafka), **overrides, **ENFORCED_PRODUCER_CONFIG}
    return cfg


def kafka_targets(catalog: Catalog, targets: Iterable[str] | None = None) -> list[Target]:
    """Enabled Kafka-kind targets of the catalog (optionally only the named ones)."""
    return catalog.of_kind(TargetKind.KAFKA, targets)


# ------------------------------------------------------------------------------------ enqueue
@dataclass
class EnqueueResult:
    enqueued: int = 0
    invalid: int = 0
    event_ids: list[str] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)
    """The tasks of ``event_ids``, in the same order."""
    by_target: dict[str, int] = field(default_factory=dict)


def enqueue_due(
    dsn: str,
    catalog: Catalog,
    *,
    targets: Iterable[str] | None = None,
    task_ids: Iterable[int] | None = None,
    limit: int = 10000,
    now: datetime | None = None,
    codec: IdentityCodec | None = None,
) -> EnqueueResult:
    """Write an outbox row for each due pending Kafka task and move it to awaiting_ack, atomically.

    A request with a resolved identity (docs/identity.md) is sent with the identifiers of the types the
    target is erased by: one of them as ``subject.id`` (version 1), several as ``identifiers``
    (version 2, :mod:`erasure.events`); none found: the task succeeds as ``not_found``. ``codec``
    unseals them (default: the default settings' key files).

    Due: task status ``pending``, ``next_attempt_at <= now``, its request open (received or
    in_progress; a held request is never dispatched). Rows are locked with SKIP LOCKED, so
    concurrent runs never enqueue a task twice. A task whose event cannot be built (e.g. a subject
    type the event schema rejects) is moved to ``failed`` with the reason instead of blocking others.
    """
    if limit < 1:
        raise ValueError(f"limit: must be >= 1, got {limit}")
    ts = {t.name: t for t in kafka_targets(catalog, targets)}
    result = EnqueueResult()
    if not ts:
        return result
    with transaction(dsn) as cur:
        cur.execute(
            """
            SELECT t.id AS task_id, t.target, t.attempts, r.id AS request_id, r.subject_type, r.subject_id
              FROM erasure.task t
              JOIN erasure.request r ON r.id = t.request_id
             WHERE t.kind = 'kafka' AND t.status = 'pending'
               AND t.next_attempt_at <= COALESCE(%(now)s, now())
               AND t.target = ANY(%(targets)s)
               AND (%(ids)s::bigint[] IS NULL OR t.id = ANY(%(ids)s::bigint[]))
               AND r.status IN ('received', 'in_progress')
             ORDER BY t.next_attempt_at, t.id
             LIMIT %(limit)s
               FOR UPDATE OF t SKIP LOCKED
            """,
            {
                "now": now,
                "targets": list(ts),
                "ids": None if task_ids is None else list(task_ids),
                "limit": limit,
            },
        )
        rows = cur.fetchall()
        changes: list[Transition] = []
        built: list[tuple[dict[str, Any], Any, KafkaSpec]] = []
        codec = identity_codec(catalog, codec)
        identities = (
            identity_of(cur, codec, sorted({r["request_id"] for r in rows}))
            if codec is not None and rows
            else {}
        )
        for row in rows:
            target = ts[row["target"]]
            spec = target.spec_as(KafkaSpec)
            subject_id, identifiers = row["subject_id"], None
            ids = identities.get(row["request_id"])
            if ids:
                typed = {t: ids[t] for t in target.identity_keys if ids.get(t)}
                if not typed:
                    changes.append(
                        Transition(
                            row["task_id"],
                            TaskStatus.SUCCEEDED,
                            (TaskStatus.PENDING,),
                            evidence=not_found_evidence(target, missing_note(target)),
                        )
                    )
                    continue
                subject_id = next(iter(typed.values()))[0]
                if sum(len(v) for v in typed.values()) > 1 or next(iter(typed)) != target.identity_key:
                    identifiers = typed
            try:
                ev = new_event(
                    subject_type=row["subject_type"],
                    subject_id=subject_id,
                    target=row["target"],
                    request_id=row["request_id"],
                    attempt=row["attempts"] + 1,
                    identifiers=identifiers,
                )
            except SchemaError as exc:
                changes.append(
                    Transition(
                        row["task_id"],
                        TaskStatus.FAILED,
                        (TaskStatus.PENDING,),
                        last_error=f"cannot build erasure event: {exc}",
                    )
                )
                result.invalid += 1
                continue
            changes.append(
                Transition(
                    row["task_id"],
                    TaskStatus.AWAITING_ACK,
                    (TaskStatus.PENDING,),
                    increment_attempts=True,
                    evidence={
                        "event_id": str(ev.event_id),
                        "topic": spec.topic,
                        "enqueued_at": ev.issued_at.isoformat(),
                    },
                )
            )
            built.append((row, ev, spec))
        # one guarded UPDATE per chunk (the event log by the statement-level trigger, migration 0006)
        moved = transition_tasks(cur, changes)
        outbox_rows = []
        for task, ev, spec in built:
            if task["task_id"] not in moved:  # cannot happen under the row lock; kept as a guard
                continue
            outbox_rows.append(
                (ev.event_id, task["task_id"], spec.topic, ev.key, ev.to_json(), ev.attempt, ev.issued_at)
            )
            result.event_ids.append(str(ev.event_id))
            result.task_ids.append(task["task_id"])
            result.by_target[task["target"]] = result.by_target.get(task["target"], 0) + 1
        if outbox_rows:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload, attempt, created_at) "
                "VALUES %s",
                outbox_rows,
                template="(%s, %s, %s, %s, %s::jsonb, %s, %s)",
                page_size=1000,
            )
        result.enqueued = len(outbox_rows)
    return result


# ------------------------------------------------------------------------------------ publish
@dataclass
class PublishResult:
    published: int = 0
    batches: int = 0
    seconds: float = 0.0
    by_topic: dict[str, int] = field(default_factory=dict)


Message = tuple[str, bytes, bytes, list[tuple[str, bytes]], Any]  # topic, value, key, headers, on_delivery


_SELECT_UNPUBLISHED = """
    SELECT o.event_id::text AS event_id, o.topic, o.message_key, o.payload::text AS payload
      FROM erasure.outbox o
     WHERE o.published_at IS NULL AND o.acked_at IS NULL
       AND (%(ids)s::uuid[] IS NULL OR o.event_id = ANY(%(ids)s::uuid[]))
     ORDER BY o.created_at
     LIMIT %(n)s
       FOR UPDATE SKIP LOCKED
"""
# One table, ordered like the partial index ``outbox_unpublished``: an index scan that stops after n rows
# whatever the statistics say. Rows are written only together with the task's move to awaiting_ack and
# re-armed only by replay, so the task's status is not re-checked here (a join made the plan depend on
# fresh statistics: minutes per batch right after a large enqueue). Publishing an event whose task has
# meanwhile finished is harmless: the partner dedupes by event id and the ack is recorded.

_MARK_PUBLISHED = """
    UPDATE erasure.outbox o
       SET published_at = now(), publish_count = o.publish_count + 1,
           kafka_partition = v.p, kafka_offset = v.o
      FROM unnest(%s::uuid[], %s::int[], %s::bigint[]) AS v(eid, p, o)
     WHERE o.event_id = v.eid
"""


@dataclass
class _Batch:
    """One batch in flight: its transaction holds the rows' locks until its reports are in."""

    conn: Any
    rows: list[tuple[str, str, str, str]]
    sent: list[tuple[str, str]] = field(default_factory=list)  # (event id, topic)
    failures: list[tuple[str, str]] = field(default_factory=list)
    reports: dict[str, tuple[Any, int, int]] = field(default_factory=dict)

    def on_delivery(self, eid: str, err: Any, msg: Any) -> None:
        self.reports[eid] = (err, msg.partition(), msg.offset())


def publish_pending(
    dsn: str,
    kafka: str | Mapping[str, Any],
    *,
    limit: int | None = None,
    batch_size: int = 2000,
    pipeline_depth: int = 3,
    flush_timeout_s: float = 330.0,
    event_ids: Iterable[str | uuid.UUID] | None = None,
    producer: Any = None,
) -> PublishResult:
    """Publish unpublished outbox rows; mark each published only after its delivery report succeeded.

    Batches are pipelined: while a finisher thread waits for batch N's delivery reports and marks
    its rows (its transaction holds the rows' locks until then), the caller's thread reads and
    produces batch N+1 on another connection (SKIP LOCKED keeps the batches disjoint).

    Raises ``PublishError`` if any delivery failed or was not reported within ``flush_timeout_s``
    (rows delivered are marked published; the failed ones stay unpublished for the next run).
    ``event_ids`` restricts the run to those rows (used by tests and ``republish``).
    """
    from confluent_kafka import Producer

    from erasure.db import connect

    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if pipeline_depth < 1:
        raise ValueError(f"pipeline_depth: must be >= 1, got {pipeline_depth}")
    started = time.monotonic()
    own_producer = producer is None
    if own_producer:
        producer = Producer(producer_config(kafka))
    ids = [str(e) for e in event_ids] if event_ids is not None else None
    result = PublishResult()
    conns: list[Any] = []
    inflight: deque[tuple[_Batch, Future[None]]] = deque()
    failures: list[tuple[str, str]] = []
    selected = 0
    exhausted = False
    finisher = ThreadPoolExecutor(max(1, pipeline_depth - 1), thread_name_prefix="outbox-finish")
    try:
        while True:
            if not exhausted and not failures and len(inflight) < pipeline_depth:
                n = batch_size if limit is None else min(batch_size, limit - selected)
                if n <= 0:
                    exhausted = True
                    continue
                if not conns:
                    conns.append(connect(dsn))
                conn = conns.pop()
                try:
                    batch = _start_batch(conn, producer, n, ids)
                except BaseException:
                    conn.close()
                    raise
                selected += len(batch.rows)
                exhausted = len(batch.rows) < n
                if not batch.rows:
                    conn.rollback()
                    conns.append(conn)
                    continue
                fut = finisher.submit(_finish_batch, batch, producer, flush_timeout_s, result)
                inflight.append((batch, fut))
                continue
            if not inflight:
                break
            batch, fut = inflight.popleft()
            fut.result()
            failures.extend(batch.failures)
            conns.append(batch.conn)
    finally:
        finisher.shutdown(wait=True)  # a batch still in flight is finished (marked or rolled back)
        for b, _ in inflight:
            conns.append(b.conn)
        for c in conns:
            c.close()
        if own_producer:
            producer.flush(5)
        result.seconds = time.monotonic() - started
    if failures:
        for eid, err in failures[:20]:
            log.error("outbox event %s not published: %s", eid, err)
        raise PublishError(failures, result.published)
    return result


def _start_batch(conn: Any, producer: Any, n: int, ids: list[str] | None) -> _Batch:
    """Lock up to ``n`` unpublished rows (SKIP LOCKED: not those of a batch in flight) and produce them.

    The value sent is the stored payload (validated again here: producing side), so a replay sends
    exactly the same bytes; the key is the subject.
    """
    with conn.cursor() as cur:
        cur.execute(_SELECT_UNPUBLISHED, {"ids": ids, "n": n})
        batch = _Batch(conn, cur.fetchall())
    messages: list[Message] = []
    for eid, topic, key, payload in batch.rows:
        try:
            ev = parse_event(payload)
            if str(ev.event_id) != eid:
                raise SchemaError(
                    "event", [f"field 'event_id': payload has {ev.event_id}, outbox row has {eid}"]
                )
        except SchemaError as exc:
            batch.failures.append((eid, str(exc)))
            continue
        messages.append(
            (topic, payload.encode(), key.encode(), ev.headers(), partial(batch.on_delivery, eid))
        )
        batch.sent.append((eid, topic))
    _produce_all(producer, messages)
    return batch


def _produce_all(producer: Any, messages: list[Message]) -> None:
    """Queue the messages, one ``produce()`` each (``produce_batch`` cannot send headers); when the local
    queue is full, serve delivery reports and retry. Any other error to queue a message raises."""
    from confluent_kafka import KafkaException

    for topic, value, key, headers, on_delivery in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: serve delivery reports, then retry
            except KafkaException as exc:
                raise RuntimeError(f"cannot queue a message to {topic}: {exc}") from exc


def _finish_batch(batch: _Batch, producer: Any, timeout_s: float, result: PublishResult) -> None:
    """Wait for the batch's delivery reports, mark the delivered rows, commit (finisher thread)."""
    try:
        deadline = time.monotonic() + timeout_s
        while len(batch.reports) < len(batch.sent) and time.monotonic() < deadline:
            producer.poll(0.05)
        ok_ids: list[str] = []
        parts: list[int] = []
        offs: list[int] = []
        by_topic: dict[str, int] = {}
        for eid, topic in batch.sent:
            rep = batch.reports.get(eid)
            if rep is None:
                batch.failures.append((eid, f"no delivery report within {timeout_s:.0f}s"))
            elif rep[0] is not None:
                batch.failures.append((eid, f"delivery failed: {rep[0]}"))
            else:
                ok_ids.append(eid)
                parts.append(rep[1])
                offs.append(rep[2])
                by_topic[topic] = by_topic.get(topic, 0) + 1
        if ok_ids:
            with batch.conn.cursor() as cur:
                # index lookups by event id, never a scan of the whole outbox per batch (2x faster at 20k
                # rows, and the outbox only grows); SET LOCAL ends with this batch's transaction
                cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
                cur.execute(_MARK_PUBLISHED, (ok_ids, parts, offs))
        batch.conn.commit()
    except BaseException:
        batch.conn.rollback()
        raise
    result.published += len(ok_ids)
    result.batches += 1
    for t, c in by_topic.items():
        result.by_topic[t] = result.by_topic.get(t, 0) + c


def mark_for_replay(
    cur: Any, event_ids: Iterable[str | uuid.UUID], *, reason: str = "ack timeout"
) -> list[str]:
    """Mark unacked, published outbox rows to be published again (same event id). Runs in the caller's
    transaction; logs ``event_replayed`` per row. Returns the event ids actually marked."""
    ids = [str(e) for e in event_ids]
    if not ids:
        return []
    cur.execute(
        """
        WITH marked AS (
            UPDATE erasure.outbox o SET published_at = NULL
             WHERE o.event_id = ANY(%(ids)s::uuid[]) AND o.acked_at IS NULL AND o.published_at IS NOT NULL
            RETURNING o.event_id, o.task_id, o.attempt, o.publish_count
        )
        INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt, details)
        SELECT t.request_id, t.id, t.target, %(event_type)s, t.status, m.attempt,
               jsonb_build_object('kafka_event_id', m.event_id, 'publish_count', m.publish_count,
                                  'reason', %(reason)s::text)
          FROM marked m JOIN erasure.task t ON t.id = m.task_id
        RETURNING details ->> 'kafka_event_id' AS event_id
        """,
        {"ids": ids, "reason": reason, "event_type": EventType.EVENT_REPLAYED},
    )
    return [r["event_id"] if isinstance(r, dict) else r[0] for r in cur.fetchall()]


def republish(
    dsn: str, event_ids: Iterable[str | uuid.UUID], kafka: str | Mapping[str, Any], *, reason: str = "replay"
) -> PublishResult:
    """Replay: mark the given unacked events for re-publication and publish them now (same event ids)."""
    ids = [str(e) for e in event_ids]
    with transaction(dsn) as cur:
        mark_for_replay(cur, ids, reason=reason)
    return publish_pending(dsn, kafka, event_ids=ids)


# ------------------------------------------------------------------------------------ acks
@dataclass
class AckResult:
    messages: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in AckStatus})
    """Messages recorded per :class:`AckStatus` (keys are the statuses' values)."""
    already_seen: int = 0
    """Messages redelivered after they were recorded (crash between DB commit and offset commit)."""
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    seconds: float = 0.0


def ack_topics(catalog: Catalog) -> list[str]:
    topics = sorted({t.spec_as(KafkaSpec).ack_topic for t in catalog.of_kind(TargetKind.KAFKA)})
    return topics or [DEFAULT_ACK_TOPIC]


def consume_acks(
    dsn: str,
    kafka: str | Mapping[str, Any],
    *,
    catalog: Catalog | None = None,
    topics: list[str] | None = None,
    group_id: str = ACK_GROUP_ID,
    max_messages: int = 100_000,
    max_seconds: float = 120.0,
    idle_timeout_s: float = 3.0,
    batch_size: int = 500,
    consumer_config: Mapping[str, Any] | None = None,
    ack_keys: AckKeys | None = None,
    metadata_timeout_s: float = 15.0,
    eof_grace_s: float = 0.0,
) -> AckResult:
    """Consume acks in a bounded poll and apply them to the tracking store (see module doc).

    ``ack_keys`` (``target -> key`` or ``target -> [current, previous]``, :mod:`erasure.ack_auth`): an
    ack counts only when it is signed with a key of the target it names; any other ack (unsigned,
    wrong key, a target without a key, or no keys given at all) is recorded as ``unauthenticated``.

    Raises :class:`BrokerUnavailable` when no broker answers a metadata request within
    ``metadata_timeout_s``. Stops when every assigned partition reached its end and no message came for
    ``eof_grace_s`` (partners still acking send more within it: the run drains at their pace), after
    ``idle_timeout_s`` without messages (once assigned), after ``max_messages`` or after ``max_seconds``. Offsets are committed
    synchronously after each batch's database transaction committed.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    topics = topics or (ack_topics(catalog) if catalog is not None else [DEFAULT_ACK_TOPIC])
    targets = {t.name: t for t in catalog.of_kind(TargetKind.KAFKA)} if catalog is not None else {}
    keys = normalise_keys(ack_keys)
    cfg = {
        **DEFAULT_CONSUMER_CONFIG,
        **kafka_client_config(kafka),
        **(consumer_config or {}),
        "group.id": group_id,
        "enable.auto.commit": False,
    }
    consumer = Consumer(cfg)
    try:  # a broker must answer before we poll: "nothing to read" and "no broker" look alike otherwise
        consumer.list_topics(timeout=metadata_timeout_s)
    except KafkaException as exc:
        consumer.close()
        raise BrokerUnavailable(
            f"Kafka unreachable at {cfg.get('bootstrap.servers')}: no broker answered within "
            f"{metadata_timeout_s:g} s ({exc.args[0] if exc.args else exc})"
        ) from None
    assigned: set[tuple[str, int]] = set()
    at_eof: set[tuple[str, int]] = set()

    activity = [time.monotonic()]  # last message or (re)assignment: the idle timeout counts from there

    def on_assign(c: Any, parts: list[Any]) -> None:
        assigned.update((p.topic, p.partition) for p in parts)
        activity[0] = time.monotonic()

    def on_revoke(c: Any, parts: list[Any]) -> None:
        for p in parts:
            assigned.discard((p.topic, p.partition))
            at_eof.discard((p.topic, p.partition))

    consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
    result = AckResult()
    started = time.monotonic()
    try:
        while result.messages < max_messages and time.monotonic() - started < max_seconds:
            msgs = consumer.consume(min(batch_size, max_messages - result.messages), timeout=0.5)
            batch = []
            for m in msgs:
                err = m.error()
                if err is None:
                    batch.append(m)
                    at_eof.discard(_topic_partition(m))
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(_topic_partition(m))
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("ack consumer: %s", err)
            if batch:
                _apply_ack_batch(dsn, batch, targets, keys, result)
                # offsets only after the DB transaction committed (at-least-once, deduped by ack_log)
                last: dict[tuple[str, int], int] = {}
                for m in batch:
                    tp = _topic_partition(m)
                    last[tp] = max(last.get(tp, -1), cast(int, m.offset()))
                consumer.commit(
                    offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()], asynchronous=False
                )
                activity[0] = time.monotonic()
            elif assigned:
                idle = time.monotonic() - activity[0]
                if (assigned <= at_eof and idle >= eof_grace_s) or idle > max(idle_timeout_s, eof_grace_s):
                    break
            elif time.monotonic() - started > max(idle_timeout_s, 30.0):
                break  # never got an assignment (e.g. no such topic): stop, it is not fatal
    finally:
        consumer.close()
        result.seconds = time.monotonic() - started
    return result


def _topic_partition(m: Any) -> tuple[str, int]:
    """A consumed message's (topic, partition); both are set on every message the consumer returns."""
    return cast(str, m.topic()), cast(int, m.partition())


@dataclass
class _AckMsg:
    """One consumed ack message and what the batch decided about it."""

    topic: str
    partition: int
    offset: int
    raw: bytes | None
    ack: Any = None
    auth: Any = None
    status: AckStatus = AckStatus.MALFORMED
    error: str | None = None
    row: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


_SELECT_ACKED_EVENTS = """
    SELECT o.event_id::text AS event_id, o.task_id, o.acked_at, o.attempt, t.target, t.status, t.attempts,
           r.subject_id, o.payload
      FROM erasure.outbox o JOIN erasure.task t ON t.id = o.task_id
      JOIN erasure.request r ON r.id = t.request_id
     WHERE o.event_id = ANY(%s::uuid[])
     ORDER BY o.event_id
       FOR UPDATE OF o, t
"""


def _apply_ack_batch(
    dsn: str, msgs: list[Any], targets: dict[str, Target], keys: dict[str, list[bytes]], result: AckResult
) -> None:
    """Apply one poll's acks in ONE transaction with a fixed number of statements (see
    :func:`_apply_acks`)."""
    with transaction(dsn) as cur:
        _apply_acks(cur, msgs, targets, keys, result)
        result.messages += len(msgs)


def _apply_acks(
    cur: Any, msgs: list[Any], targets: dict[str, Target], keys: dict[str, list[bytes]], result: AckResult
) -> None:
    """Match a batch of ack messages in bulk, in the caller's transaction.

    One query finds the messages already recorded (a redelivery after a crash between the commit and
    the offset commit), one locks the events they acknowledge (``FOR UPDATE``, event-id order), one
    inserts every message into ``ack_log`` (``ON CONFLICT DO NOTHING``: a concurrent consumer's copy is
    counted as already seen), one marks the matched events acknowledged (an ``ack_received`` event row
    each, by the outbox's row trigger), one moves their tasks (guarded
    :func:`transition_tasks`) and one notes on ``ack_log`` the acks whose task had moved on. A second ack
    for the same event in the same batch is a ``duplicate``, as it would be in the next batch.
    """
    items: list[_AckMsg] = []
    for m in msgs:
        it = _AckMsg(m.topic(), m.partition(), m.offset(), m.value())
        try:
            it.ack = parse_ack(it.raw)
        except SchemaError as exc:
            it.error = str(exc)
        if it.ack is not None:
            it.auth = authenticate(keys, it.ack.target, it.raw, m.headers())
            if not it.auth.ok:
                it.status, it.error = AckStatus.UNAUTHENTICATED, it.auth.reason
        items.append(it)
    if not items:
        return
    cur.execute(
        """SELECT a.topic, a.kafka_partition, a.kafka_offset FROM erasure.ack_log a
             JOIN unnest(%s::text[], %s::int[], %s::bigint[]) AS v(topic, p, o)
               ON a.topic = v.topic AND a.kafka_partition = v.p AND a.kafka_offset = v.o""",
        ([i.topic for i in items], [i.partition for i in items], [i.offset for i in items]),
    )
    seen = {_row_key(r) for r in cur.fetchall()}
    lookup = [
        i
        for i in items
        if i.key not in seen and i.ack is not None and i.status is not AckStatus.UNAUTHENTICATED
    ]
    rows: dict[str, dict[str, Any]] = {}
    if lookup:
        cur.execute(_SELECT_ACKED_EVENTS, (sorted({str(i.ack.event_id) for i in lookup}),))
        rows = {r["event_id"]: dict(r) for r in cur.fetchall()}
    acked_now: set[str] = set()
    for it in lookup:
        eid = str(it.ack.event_id)
        row = rows.get(eid)
        if row is None:
            it.status, it.error = AckStatus.UNKNOWN, "no outbox event with this event_id"
        elif row["target"] != it.ack.target:
            it.status, it.error = (
                AckStatus.MISMATCH,
                f"ack is for target '{it.ack.target}' but event {eid} was sent to '{row['target']}'",
            )
        elif row["acked_at"] is not None:
            it.status, it.error = (
                AckStatus.DUPLICATE,
                f"event already acknowledged at {row['acked_at'].isoformat()}",
            )
        elif eid in acked_now:
            it.status, it.error = AckStatus.DUPLICATE, "event already acknowledged (earlier in this batch)"
        else:
            it.status, it.row = AckStatus.MATCHED, row
            acked_now.add(eid)
    fresh = [i for i in items if i.key not in seen]
    inserted: set[tuple[str, int, int]] = set()
    if fresh:
        out = psycopg2.extras.execute_values(
            cur,
            "INSERT INTO erasure.ack_log (topic, kafka_partition, kafka_offset, event_id, target, outcome, status,"
            " error, raw) VALUES %s ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING"
            " RETURNING topic, kafka_partition, kafka_offset",
            [
                (
                    i.topic,
                    i.partition,
                    i.offset,
                    i.ack.event_id if i.ack else None,
                    i.ack.target if i.ack else None,
                    i.ack.outcome if i.ack else None,
                    i.status,
                    i.error,
                    _raw_text(i.raw)
                    if i.status in (AckStatus.MALFORMED, AckStatus.UNAUTHENTICATED)
                    else None,
                )
                for i in fresh
            ],  # fmt: skip
            template="(%s, %s, %s, %s::uuid, %s, %s, %s, %s, %s)",
            page_size=len(fresh),
            fetch=True,
        )
        inserted = {_row_key(r) for r in out}
    matched: list[_AckMsg] = []
    for it in items:
        if it.key not in inserted:
            result.already_seen += 1
            continue
        result.counts[it.status.value] += 1
        if it.status is AckStatus.MATCHED:
            matched.append(it)
        elif it.status is not AckStatus.DUPLICATE:
            log.warning("ack %s/%s@%s %s: %s", it.topic, it.partition, it.offset, it.status, it.error)
    if matched:
        _close_acked_tasks(cur, matched, targets, result)


def _row_key(r: Any) -> tuple[str, int, int]:
    vals = list(r.values()) if isinstance(r, dict) else list(r)
    return (str(vals[0]), int(vals[1]), int(vals[2]))


def _close_acked_tasks(
    cur: Any, matched: list[_AckMsg], targets: dict[str, Target], result: AckResult
) -> None:
    """The matched acks: events marked acknowledged (one UPDATE), their tasks moved (one guarded UPDATE)."""
    evidence: dict[str, dict[str, Any]] = {}
    for it in matched:
        assert it.row is not None
        evidence[str(it.ack.event_id)] = {
            "event_id": str(it.ack.event_id),
            "outcome": it.ack.outcome,
            "details": it.ack.details,
            "acked_at": it.ack.acked_at.isoformat(),
            "topic": it.topic,
            "partition": it.partition,
            "offset": it.offset,
            "attempt": it.row["attempt"],
            "authenticated": it.auth.reason if it.auth is not None else None,
        }
    cur.execute(
        """UPDATE erasure.outbox o SET acked_at = now(), ack = v.ack
             FROM unnest(%s::uuid[], %s::jsonb[]) AS v(eid, ack)
            WHERE o.event_id = v.eid""",
        (list(evidence), [json.dumps(e) for e in evidence.values()]),
    )
    changes: list[Transition] = []
    checks = _verify_acks(
        [
            (targets.get(it.row["target"]), _event_values(it.row), it.ack.outcome)
            for it in matched
            if it.row is not None and it.ack.outcome in AckOutcome.successes()
        ]
    )
    for it in matched:
        row, ack = it.row, it.ack
        assert row is not None
        values = _event_values(row)  # never in clear in the task's evidence or the audit log
        evidence_ack = privacy.scrub(evidence[str(ack.event_id)], values)
        target = targets.get(row["target"])
        backoff = target.retry_backoff_minutes if target else 5.0
        nxt = datetime.now(UTC) + timedelta(minutes=backoff * 2 ** max(row["attempts"] - 1, 0))
        verified = privacy.scrub(checks.popleft(), values) if ack.outcome in AckOutcome.successes() else None
        if verified is not None and verified.get("outcome") in VerificationOutcome.closing():
            changes.append(Transition(
                row["task_id"], TaskStatus.SUCCEEDED,
                (TaskStatus.AWAITING_ACK, TaskStatus.FAILED, TaskStatus.ESCALATED),
                evidence={"ack": evidence_ack, "verification": verified},
            ))  # fmt: skip
        elif (
            verified is not None
        ):  # the partner acked success but the lookup still finds (or cannot find out)
            ev: dict[str, Any] = {"ack": evidence_ack}
            if verified.get("outcome") == VerificationOutcome.FAILED:
                ev["verification"] = verified
                err = f"verification failed: partner '{ack.target}' acked '{ack.outcome}' but {verified['answer']}"
            else:
                err = f"verification could not be made after the ack: {verified['answer']}"
            changes.append(Transition(
                row["task_id"], TaskStatus.FAILED, (TaskStatus.AWAITING_ACK,),
                evidence=ev, last_error=err[:2000], next_attempt_at=nxt,
            ))  # fmt: skip
        else:
            changes.append(Transition(
                row["task_id"], TaskStatus.FAILED, (TaskStatus.AWAITING_ACK,), evidence={"ack": evidence_ack},
                last_error=privacy.scrub_text(
                    f"partner '{ack.target}' reported failure: {json.dumps(ack.details, default=str)[:1000]}",
                    values,
                ),
                next_attempt_at=nxt,
            ))  # fmt: skip
    # a task appears once per statement: acks of two events of one task (an old attempt's and a new
    # one's) in one poll are applied one after the other, in the order they were consumed
    waves: list[list[Transition]] = []
    for ch in changes:
        wave = next((w for w in waves if all(c.task_id != ch.task_id for c in w)), None)
        if wave is None:
            waves.append([ch])
        else:
            wave.append(ch)
    moved_by_wave = [transition_tasks(cur, w) for w in waves]
    unmoved: list[_AckMsg] = []
    wave_of = {id(c): i for i, w in enumerate(waves) for c in w}
    for it, ch in zip(matched, changes, strict=True):
        if ch.task_id not in moved_by_wave[wave_of[id(ch)]]:
            unmoved.append(it)
        elif ch.to_status == TaskStatus.SUCCEEDED:
            result.tasks_succeeded += 1
        else:
            result.tasks_failed += 1
    if unmoved:
        cur.execute(
            """UPDATE erasure.ack_log a SET error = v.err
                 FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[]) AS v(topic, p, o, err)
                WHERE a.topic = v.topic AND a.kafka_partition = v.p AND a.kafka_offset = v.o""",
            (
                [i.topic for i in unmoved],
                [i.partition for i in unmoved],
                [i.offset for i in unmoved],
                [f"task was '{i.row['status'] if i.row else '?'}'; status not changed" for i in unmoved],
            ),
        )


def _event_values(row: dict[str, Any]) -> list[str]:
    """The identifiers the acked event asked to erase (its payload), else the request's subject id."""
    payload = row.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("subject"), dict):
        out = [str(payload["subject"].get("id"))]
        for vs in (payload.get("identifiers") or {}).values():
            out.extend(str(v) for v in vs if str(v) not in out)
        return out
    return [str(row["subject_id"])]


def _verify_acks(
    work: list[tuple[Target | None, list[str], str]], concurrency: int = ACK_VERIFY_CONCURRENCY
) -> deque[dict[str, Any]]:
    """:func:`_verify_after_ack` for each ``(target, identifiers, outcome)`` of a batch, in order: up to
    ``concurrency`` lookups at once through one HTTP client (connections reused)."""
    if not work:
        return deque()
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=10.0, limits=limits) as client:
        if len(work) == 1 or concurrency <= 1:
            return deque(_verify_after_ack(t, ids, o, client) for t, ids, o in work)
        with ThreadPoolExecutor(min(concurrency, len(work)), thread_name_prefix="ack-verify") as pool:
            return deque(pool.map(lambda w: _verify_after_ack(w[0], w[1], w[2], client), work))


def _verify_after_ack(
    target: Target | None, subject_ids: list[str], outcome: str, client: Any = None
) -> dict[str, Any]:
    """``evidence.verification`` after a partner's success ack: its lookup (``kafka.lookup_url``) of
    every identifier the event carried when it can be asked, else ``not_verifiable`` with the reason
    (the ack is the only confirmation). A lookup that could not be made comes back with outcome
    ``error`` (the task is retried); one identifier still there fails the verification."""
    from erasure.targets import Context, adapter_for
    from erasure.targets.base import verification_of

    if target is None:
        return verification(
            VerificationOutcome.NOT_VERIFIABLE, "none", f"target no longer in the catalog; ack '{outcome}'"
        )
    adapter = adapter_for(target)
    nv = adapter.not_verifiable(target)
    if nv is not None:
        return {**nv, "answer": f"{nv['answer']}; the partner's ack '{outcome}' is the confirmation"}
    import httpx

    from erasure.settings import get_settings

    method = f"GET {target.name} lookup after ack '{outcome}' (404 = gone)"
    answers = []
    if client is None:
        with httpx.Client(timeout=10.0) as own:
            return _verify_after_ack(target, subject_ids, outcome, own)
    ctx = Context(settings=get_settings(), http=client)
    for subject_id in subject_ids:
        check = adapter.verify(ctx, target, subject_id)
        v = verification_of(check, method)
        if v is None:
            return {"outcome": "error", "answer": check.detail}
        if v["outcome"] != VerificationOutcome.VERIFIED or len(subject_ids) == 1:
            return v
        answers.append(check.detail)
    return verification(
        VerificationOutcome.VERIFIED, method, f"{len(subject_ids)} identifiers gone: " + "; ".join(answers)
    )


def _raw_text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return text[:RAW_LIMIT].replace("\x00", "\\u0000")
