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
        # a request changed status -> the asset that triggers erasure_event_dataset is updated
        assert _states(run) == {"requests_changed": "success", "announce_tracking_change": "success"}
        assert _tracking_events(run.run_id) == [{"completed": 1, "failed": 0, "started": 0, "reopened": 0}]

        # nothing changed since -> no asset event, no alert again
        again = dag.test()
        assert again.state == "success", again.state
        assert _states(again) == {"requests_changed": "success", "announce_tracking_change": "skipped"}
        assert _tracking_events(again.run_id) == []
        assert len(hook.bodies()) == 1


def _states(run) -> dict[str, str]:
    tis = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return {
        t: str(tis[t].value if hasattr(tis[t], "value") else tis[t])
        for t in ("requests_changed", "announce_tracking_change")
    }


def _tracking_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from erasure.event_dataset import TRACKING_ASSET_NAME

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == TRACKING_ASSET_NAME, AssetEvent.source_run_id == run_id)
        ).all()
        return [dict(r.extra) for r in rows]
