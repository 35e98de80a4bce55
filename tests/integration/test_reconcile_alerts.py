"""Alert recording and delivery against the real tracking store: dedupe, concurrent deliverers, retries,
and the Deadline Alert callback (called directly here; the scheduler run is in test_deadline.py)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from erasure.alerts import AlertError, deliver_pending, raise_team_alert, record_alert
from erasure.db import transaction
from tests.helpers.alert_receivers import webhook_receiver
from tests.helpers.reconcile_data import build_catalog, fetch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_same_dedupe_key_is_recorded_once(tracking_db: str) -> None:
    with transaction(tracking_db) as cur:
        assert record_alert(
            cur, dedupe_key="k1", kind="task_escalated", team="crm", channel="log:", message="m"
        )
        assert not record_alert(
            cur, dedupe_key="k1", kind="task_escalated", team="crm", channel="log:", message="m"
        )
    assert len(fetch(tracking_db, "SELECT * FROM erasure.alert")) == 1


def test_unknown_team_and_bad_channel_are_clear_errors(tracking_db: str, tmp_path: Path) -> None:
    cat = build_catalog(tmp_path, "http://127.0.0.1:9")
    with transaction(tracking_db) as cur:
        with pytest.raises(AlertError, match="unknown team 'nobody'"):
            raise_team_alert(cur, cat, team="nobody", dedupe_key="k", kind="x", message="m")
        with pytest.raises(AlertError, match="channel 'carrier-pigeon'"):
            record_alert(cur, dedupe_key="k", kind="x", team="crm", channel="carrier-pigeon", message="m")


def test_concurrent_deliverers_send_each_alert_once(tracking_db: str) -> None:
    with webhook_receiver() as hook:
        with transaction(tracking_db) as cur:
            for i in range(12):
                record_alert(
                    cur,
                    dedupe_key=f"c{i}",
                    kind="task_escalated",
                    team="crm",
                    channel=f"webhook:{hook.url}",
                    message="m",
                )
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(deliver_pending(tracking_db))) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.sent for r in results) == 12
        keys = [p["idempotency_key"] for p in hook.posts]
        assert sorted(keys) == sorted(f"c{i}" for i in range(12))  # each exactly once
        assert deliver_pending(tracking_db).sent == 0


def test_send_gives_up_after_max_attempts(tracking_db: str) -> None:
    with transaction(tracking_db) as cur:
        record_alert(
            cur, dedupe_key="dead", kind="x", team="crm", channel="webhook:http://127.0.0.1:9/x", message="m"
        )
    for _ in range(3):
        assert deliver_pending(tracking_db, max_send_attempts=2).sent == 0
    row = fetch(tracking_db, "SELECT send_attempts, sent_at, send_error FROM erasure.alert")[0]
    assert row["send_attempts"] == 2 and row["sent_at"] is None and row["send_error"]


def test_deadline_callback_records_and_sends_one_alert(
    tracking_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The triggerer's callback (plugins/erasure_callbacks.py) with the context Airflow passes."""
    monkeypatch.syspath_prepend(str(ROOT / "plugins"))
    sys.modules.pop("erasure_callbacks", None)
    import erasure_callbacks

    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        monkeypatch.setenv("ERASURE_CATALOG", str(tmp_path / "catalog.yaml"))
        context = {
            "dag_run": {"dag_id": "erasure_dispatch", "dag_run_id": "scheduled__2026-01-01T00:00:00+00:00"},
            "deadline": {"id": "0197-abc", "deadline_time": "2026-01-01T00:10:00+00:00"},
        }
        for _ in range(2):
            key = asyncio.run(erasure_callbacks.deadline_missed(context=context, interval_s=600))
        assert key == "deadline_missed:erasure_dispatch:scheduled__2026-01-01T00:00:00+00:00:0197-abc"
        erasure_callbacks.deadline_missed_sync(context=context, team="crm", interval_s=600)
        rows = fetch(tracking_db, "SELECT * FROM erasure.alert")
        assert len(rows) == 1 and rows[0]["team"] == cat.pipeline_owner and rows[0]["sent_at"] is not None
        assert len(hook.posts) == 1 and hook.posts[0]["path"] == "/alerts/privacy"
        assert hook.posts[0]["body"]["details"]["dag_id"] == "erasure_dispatch"
