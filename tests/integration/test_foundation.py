"""The real parts: Postgres migrations, Kafka broker, Spark with the fetched Delta jars, Airflow."""

from __future__ import annotations

import os
import uuid

import psycopg2
import pytest

from erasure.tracking import downgrade, upgrade

pytestmark = pytest.mark.integration

TABLES = {
    "request",
    "rejected_request",
    "task",
    "outbox",
    "ack_log",
    "event_log",
    "intake",
    "legal_hold",
    "alert",
    "canary_subject",
    "canary_check",
    "audit_head",
    "receipt",
    "operator_action",
    "review",
    "identity",
    "resolution",
    "tombstone",
    "restore",
}


def _tables(dsn: str) -> set[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'erasure'")
        return {r[0] for r in cur.fetchall()} - {"alembic_version"}


def test_migrations_apply_and_roll_back_cleanly(pg_dsn):
    base = pg_dsn.rpartition("/")[0]
    name = f"erasure_mig_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{base}/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{base}/{name}"
    try:
        upgrade(dsn)
        assert _tables(dsn) == TABLES
        upgrade(dsn)  # idempotent: already at head
        downgrade(dsn)
        assert _tables(dsn) == set()
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE nspname = 'erasure'"
            )
            assert cur.fetchone()[0] == 0
        upgrade(dsn)
        assert _tables(dsn) == TABLES
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_status_change_writes_event_log_and_guard_blocks_regression(tracking_db):
    from erasure.db import transaction
    from erasure.tracking import transition_task

    with transaction(tracking_db) as cur:
        cur.execute(
            "INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status, due_at)"
            " VALUES ('ext-1', 'customer', 'cus_abcd', 'test', 'cli', 'in_progress', now() + interval '30 days')"
            " RETURNING id"
        )
        rid = cur.fetchone()["id"]
        cur.execute(
            "INSERT INTO erasure.task (request_id, target, kind) VALUES (%s, 'crm_contacts', 'sync_api') RETURNING id",
            (rid,),
        )
        tid = cur.fetchone()["id"]
    with transaction(tracking_db) as cur:
        assert transition_task(cur, tid, "in_progress", ["pending"])
        assert transition_task(cur, tid, "succeeded", ["in_progress"], evidence={"http_status": 204})
        # a late replay of the dispatch step must not move it backwards
        assert not transition_task(cur, tid, "in_progress", ["pending", "failed"])
        cur.execute("SELECT status, evidence FROM erasure.task WHERE id = %s", (tid,))
        row = cur.fetchone()
        assert row["status"] == "succeeded" and row["evidence"] == {"http_status": 204}
        cur.execute(
            "SELECT event_type FROM erasure.event_log WHERE request_id = %s ORDER BY occurred_at", (rid,)
        )
        assert [r["event_type"] for r in cur.fetchall()] == [
            "request_received",
            "task_created",
            "task_dispatched",
            "task_succeeded",
        ]


def test_open_request_is_unique_per_subject(tracking_db):
    from erasure.db import transaction

    sql = (
        "INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status, due_at)"
        " VALUES (%s, 'customer', 'cus_dupe1', 'test', 'cli', 'in_progress', now())"
    )
    with transaction(tracking_db) as cur:
        cur.execute(sql, ("a",))
    with pytest.raises(psycopg2.errors.UniqueViolation), transaction(tracking_db) as cur:
        cur.execute(sql, ("b",))


def test_kafka_produce_and_consume_on_real_broker(kafka_bootstrap, unique_topic):
    from erasure.smoke import check_kafka

    topic = unique_topic("foundation", partitions=1)
    out = check_kafka(kafka_bootstrap, topic=topic)
    assert out["topic"] == topic and out["offset"] == 0
    out2 = check_kafka(kafka_bootstrap, topic=topic)
    assert out2["offset"] == 1


def test_delta_round_trip_with_fetched_jars(spark, tmp_path):
    from delta.tables import DeltaTable

    jars = spark.sparkContext.getConf().get("spark.jars")
    assert "delta-spark_4.2_2.13" in jars and "delta-storage" in jars
    assert not spark.sparkContext.getConf().get("spark.jars.packages", "")
    path = str(tmp_path / "t")
    spark.createDataFrame(
        [(i, f"cus_{i:05d}") for i in range(50)], "id int, customer_id string"
    ).write.format("delta").save(path)
    DeltaTable.forPath(spark, path).delete("id < 10")
    assert spark.read.format("delta").load(path).count() == 40
    assert spark.read.format("delta").option("versionAsOf", 0).load(path).count() == 50
    ops = [r.operation for r in DeltaTable.forPath(spark, path).history().collect()]
    assert ops == ["DELETE", "WRITE"]


def test_smoke_dag_under_dag_test(pg_dsn):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.join(os.environ["ERASURE_ROOT"], "dags", "erasure_smoke.py"))
    run = bag.dags["erasure_smoke"].test()
    assert run.state == "success"


def test_smoke_dag_through_rest_api_v2(airflow_api):
    dag_id = "erasure_smoke"
    airflow_api.wait_for_dag(dag_id)
    airflow_api.unpause(dag_id)
    run_id = f"rest_{uuid.uuid4().hex[:8]}"
    r = airflow_api.trigger(dag_id, run_id=run_id)
    assert r.status_code == 200, r.text
    run = airflow_api.wait_for_run(dag_id, run_id, timeout=300)
    states = {ti["task_id"]: ti["state"] for ti in airflow_api.task_instances(dag_id, run_id)}
    assert run["state"] == "success", states
    assert states == {"postgres": "success", "kafka": "success", "spark": "success"}


def test_rest_api_rejects_missing_token(airflow_api):
    import httpx

    r = httpx.get(f"{airflow_api.base_url}/api/v2/dags", timeout=30)
    assert r.status_code in (401, 403)
