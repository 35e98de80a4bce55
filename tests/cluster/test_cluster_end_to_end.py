"""End to end on the cluster topology (``make test-cluster``; README "Scaling out").

The demo (``python -m erasure_demo.demo``: partners and warehouse seeded, requests through the REST API,
the scheduled DAGs driven until every request is finished) runs against the cluster topology started by
``scripts/cluster.sh up`` (CeleryExecutor with two workers, Spark standalone, three Kafka brokers at
RF 3 / min.insync.replicas 2). While requests are in flight a Celery worker and a Kafka broker are
killed (SIGKILL; their supervisors start them again), then the other worker and another broker. The
demo's own expectations must hold (exit 0), and the tracking store must show nothing lost (every
request finished, every task succeeded, every Kafka event acknowledged, the audit chain intact) and
nothing done twice (one success per task, one completion per request, one matched ack per event, one
outbox row per task attempt).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.environ.get("ERASURE_TOPOLOGY") != "cluster",
        reason="needs the cluster topology: make test-cluster (scripts/cluster.sh up)",
    ),
    pytest.mark.timeout(3600),
]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ["bash", str(ROOT / "scripts" / "cluster.sh")]


def _query(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        rows = cur.fetchall()
    conn.close()
    return rows


def _kill(name: str) -> None:
    subprocess.run([*CLUSTER, "kill", name], check=True, timeout=60)
    print(f"killed {name} at {datetime.now(UTC):%H:%M:%S}", flush=True)


def _wait_in_flight(dsn: str, since: datetime, demo: subprocess.Popen, timeout: float = 900) -> None:
    """Until requests of this run have tasks being worked on (dispatched, awaiting an ack, in progress)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert demo.poll() is None, "the demo ended before anything was in flight"
        rows = _query(
            dsn,
            "SELECT count(*) FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id "
            "WHERE r.received_at >= %s AND t.status IN ('in_progress', 'awaiting_ack', 'succeeded')",
            (since,),
        )
        if rows[0][0] > 0:
            return
        time.sleep(2)
    pytest.fail("no task of this run was in flight within the timeout")


def _running_catalog() -> str | None:
    """ERASURE_CATALOG of the running scheduler (its supervised child's environment)."""
    run = Path(os.environ["ERASURE_LOCAL"]) / "run" / "airflow-scheduler.state"
    child = ""
    for line in run.read_text().splitlines() if run.exists() else []:
        if line.startswith("child_pid="):
            child = line.split("=", 1)[1].strip()
    if not child:
        return None
    try:
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"ERASURE_CATALOG="):
            return item.split(b"=", 1)[1].decode()
    return None


