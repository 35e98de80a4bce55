"""The Kafka outbox tasks of ``erasure_dispatch`` and the ``erasure_acks`` DAG under ``dag.test()``, with a
test catalog (unique topics) and a real demo partner process."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path

import pytest

from erasure_demo.partners.kafka_partner import KafkaPartner
from tests.helpers.db import query
from tests.integration._outbox_support import kafka_catalog, seed_kafka_tasks

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(ROOT / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


@pytest.fixture
def kafka_env(tracking_db, unique_topic, tmp_path, monkeypatch):
    events, acks = unique_topic("events"), unique_topic("acks")
    path, cat = kafka_catalog(tmp_path / "catalog", events, acks, {"recs": None})
    monkeypatch.setenv("ERASURE_CATALOG", str(path))  # the DAG files read it at parse time, tasks at run time
    # the partner signs its acks with its key; the acks DAG reads the same key from its connection
    key = secrets.token_hex(32)
    monkeypatch.setenv("ERASURE_ACK_KEY_RECS", key)
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_ACK_RECS", json.dumps({"conn_type": "generic", "password": key}))
    return tracking_db, cat, tmp_path


def test_dispatch_publishes_and_acks_dag_records(kafka_env, kafka_bootstrap):
    dsn, cat, tmp = kafka_env
    seed_kafka_tasks(dsn, ["recs"], 5)
    dispatch = _dag("erasure_dispatch")
    assert {"kafka_enqueue", "kafka_publish"} <= set(dispatch.task_dict)
    with KafkaPartner(
        cat.target("recs"), data_dir=tmp / "partners", group_id=f"p-{uuid.uuid4().hex[:6]}"
    ) as partner:
        run = dispatch.test()
        assert run.state == "success", run.state
        out = query(dsn, "SELECT count(*)::int AS n, count(published_at)::int AS p FROM erasure.outbox")[0]
        assert out == {"n": 5, "p": 5}
        deadline = time.monotonic() + 60
        while partner.stats().get("acks", 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert partner.stats()["acks"] == 5

    acks_dag = _dag("erasure_acks")
    assert acks_dag.max_active_runs == 1 and acks_dag.doc_md and acks_dag.tags
    run = acks_dag.test()
    assert run.state == "success", run.state
    st = query(dsn, "SELECT status, count(*)::int AS n FROM erasure.task GROUP BY status")
    assert st == [{"status": "succeeded", "n": 5}]
    assert query(dsn, "SELECT count(*)::int AS n FROM erasure.ack_log WHERE status = 'matched'")[0]["n"] == 5


def test_failed_delivery_fails_the_publish_task(kafka_env, kafka_bootstrap, monkeypatch):
    dsn, cat, _ = kafka_env
    seed_kafka_tasks(dsn, ["recs"], 2)
    query(dsn, "UPDATE erasure.task SET status = 'awaiting_ack'")  # already enqueued rows:
    query(
        dsn,
        "INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload) "
        "SELECT gen_random_uuid(), t.id, %s, 'customer:' || r.subject_id, '{}'::jsonb "
        "FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id",
        (f"missing.{uuid.uuid4().hex[:8]}",),
    )
    # valid events for a topic that does not exist (auto-create is off): every delivery fails
    query(
        dsn,
        """UPDATE erasure.outbox o SET payload = jsonb_build_object(
               'event_id', o.event_id, 'type', 'erasure.requested', 'schema_version', 1,
               'subject', jsonb_build_object('type', 'customer', 'id', r.subject_id), 'target', 'recs',
               'request_id', r.id, 'issued_at', now(), 'attempt', 1)
             FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id WHERE t.id = o.task_id""",
    )
    conn = {"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000}}
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_KAFKA", json.dumps(conn))
    dag = _dag("erasure_dispatch")
    dag.task_dict["kafka_publish"].retries = 0
    run = dag.test()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["kafka_publish"] == "failed" and states["kafka_enqueue"] == "success"
    assert query(dsn, "SELECT count(*)::int AS n FROM erasure.outbox WHERE published_at IS NULL")[0]["n"] == 2
