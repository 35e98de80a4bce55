"""Deadline Alerts: every scheduled DAG carries one, and a missed deadline fires the callback in a REAL
scheduler run (the stack's scheduler + triggerer) that records one alert in the stack's tracking store."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest

from tests.conftest import MAIN_TRACKING_DSN

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEDULED_DAGS = (
    "erasure_reconcile",
    "erasure_dispatch",
    "erasure_warehouse",
    "erasure_event_dataset",
    "erasure_intake_scheduled",
)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.mark.parametrize("dag_id", [*SCHEDULED_DAGS, "erasure_deadline_selftest"])
def test_scheduled_dags_have_a_queued_at_deadline_routed_to_our_callback(dagbag, dag_id: str) -> None:
    from airflow.sdk import AsyncCallback, DeadlineReference

    if not (ROOT / "dags" / f"{dag_id}.py").exists():
        pytest.skip(f"dags/{dag_id}.py does not exist (yet)")
    assert not dagbag.import_errors, dagbag.import_errors
    dag = dagbag.get_dag(dag_id)
    assert dag is not None, f"{dag_id} not in the DagBag"
    assert dag.deadline, f"{dag_id} has no deadline"
    alert = dag.deadline[0]
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "erasure_callbacks.deadline_missed"


def _deadline_alert(run_id: str) -> dict | None:
    conn = psycopg2.connect(MAIN_TRACKING_DSN)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "SELECT * FROM erasure.alert WHERE dedupe_key LIKE %s",
                (f"deadline_missed:erasure_deadline_selftest:{run_id}:%",),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    assert len(rows) <= 1, rows
    return dict(rows[0]) if rows else None


def test_missed_deadline_fires_callback_in_a_real_scheduler_run(airflow_api) -> None:
    dag_id = "erasure_deadline_selftest"
    airflow_api.wait_for_dag(dag_id, timeout=180)
    airflow_api.unpause(dag_id)  # schedule=None: nothing runs unless triggered
    run_id = f"deadline_test_{uuid.uuid4().hex[:10]}"
    r = airflow_api.trigger(dag_id, conf={"sleep_s": 6}, run_id=run_id)
    assert r.status_code in (200, 201), r.text

    deadline = time.monotonic() + 240
    alert = None
    while time.monotonic() < deadline:
        alert = _deadline_alert(run_id)
        if alert is not None and alert["sent_at"] is not None:
            break
        time.sleep(2)
    assert alert is not None, f"no deadline_missed alert for run {run_id} in the stack's erasure.alert"
    assert alert["kind"] == "deadline_missed" and alert["team"] == "privacy"
    assert alert["details"]["dag_id"] == dag_id and alert["details"]["run_id"] == run_id
    assert alert["sent_at"] is not None, alert

    run = airflow_api.wait_for_run(dag_id, run_id, timeout=180)
    assert run["state"] == "success"
    assert _deadline_alert(run_id)["id"] == alert["id"]  # still exactly one
