"""A failed run of any pipeline DAG raises one alert (``on_failure_callback`` set by ``dag_kwargs``),
through the same notifiers and deduplicated per run. The alert self-test DAG is run with ``dag.test()``
(the real Airflow task runner and DAG-run state machine) against the session's tracking store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.alert_receivers import webhook_receiver
from tests.helpers.reconcile_data import fetch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FAILED = "SELECT kind, team, message, dedupe_key, sent_at FROM erasure.alert WHERE kind = 'dag_run_failed'"


def _selftest_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(ROOT / "dags" / "erasure_deadline_selftest.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["erasure_deadline_selftest"]


def test_failed_dag_run_raises_one_alert_per_run(tracking_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with webhook_receiver() as hook:
        monkeypatch.setenv("ERASURE_ALERT_WEBHOOK_PRIVACY", hook.url)
        monkeypatch.setenv("AIRFLOW_CONN_ERASURE_TRACKING", tracking_db)
        dag = _selftest_dag()
        assert dag.on_failure_callback is not None
        assert dag.test(run_conf={"sleep_s": 0}).state == "success"
        assert fetch(tracking_db, FAILED) == []  # a good run raises nothing

        run = dag.test(run_conf={"sleep_s": 0, "fail": True})
        assert run.state == "failed"
        alerts = fetch(tracking_db, FAILED)
        assert len(alerts) == 1, alerts
        a = alerts[0]
        assert a["team"] == "privacy" and a["sent_at"] is not None
        assert "erasure_deadline_selftest" in a["message"] and "outlast_the_deadline" in a["message"]
        assert a["dedupe_key"] == f"dag_run_failed:erasure_deadline_selftest:{run.run_id}"
        assert [b["kind"] for b in hook.bodies("dag_run_failed")] == ["dag_run_failed"]

        second = dag.test(run_conf={"sleep_s": 0, "fail": True})  # another failed run: its own alert
        assert second.state == "failed" and second.run_id != run.run_id
        assert len(fetch(tracking_db, FAILED)) == 2
