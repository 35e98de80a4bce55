"""The erasure_event_dataset DAG under ``dag.test()``: builds the dataset from the session's tracking store,
produces its assets, and a failed GX validation fails the run at once (no retry) without writing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from erasure.db import transaction
from erasure.event_dataset import (
    EVENTS_ASSET_NAME,
    SUBJECTS_ASSET_NAME,
    TRACKING_ASSET_NAME,
    events_path,
    table_version,
)
from tests.integration.test_event_dataset import add_request, pg_events, seed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(ROOT / "dags" / "erasure_event_dataset.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["erasure_event_dataset"]


def test_event_dataset_dag_builds_and_a_gx_failure_fails_without_writing(
    spark, tracking_db, tmp_path, monkeypatch
):
    monkeypatch.setenv("ERASURE_DATASET_DIR", str(tmp_path))
    dag = _dag()
    assert dag.max_active_runs == 1 and not dag.catchup
    build = dag.get_task("build")
    assert {a.name for a in build.outlets} == {EVENTS_ASSET_NAME, SUBJECTS_ASSET_NAME}
    assert TRACKING_ASSET_NAME in repr(dag.timetable.asset_condition)

    seed(tracking_db)
    run = dag.test(run_conf={"full_refresh": True})
    assert run.state == "success", run.state
    ev = events_path(tmp_path)
    version = table_version(ev)
    assert DeltaTable(ev).to_pyarrow_table(columns=["event_id"]).num_rows == pg_events(tracking_db)

    with transaction(tracking_db) as cur:  # an event before its request was received: invalid
        add_request(cur, received_at=datetime.now(UTC) + timedelta(days=1))
    started = datetime.now(UTC)
    run = dag.test()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"build": "failed", "enforce_retention": "upstream_failed"}
    assert datetime.now(UTC) - started < timedelta(minutes=2)  # failed at once: no retry after retry_delay
    assert table_version(ev) == version
