"""The erasure_reconcile DAG under ``dag.test()`` against the session's tracking store and the repo catalog
(team channels from the environment: the privacy team's webhook points at a real local receiver)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers.alert_receivers import webhook_receiver
from tests.helpers.reconcile_data import fetch, make_request

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = {"http_status": 204}


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(ROOT / "dags" / "erasure_reconcile.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["erasure_reconcile"]


def test_reconcile_dag_completes_requests_and_alerts_sla(
    tracking_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_receiver() as hook:
        monkeypatch.setenv("ERASURE_ALERT_WEBHOOK_PRIVACY", hook.url)
        done = make_request(
            tracking_db,
            {
                "crm_contacts": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
                "support_desk": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
            },
            kinds={"support_desk": "sync_api"},
        )
        late = make_request(
            tracking_db,
            {"billing_profiles": {"status": "in_progress", "attempts": 1}},
            due_in=timedelta(hours=-1),
        )
        dag = _dag()
        assert dag.deadline and dag.max_active_runs == 1
        run = dag.test()
        assert run.state == "success", run.state
        st = {r["id"]: r["status"] for r in fetch(tracking_db, "SELECT id, status FROM erasure.request")}
        assert st == {done["id"]: "completed", late["id"]: "in_progress"}
        assert [b["kind"] for b in hook.bodies()] == ["sla_breached"]
        assert "billing_profiles" in hook.bodies()[0]["message"]
        # (re-runs changing nothing is covered in test_reconcile.py without the DAG overhead)
