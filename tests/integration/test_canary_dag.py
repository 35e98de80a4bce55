"""The erasure_canary DAG, run with ``dag.test()`` against real partner services and the session's
tracking DB: seed -> request (delay 0) -> verify; a later run verifies; a failing canary fails the run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from erasure.db import transaction
from erasure.settings import get_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SYNC = {"crm_contacts", "billing_profiles", "support_desk"}


@pytest.fixture
def sync_world(tmp_path: Path, monkeypatch):
    """Sync partners on free ports and a catalog (ERASURE_CATALOG) holding only them."""
    from erasure.catalog import load_catalog
    from erasure_demo.partners.http_service import PartnerServer

    data = load_catalog(ROOT / "include" / "catalog").model_dump()
    servers = {}
    targets = []
    for t in data["targets"]:
        if t["name"] not in SYNC:
            continue
        servers[t["name"]] = PartnerServer(t["name"], tmp_path / f"{t['name']}.db").start()
        t["sync_api"] = {**t["sync_api"], "base_url": servers[t["name"]].url, "max_retries": 1}
        t["retry_backoff_minutes"] = 0.001
        targets.append(t)
    data["targets"] = targets
    data["resolvers"], data["identifier_types"] = [], []  # only the sync targets: no identity graph
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("ERASURE_CATALOG", str(path))
    yield servers, load_catalog(path)
    for s in servers.values():
        s.close()


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "erasure_canary.py"))
    assert bag.import_errors == {}
    return bag.dags["erasure_canary"]


def _erase(dsn: str, cat) -> None:
    from erasure import dispatch, reconcile

    for t in cat.of_kind("sync_api"):
        for b in dispatch.plan_batches(dsn, cat, t.name):
            dispatch.run_batch(
                dsn,
                cat,
                t.name,
                b["task_ids"],
                claim_key=f"dagtest/{t.name}/{b['batch']}",
                settings=get_settings(),
            )
    reconcile.reconcile(dsn, cat)


def test_canary_dag_seeds_requests_and_verifies(tracking_db, sync_world):
    servers, cat = sync_world
    dag = _dag()
    run = dag.test(run_conf={"delay_minutes": 0, "count": 1})
    assert run.state == "success"
    with transaction(tracking_db) as cur:
        cur.execute("SELECT subject_id, request_id, verified_at FROM erasure.canary_subject")
        (subj,) = cur.fetchall()
        cur.execute(
            "SELECT status, is_canary, source FROM erasure.request WHERE id=%s", (subj["request_id"],)
        )
        req = cur.fetchone()
    assert subj["subject_id"].startswith("canary_") and subj["verified_at"] is None
    assert req["is_canary"] and req["source"] == "canary" and req["status"] == "in_progress"
    for s in servers.values():
        assert s.service.store.get(subj["subject_id"]) is not None

    _erase(tracking_db, cat)
    run = dag.test(run_conf={"count": 0})
    assert run.state == "success"
    with transaction(tracking_db) as cur:
        cur.execute("SELECT result FROM erasure.canary_subject")
        assert [r["result"] for r in cur.fetchall()] == ["pass"]
        cur.execute("SELECT count(*) AS n FROM erasure.canary_check WHERE passed")
        assert cur.fetchone()["n"] == len(SYNC)


def test_canary_dag_run_fails_when_a_partner_keeps_data(tracking_db, sync_world):
    servers, cat = sync_world
    servers["billing_profiles"].service.faults.update({"silent_delete_failure": True})
    dag = _dag()
    assert dag.test(run_conf={"delay_minutes": 0, "count": 1}).state == "success"
    # the pipeline's own verification refuses the partner's word: retried until escalated
    for _ in range(60):
        _erase(tracking_db, cat)
        with transaction(tracking_db) as cur:
            cur.execute("SELECT count(*) AS n FROM erasure.request WHERE status = 'in_progress'")
            if cur.fetchone()["n"] == 0:
                break
        time.sleep(0.25)
    run = dag.test(run_conf={"count": 0})
    assert run.state == "failed"
    with transaction(tracking_db) as cur:
        cur.execute("SELECT team, target FROM erasure.alert WHERE kind='canary_failed'")
        assert [(r["team"], r["target"]) for r in cur.fetchall()] == [("billing", "billing_profiles")]


def test_seed_retry_finishes_the_same_canaries(tracking_db, sync_world):
    """A seed task retried after a partner outage completes its canaries instead of making new ones."""
    from datetime import timedelta

    from erasure import canary

    servers, cat = sync_world
    servers["support_desk"].stop()  # connection refused
    with pytest.raises(canary.CanaryError, match="support_desk"):
        canary.seed_subjects(tracking_db, cat, settings=get_settings(), run_id="run-1", delay=timedelta(0))
    servers["support_desk"].start()
    (again,) = canary.seed_subjects(
        tracking_db, cat, settings=get_settings(), run_id="run-1", delay=timedelta(0)
    )
    assert sorted(again["seeded"]) == sorted(SYNC) and again["errors"] == []
    with transaction(tracking_db) as cur:
        cur.execute("SELECT count(*) AS n FROM erasure.canary_subject")
        assert cur.fetchone()["n"] == 1
        cur.execute("SELECT count(*) AS n FROM erasure.canary_check")
        assert cur.fetchone()["n"] == len(SYNC)
