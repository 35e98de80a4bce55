"""Outbox on the real broker and Postgres: enqueue in one transaction with the task's status change,
publish once per due task, mark published only after the broker acknowledged, fail loudly otherwise."""

from __future__ import annotations

import json
import uuid

import pytest

from erasure import outbox
from erasure.db import transaction
from erasure.events import parse_event
from tests.helpers.db import query
from tests.integration._outbox_support import kafka_catalog, read_topic, seed_kafka_tasks

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tracking_db, unique_topic, tmp_path):
    events, acks = unique_topic("events"), unique_topic("acks")
    _, cat = kafka_catalog(tmp_path, events, acks, {"mkt": None, "recs": None})
    return tracking_db, cat, events, acks


def test_events_published_once_per_due_task(setup, kafka_bootstrap):
    dsn, cat, events, _ = setup
    subjects = seed_kafka_tasks(dsn, ["mkt", "recs"], 12)
    # not due: a held request, a task scheduled later, a sync task, a target outside the catalog
    seed_kafka_tasks(dsn, ["mkt"], 1, request_status="held")
    later = seed_kafka_tasks(dsn, ["recs"], 1)
    query(dsn, "UPDATE erasure.task t SET next_attempt_at = now() + interval '1 hour' FROM erasure.request r "
               "WHERE r.id = t.request_id AND r.subject_id = %s", (later[0],))  # fmt: skip
    seed_kafka_tasks(dsn, ["crm"], 1, kind="sync_api")
    seed_kafka_tasks(dsn, ["unknown_target"], 1)

    first = outbox.enqueue_due(dsn, cat)
    assert first.enqueued == 24 and first.by_target == {"mkt": 12, "recs": 12}
    assert outbox.enqueue_due(dsn, cat).enqueued == 0  # idempotent: nothing is due any more

    tasks = query(dsn, "SELECT t.id, t.status, t.attempts, t.evidence, o.event_id::text AS event_id, o.payload "
                       "FROM erasure.task t JOIN erasure.outbox o ON o.task_id = t.id")  # fmt: skip
    assert len(tasks) == 24
    for t in tasks:  # the outbox row and the status change were written together
        assert t["status"] == "awaiting_ack" and t["attempts"] == 1
        assert t["evidence"]["event_id"] == t["event_id"] == t["payload"]["event_id"]
        ev = parse_event(t["payload"])
        assert ev.attempt == 1 and ev.subject.id in subjects
    logged = query(dsn, "SELECT count(*) AS n FROM erasure.event_log WHERE event_type = 'event_published'")
    assert logged[0]["n"] == 24

    res = outbox.publish_pending(dsn, kafka_bootstrap, batch_size=7)
    assert res.published == 24 and res.by_topic == {events: 24}
    assert outbox.publish_pending(dsn, kafka_bootstrap).published == 0  # nothing left: published once

    rows = {r["event_id"]: r for r in query(dsn, "SELECT event_id::text, published_at, publish_count, "
                                                 "kafka_partition, kafka_offset, message_key FROM erasure.outbox")}  # fmt: skip
    msgs = read_topic(kafka_bootstrap, events)
    assert len(msgs) == 24
    for m in msgs:
        ev = parse_event(m.value())
        row = rows[str(ev.event_id)]
        assert row["publish_count"] == 1 and row["published_at"] is not None
        assert (row["kafka_partition"], row["kafka_offset"]) == (m.partition(), m.offset())
        assert m.key().decode() == row["message_key"] == f"customer:{ev.subject.id}"
        assert dict(m.headers()) == {
            "event_id": str(ev.event_id).encode(),
            "type": b"erasure.requested",
            "schema_version": b"1",
        }
    assert len({parse_event(m.value()).event_id for m in msgs}) == 24
    # all events of one subject (two targets) share the key and hence the partition
    by_subject: dict[str, set[int]] = {}
    for m in msgs:
        by_subject.setdefault(m.key().decode(), set()).add(m.partition())
    assert all(len(p) == 1 for p in by_subject.values())