def test_erasure_end_to_end_survives_a_killed_celery_worker_and_kafka_broker(tmp_path: Path) -> None:
    from erasure.catalog import load_catalog
    from erasure.settings import get_settings

    settings = get_settings()
    # the demo (this process's catalog) and the running Airflow must agree on the targets: make
    # test-cluster starts the cluster with the test's catalog (one warehouse table, tests/cluster/catalog.py)
    running = _running_catalog()
    assert running in (None, os.environ.get("ERASURE_CATALOG")), (
        f"the running cluster uses the catalog {running}, this test {os.environ.get('ERASURE_CATALOG')}: "
        "restart it (make cluster-down test-cluster)"
    )
    warehouse = [t.name for t in load_catalog().targets if t.kind == "warehouse_delta"]
    print(f"warehouse tables in this run: {warehouse}")
    assert warehouse, "the cluster test needs a warehouse table (the Spark standalone path)"
    assert settings.kafka_replication_factor == 3 and settings.kafka_min_insync_replicas == 2
    assert os.environ["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert settings.spark_master.startswith("spark://")
    dsn = settings.require_tracking_dsn()
    since = _query(dsn, "SELECT now()")[0][0]
    # the demo's output outlives pytest's temporary folders (kept next to the cluster's own logs)
    log = Path(os.environ.get("ERASURE_LOCAL") or tmp_path) / "logs" / "cluster-test-demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "erasure_demo.demo",
                "--customers",
                "4",
                "--warehouse-rows",
                "20000",
                "--no-canary",
                "--outage-seconds",
                "20",
                "--timeout-min",
                "40",
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            _wait_in_flight(dsn, since, demo)
            _kill("celery-worker-1")
            _kill("kafka-2")
            time.sleep(45)
            _kill("celery-worker-2")
            _kill("kafka-3")
            rc = demo.wait(timeout=3000)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    text = log.read_text()
    print(text[-6000:])
    assert rc == 0, f"the demo's expectations failed (exit {rc}); see its output above"

    # nothing lost
    open_ = _query(
        dsn,
        "SELECT id, status FROM erasure.request WHERE received_at >= %s "
        "AND status NOT IN ('completed', 'held', 'rejected')",
        (since,),
    )
    assert not open_, f"requests not finished: {open_}"
    not_done = _query(
        dsn,
        "SELECT t.id, t.target, t.status FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id "
        "WHERE r.received_at >= %s AND r.status = 'completed' AND t.status <> 'succeeded'",
        (since,),
    )
    assert not not_done, f"tasks of completed requests not succeeded: {not_done}"
    unacked = _query(
        dsn,
        "SELECT o.event_id FROM erasure.outbox o JOIN erasure.task t ON t.id = o.task_id "
        "JOIN erasure.request r ON r.id = t.request_id WHERE r.received_at >= %s AND t.status = 'succeeded' "
        "AND NOT EXISTS (SELECT 1 FROM erasure.outbox o2 WHERE o2.task_id = o.task_id AND o2.acked_at IS NOT NULL)",
        (since,),
    )
    assert not unacked, f"Kafka tasks succeeded without an acknowledged event: {unacked}"
    completed = _query(
        dsn, "SELECT count(*) FROM erasure.request WHERE received_at >= %s AND status = 'completed'", (since,)
    )[0][0]
    assert completed >= 4

    # nothing twice
    twice = {
        "task succeeded twice": "SELECT task_id, count(*) FROM erasure.event_log e JOIN erasure.request r "
        "ON r.id = e.request_id WHERE r.received_at >= %s AND e.event_type = 'task_succeeded' "
        "GROUP BY task_id HAVING count(*) > 1",
        "request completed twice": "SELECT e.request_id, count(*) FROM erasure.event_log e JOIN erasure.request r "
        "ON r.id = e.request_id WHERE r.received_at >= %s AND e.event_type = 'request_completed' "
        "GROUP BY e.request_id HAVING count(*) > 1",
        "ack matched twice": "SELECT a.event_id, count(*) FROM erasure.ack_log a JOIN erasure.outbox o "
        "ON o.event_id = a.event_id JOIN erasure.task t ON t.id = o.task_id JOIN erasure.request r "
        "ON r.id = t.request_id WHERE r.received_at >= %s AND a.status = 'matched' "
        "GROUP BY a.event_id HAVING count(*) > 1",
        "two outbox rows for one attempt": "SELECT o.task_id, o.attempt, count(*) FROM erasure.outbox o "
        "JOIN erasure.task t ON t.id = o.task_id JOIN erasure.request r ON r.id = t.request_id "
        "WHERE r.received_at >= %s GROUP BY o.task_id, o.attempt HAVING count(*) > 1",
    }
    for what, sql in twice.items():
        rows = _query(dsn, sql, (since,))
        assert not rows, f"{what}: {rows}"

    # the audit chain over the event log is intact after the kills
    audit = subprocess.run(
        [sys.executable, "-m", "erasure.cli", "audit", "verify"], capture_output=True, text=True, timeout=600
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr

    # the kills happened and the supervisors brought the processes back
    status = subprocess.run([*CLUSTER, "status"], capture_output=True, text=True, timeout=60).stdout
    for name in ("celery-worker-1", "celery-worker-2", "kafka-2", "kafka-3"):
        line = next(ln for ln in status.splitlines() if ln.startswith(name))
        assert "running" in line and "restarts 0" not in line, line
    print(f"{completed} requests completed at {datetime.now(UTC).isoformat()}")