def test_failed_delivery_raises_and_leaves_row_unpublished(setup, kafka_bootstrap):
    dsn, cat, events, _ = setup
    seed_kafka_tasks(dsn, ["mkt"], 3)
    outbox.enqueue_due(dsn, cat)
    missing = f"missing.{uuid.uuid4().hex[:8]}"  # auto.create.topics.enable=false: delivery must fail
    bad = query(dsn, "UPDATE erasure.outbox SET topic = %s WHERE event_id = (SELECT event_id FROM erasure.outbox "
                     "ORDER BY created_at LIMIT 1) RETURNING event_id::text", (missing,))[0]["event_id"]  # fmt: skip
    cfg = {"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000}
    with pytest.raises(outbox.PublishError) as ei:
        outbox.publish_pending(dsn, cfg)
    assert ei.value.failures[0][0] == bad and ei.value.published == 2
    assert "delivery failed" in str(ei.value)
    rows = {
        r["event_id"]: r
        for r in query(dsn, "SELECT event_id::text, published_at, publish_count FROM erasure.outbox")
    }
    assert rows[bad]["published_at"] is None and rows[bad]["publish_count"] == 0
    assert all(r["publish_count"] == 1 for e, r in rows.items() if e != bad)
    assert len(read_topic(kafka_bootstrap, events)) == 2


def test_invalid_payload_is_not_published(setup, kafka_bootstrap):
    dsn, cat, events, _ = setup
    seed_kafka_tasks(dsn, ["mkt"], 2)
    outbox.enqueue_due(dsn, cat)
    query(dsn, "UPDATE erasure.outbox SET payload = jsonb_set(payload, '{schema_version}', '99') "
               "WHERE event_id = (SELECT event_id FROM erasure.outbox ORDER BY created_at LIMIT 1)")  # fmt: skip
    with pytest.raises(outbox.PublishError, match="field 'schema_version': unsupported version 99"):
        outbox.publish_pending(dsn, kafka_bootstrap)
    assert [
        r["n"] for r in query(dsn, "SELECT count(*) AS n FROM erasure.outbox WHERE published_at IS NULL")
    ] == [1]
    assert len(read_topic(kafka_bootstrap, events)) == 1


def test_replay_keeps_the_event_id(setup, kafka_bootstrap):
    dsn, cat, events, _ = setup
    seed_kafka_tasks(dsn, ["recs"], 2)
    eids = outbox.enqueue_due(dsn, cat).event_ids
    outbox.publish_pending(dsn, kafka_bootstrap)
    # reconcile's way: mark in its own transaction, the publisher re-sends
    with transaction(dsn) as cur:
        assert outbox.mark_for_replay(cur, [eids[0]], reason="test") == [eids[0]]
    assert outbox.publish_pending(dsn, kafka_bootstrap).published == 1
    # the helper: mark + publish now
    assert outbox.republish(dsn, [eids[1]], kafka_bootstrap).published == 1
    counts = {
        r["event_id"]: r["publish_count"]
        for r in query(dsn, "SELECT event_id::text, publish_count FROM erasure.outbox")
    }
    assert counts == {eids[0]: 2, eids[1]: 2}
    msgs = read_topic(kafka_bootstrap, events)
    assert sorted(str(parse_event(m.value()).event_id) for m in msgs) == sorted(eids * 2)
    # same bytes each time: partners see an identical event
    by_id: dict[str, set[bytes]] = {}
    for m in msgs:
        by_id.setdefault(str(parse_event(m.value()).event_id), set()).add(m.value())
    assert all(len(v) == 1 for v in by_id.values())
    replayed = query(dsn, "SELECT details FROM erasure.event_log WHERE event_type = 'event_replayed'")
    assert {r["details"]["kafka_event_id"] for r in replayed} == set(eids)
    # an acked event is never replayed
    query(dsn, "UPDATE erasure.outbox SET acked_at = now(), ack = %s WHERE event_id = %s",
          (json.dumps({"outcome": "erased"}), eids[0]))  # fmt: skip
    with transaction(dsn) as cur:
        assert outbox.mark_for_replay(cur, [eids[0]]) == []


def test_bad_input_is_named(setup, kafka_bootstrap):
    dsn, cat, _, _ = setup
    with pytest.raises(ValueError, match=r"targets: \[.*\] are not enabled kafka targets"):
        outbox.enqueue_due(dsn, cat, targets=["nope"])
    with pytest.raises(ValueError, match="batch_size"):
        outbox.publish_pending(dsn, kafka_bootstrap, batch_size=0)
    with pytest.raises(ValueError, match="bootstrap.servers"):
        outbox.publish_pending(dsn, {"linger.ms": 1})
    # the delivery guarantee cannot be configured away
    cfg = outbox.producer_config({"bootstrap.servers": "x:1", "acks": "1", "enable.idempotence": False})
    assert cfg["acks"] == "all" and cfg["enable.idempotence"] is True
