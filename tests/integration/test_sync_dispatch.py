"""Sync dispatch against real partner HTTP servers (our demo partners on free ports) and real Postgres.

Scenarios: happy path (also one full ``erasure_dispatch`` run with ``dag.test()``), 5xx storm then
recovery, permanent 4xx, 429 backpressure, partner down for a whole run then up, a batch killed
mid-way (no subject lost, none deleted twice), held requests untouched, Postgres-table targets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from erasure.dispatch import claim, plan_batches, run_batch
from erasure.settings import get_settings
from erasure_demo.partners.http_service import PartnerServer
from tests.helpers.sync_fixtures import create_requests, query, task_ids, tasks, write_catalog

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def partners(tmp_path):
    """Factory: ``partners("crm", "billing")`` -> {name: running PartnerServer}."""
    started: list[PartnerServer] = []

    def make(*names: str) -> dict[str, PartnerServer]:
        out = {}
        for n in names:
            srv = PartnerServer(n, tmp_path / "partners" / f"{n}.db").start()
            started.append(srv)
            out[n] = srv
        return out

    yield make
    for s in started:
        s.close()


def seed(srv: PartnerServer, ids: list[str]) -> None:
    httpx.post(f"{srv.url}/admin/seed", json={"subject_ids": ids}, timeout=30).raise_for_status()


def faults(srv: PartnerServer, **kw) -> None:
    httpx.put(f"{srv.url}/admin/faults", json=kw, timeout=10).raise_for_status()


def deletions(srv: PartnerServer) -> list[dict]:
    return httpx.get(f"{srv.url}/admin/deletions", timeout=30).json()["deletions"]


def run_all(dsn, cat, target, claim_key="test", **kw):
    """Plan + run every batch of one target (what one DAG run does); returns summaries."""
    return [
        run_batch(
            dsn,
            cat,
            target,
            b["task_ids"],
            claim_key=f"{claim_key}/{b['batch']}",
            settings=get_settings(),
            **kw,
        )
        for b in plan_batches(dsn, cat, target)
    ]


def succeeded_events(dsn: str) -> Counter:
    rows = query(dsn, "SELECT task_id FROM erasure.event_log WHERE event_type = 'task_succeeded'")
    return Counter(r[0] for r in rows)


def test_happy_path_and_rerun_skips(tracking_db, partners, tmp_path):
    p = partners("crm", "billing")
    subjects = [f"cus_{i:05d}" for i in range(250)]
    for s in p.values():
        seed(s, subjects)
    _, cat = write_catalog(tmp_path, {n: s.url for n, s in p.items()})
    create_requests(tracking_db, subjects, [("crm", "sync_api"), ("billing", "sync_api")])

    plan = plan_batches(tracking_db, cat, "crm")
    assert [len(b["task_ids"]) for b in plan] == [100, 100, 50] and plan[0]["of"] == 3
    assert all(isinstance(i, int) for b in plan for i in b["task_ids"])  # ids only, no subject ids
    capped = plan_batches(tracking_db, cat, "crm", max_batches=2)  # max_map_length: the rest waits
    assert [len(b["task_ids"]) for b in capped] == [100, 100] and capped[0]["of"] == 2

    for name in ("crm", "billing"):
        sums = run_all(tracking_db, cat, name)
        assert sum(x.succeeded for x in sums) == 250 and sum(x.failed for x in sums) == 0
    rows = tasks(tracking_db)
    assert {r["status"] for r in rows} == {"succeeded"}
    ev = rows[0]["evidence"]
    assert ev["http_status"] == 200 and ev["outcome"] == "deleted" and ev["response_id"].startswith("del_")
    assert ev["idempotency_key"] == f"erasure-{rows[0]['request_id']}-{rows[0]['id']}"
    assert ev["attempt"] == 1 and rows[0]["attempts"] == 1 and rows[0]["completed_at"] is not None
    v = ev["verification"]  # looked up after the delete: gone
    assert v["outcome"] == "verified" and "404" in v["answer"] and v["method"].startswith("GET ")
    assert v["verified_at"] >= ev["finished_at"]
    for s in p.values():
        assert httpx.get(f"{s.url}/subjects/{subjects[0]}").status_code == 404
        logged = deletions(s)
        assert len(logged) == 250 and {d["existed"] for d in logged} == {1}
        assert all(d["idempotency_key"].startswith("erasure-") for d in logged)

    # a re-run finds nothing due, and claiming the same ids again claims nothing
    assert plan_batches(tracking_db, cat, "crm") == []
    again = run_batch(
        tracking_db, cat, "crm", task_ids(tracking_db, "crm"), claim_key="again", settings=get_settings()
    )
    assert again.claimed == 0
    assert len(deletions(p["crm"])) == 250
    assert set(succeeded_events(tracking_db).values()) == {1}


def test_held_requests_are_never_touched(tracking_db, partners, tmp_path):
    p = partners("crm")
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url})
    create_requests(tracking_db, ["cus_held1", "cus_held2"], [("crm", "sync_api")], status="held")
    create_requests(tracking_db, ["cus_go"], [("crm", "sync_api")])
    plan = plan_batches(tracking_db, cat, "crm")
    assert sum(len(b["task_ids"]) for b in plan) == 1
    # even when handed the held ids directly, the claim refuses them
    summary = run_batch(
        tracking_db, cat, "crm", task_ids(tracking_db, "crm"), claim_key="k", settings=get_settings()
    )
    assert summary.claimed == 1
    by_subject = {r["subject_id"]: r for r in tasks(tracking_db)}
    assert by_subject["cus_held1"]["status"] == "pending" and by_subject["cus_go"]["status"] == "succeeded"
    assert [d["subject_id"] for d in deletions(p["crm"])] == ["cus_go"]


def test_5xx_storm_then_recovery(tracking_db, partners, tmp_path):
    p = partners("crm")
    subjects = [f"cus_s{i:03d}" for i in range(24)]
    seed(p["crm"], subjects)
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url}, target={"retry_backoff_minutes": 1})
    create_requests(tracking_db, subjects, [("crm", "sync_api")])

    faults(p["crm"], error_rate=1.0, error_status=503)
    [s1] = run_all(tracking_db, cat, "crm", "storm")
    assert s1.failed == 24 and s1.permanent == 0
    rows = tasks(tracking_db)
    assert {r["status"] for r in rows} == {"failed"} and {r["attempts"] for r in rows} == {1}
    assert all(r["last_error"].startswith("HTTP 503") for r in rows)
    assert rows[0]["evidence"]["calls"] == 3  # 1 + max_retries(2) inside the batch
    assert rows[0]["evidence"]["permanent"] is False
    assert all(r["next_attempt_at"] > r["updated_at"] for r in rows)  # backoff recorded
    assert plan_batches(tracking_db, cat, "crm") == []  # not due before the backoff elapsed

    faults(p["crm"], error_rate=0.0)
    backoff = query(tracking_db, "SELECT min(next_attempt_at - updated_at) FROM erasure.task")[0][0]
    assert backoff.total_seconds() >= 55  # retry_backoff_minutes: 1, first failure
    query(tracking_db, "UPDATE erasure.task SET next_attempt_at = now()")  # the minute has passed
    [s2] = run_all(tracking_db, cat, "crm", "recovered")
    assert s2.succeeded == 24
    rows = tasks(tracking_db)
    assert {r["status"] for r in rows} == {"succeeded"} and {r["attempts"] for r in rows} == {2}
    assert {r["last_error"] for r in rows} == {None} and rows[0]["evidence"]["attempt"] == 2
    events = query(
        tracking_db,
        "SELECT event_type, count(*) FROM erasure.event_log WHERE task_id IS NOT NULL GROUP BY 1",
    )
    assert dict(events) == {
        "task_created": 24,
        "task_dispatched": 48,
        "task_failed": 24,
        "task_retried": 24,  # dispatch taking a failed task again logs it as a retry first
        "task_succeeded": 24,
    }


def test_permanent_4xx_recorded_and_not_retried(tracking_db, partners, tmp_path):
    p = partners("crm")
    good, bad = [f"cus_ok{i}" for i in range(10)], ["bad_1", "bad_2"]
    seed(p["crm"], good + bad)
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url})
    create_requests(tracking_db, good + bad + ["cus_conflict"], [("crm", "sync_api")])
    faults(p["crm"], reject_pattern="^bad_", reject_status=422, subject_status={"cus_conflict": 409})

    [s] = run_all(tracking_db, cat, "crm")
    assert (s.succeeded, s.failed, s.permanent) == (11, 2, 2)
    by_subject = {r["subject_id"]: r for r in tasks(tracking_db)}
    b = by_subject["bad_1"]
    assert b["status"] == "failed" and b["attempts"] == 1
    assert b["evidence"]["http_status"] == 422 and b["evidence"]["permanent"] is True
    assert b["evidence"]["calls"] == 1  # never retried inside the batch
    assert "invalid_subject" in b["evidence"]["response_snippet"] and b["last_error"].startswith("HTTP 422")
    c = by_subject["cus_conflict"]
    assert c["status"] == "succeeded" and c["evidence"]["outcome"] == "conflict"

    time.sleep(0.1)  # past the backoff: still not dispatched again (reconcile escalates)
    assert plan_batches(tracking_db, cat, "crm") == []
    assert httpx.get(f"{p['crm'].url}/subjects/bad_1").status_code == 200  # data untouched


def test_429_backpressure_honours_retry_after(tracking_db, partners, tmp_path):
    p = partners("crm")
    subjects = [f"cus_r{i:03d}" for i in range(80)]
    seed(p["crm"], subjects)
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url}, sync={"concurrency": 8, "batch_size": 500})
    create_requests(tracking_db, subjects, [("crm", "sync_api")])
    faults(p["crm"], rate_limit_per_s=40, retry_after_s=0.25)

    t0 = time.monotonic()
    [s] = run_all(tracking_db, cat, "crm")
    elapsed = time.monotonic() - t0
    assert s.succeeded == 80 and s.failed == 0
    stats = httpx.get(f"{p['crm'].url}/admin/stats").json()["responses"]
    assert stats["200"] == 80 and stats.get("429", 0) > 0
    # 80 deletes through a 40/s bucket (burst 40) need >= ~1 s: the client waited, not hammered
    assert elapsed >= 0.9
    # 160 calls (each delete is followed by its verification lookup, through the same limiter)
    assert stats["429"] < 80  # every worker paused on Retry-After instead of retrying at once
    throttled = [r["evidence"]["throttled"] + r["evidence"]["lookup_throttled"] for r in tasks(tracking_db)]
    assert sum(throttled) == stats["429"]


def test_partner_down_for_a_whole_run_then_up(tracking_db, partners, tmp_path):
    p = partners("crm", "billing")
    subjects = [f"cus_d{i:03d}" for i in range(16)]
    for s in p.values():
        seed(s, subjects)
    _, cat = write_catalog(tmp_path, {n: s.url for n, s in p.items()})
    create_requests(tracking_db, subjects, [("crm", "sync_api"), ("billing", "sync_api")])

    p["crm"].stop()  # connection refused for the whole run
    [down] = run_all(tracking_db, cat, "crm", "run1")
    [up] = run_all(tracking_db, cat, "billing", "run1")
    assert down.failed == 16 and up.succeeded == 16  # one partner down does not block the other
    crm_rows = tasks(tracking_db, "crm")
    assert {r["status"] for r in crm_rows} == {"failed"}
    assert "Connect" in crm_rows[0]["last_error"] and crm_rows[0]["evidence"]["http_status"] is None

    p["crm"].start()
    time.sleep(0.1)
    [s] = run_all(tracking_db, cat, "crm", "run2")
    assert s.succeeded == 16
    assert {r["status"] for r in tasks(tracking_db)} == {"succeeded"}
    assert len(deletions(p["crm"])) == 16


def test_admin_outage_window_drops_connections(tracking_db, partners, tmp_path):
    p = partners("crm")
    seed(p["crm"], ["cus_w1"])
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url})
    create_requests(tracking_db, ["cus_w1"], [("crm", "sync_api")])
    faults(p["crm"], outage_seconds=30)
    assert httpx.get(f"{p['crm'].url}/healthz").status_code == 503
    [s] = run_all(tracking_db, cat, "crm")
    assert s.failed == 1 and "Disconnect" in tasks(tracking_db)[0]["last_error"]
    httpx.delete(f"{p['crm'].url}/admin/faults")
    time.sleep(0.1)
    [s] = run_all(tracking_db, cat, "crm", "after")
    assert s.succeeded == 1


KILL_SCRIPT = """
import json, sys
from erasure.catalog import load_catalog
from erasure.dispatch import run_batch
from erasure.settings import get_settings
a = json.loads(sys.argv[1])
key = a.get("claim", "killed-run")
run_batch(a["dsn"], load_catalog(a["catalog"]), "crm", a["ids"], claim_key=key, settings=get_settings())
"""


def _kill_mid_batch(dsn: str, cat_path: Path, ids: list[int], claim_key: str, after: int) -> None:
    """Run a batch in a process of its own and SIGKILL it once ``after`` more subjects succeeded."""
    start = query(dsn, "SELECT count(*) FROM erasure.task WHERE status = 'succeeded'")[0][0]
    arg = json.dumps({"dsn": dsn, "catalog": str(cat_path), "ids": ids, "claim": claim_key})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, arg], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = query(dsn, "SELECT count(*) FROM erasure.task WHERE status = 'succeeded'")[0][0]
        if done >= start + after:
            break
        assert proc.poll() is None, "batch finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_batch_killed_on_every_try_is_released_at_once_and_alerted_once(
    tracking_db, partners, tmp_path, monkeypatch
):
    """Airflow's final failure of a delete batch (here: killed on both tries) runs the batch's failure
    callback: its claimed rows are released for the next dispatch run at once (no 15-minute lease wait),
    the attempt is counted, and one alert names the target and the batch."""
    from types import SimpleNamespace

    from erasure.airflow.callbacks import batch_failed, claim_key

    p = partners("crm")
    subjects = [f"cus_r{i:03d}" for i in range(120)]
    seed(p["crm"], subjects)
    cat_path, cat = write_catalog(tmp_path, {"crm": p["crm"].url}, sync={"concurrency": 2, "batch_size": 500})
    monkeypatch.setenv("ERASURE_CATALOG", str(cat_path))
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_TRACKING", tracking_db)
    create_requests(tracking_db, subjects, [("crm", "sync_api")])
    faults(p["crm"], latency_ms=40)
    ids = task_ids(tracking_db, "crm")
    key = claim_key("scheduled__run1", "crm", 0)
    for _ in range(2):  # the try and Airflow's retry (same claim key), both killed
        _kill_mid_batch(tracking_db, cat_path, ids, key, after=10)
    stuck = [r["id"] for r in tasks(tracking_db) if r["status"] == "in_progress"]
    assert stuck and plan_batches(tracking_db, cat, "crm") == []  # the lease holds them
    from erasure.status import format_status, request_status

    stuck_request = next(r["request_id"] for r in tasks(tracking_db) if r["status"] == "in_progress")
    shown = format_status([request_status(stuck_request, tracking_db)], lease_minutes=15)
    assert f"lease: batch {key} held until" in shown  # the status command shows whose lease and until when

    ctx = {
        "ti": SimpleNamespace(task_id="delete_crm", map_index=0),
        "dag_run": SimpleNamespace(run_id="scheduled__run1"),
        "exception": RuntimeError("Task was killed (SIGKILL)"),
    }
    batch_failed(ctx)
    rows = {r["id"]: r for r in tasks(tracking_db)}
    assert {rows[i]["status"] for i in stuck} == {"failed"}
    assert all(rows[i]["attempts"] == 1 and "SIGKILL" in rows[i]["last_error"] for i in stuck)
    planned = [i for b in plan_batches(tracking_db, cat, "crm") for i in b["task_ids"]]
    assert sorted(planned) == sorted(stuck)  # the next run takes them at once
    alerts = query(tracking_db, "SELECT kind, target, message FROM erasure.alert")
    assert len(alerts) == 1 and alerts[0][0] == "batch_failed" and alerts[0][1] == "crm"
    assert key in alerts[0][2] and f"{len(stuck)} task(s)" in alerts[0][2]

    batch_failed(ctx)  # Airflow may call it again (e.g. the DAG processor after a zombie): nothing changes
    assert query(tracking_db, "SELECT count(*) FROM erasure.alert")[0][0] == 1
    assert {r["id"]: r["attempts"] for r in tasks(tracking_db)} == {i: r["attempts"] for i, r in rows.items()}

    faults(p["crm"], latency_ms=0)
    for b in plan_batches(tracking_db, cat, "crm"):
        run_batch(tracking_db, cat, "crm", b["task_ids"], claim_key="next-run", settings=get_settings())
    assert {r["status"] for r in tasks(tracking_db)} == {"succeeded"}


def test_batch_killed_mid_way_loses_nothing_and_deletes_once(tracking_db, partners, tmp_path):
    p = partners("crm")
    subjects = [f"cus_k{i:03d}" for i in range(200)]
    seed(p["crm"], subjects)
    cat_path, cat = write_catalog(tmp_path, {"crm": p["crm"].url}, sync={"concurrency": 4, "batch_size": 500})
    create_requests(tracking_db, subjects, [("crm", "sync_api")])
    faults(p["crm"], latency_ms=25)  # 200 subjects / 4 workers * 25 ms = ~1.3 s
    ids = task_ids(tracking_db, "crm")

    arg = json.dumps({"dsn": tracking_db, "catalog": str(cat_path), "ids": ids})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, arg], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = query(tracking_db, "SELECT count(*) FROM erasure.task WHERE status = 'succeeded'")[0][0]
        if done >= 40:
            break
        assert proc.poll() is None, "batch finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    status = Counter(r["status"] for r in tasks(tracking_db))
    assert status["succeeded"] >= 40 and status["in_progress"] > 0, status
    assert plan_batches(tracking_db, cat, "crm") == []  # live lease: nobody else takes them yet
    # an Airflow retry of the same batch (same claim key) takes its rows back at once ...
    assert len(claim(tracking_db, cat.target("crm"), ids, "killed-run")) == status["in_progress"]
    # ... and a later run after the lease (here: 0 minutes) finishes the rest
    faults(p["crm"], latency_ms=0)
    sums = [run_batch(tracking_db, cat, "crm", b["task_ids"], claim_key="rerun", lease_minutes=0, settings=get_settings())
            for b in plan_batches(tracking_db, cat, "crm", lease_minutes=0)]  # fmt: skip
    assert sum(s.claimed for s in sums) == status["in_progress"]

    rows = tasks(tracking_db)
    assert {r["status"] for r in rows} == {"succeeded"} and len(rows) == 200  # no subject lost
    assert set(succeeded_events(tracking_db).values()) == {1}  # each recorded as succeeded once
    existed = Counter(d["subject_id"] for d in deletions(p["crm"]) if d["existed"])
    assert len(existed) == 200 and set(existed.values()) == {1}  # each subject's data deleted once
    replays = [r for r in rows if r["evidence"].get("claim") == "rerun"]
    assert all(r["evidence"]["outcome"] in ("deleted", "already_gone") for r in replays)


def test_postgres_table_target(tracking_db, tmp_path):
    query(tracking_db, "CREATE SCHEMA IF NOT EXISTS hr_test")
    query(tracking_db, "DROP TABLE IF EXISTS hr_test.directory")
    query(tracking_db, "CREATE TABLE hr_test.directory (employee_id text, phone text)")
    query(
        tracking_db,
        "INSERT INTO hr_test.directory SELECT 'emp_' || (g % 30), 'x' FROM generate_series(1, 90) g",
    )
    os.environ["ERASURE_TEST_HR_DSN"] = tracking_db
    _, cat = write_catalog(
        tmp_path, {}, postgres={"name": "hr", "dsn_env": "ERASURE_TEST_HR_DSN", "table": "hr_test.directory",
                                "key_column": "employee_id"},
    )  # fmt: skip
    create_requests(tracking_db, ["emp_1", "emp_2", "emp_999"], [("hr", "postgres_table")])
    [s] = run_all(tracking_db, cat, "hr")
    assert s.succeeded == 3
    by_subject = {r["subject_id"]: r for r in tasks(tracking_db)}
    assert by_subject["emp_1"]["evidence"]["rows_deleted"] == 3 and by_subject["emp_1"]["stage"] == "deleted"
    assert by_subject["emp_999"]["evidence"]["outcome"] == "already_gone"
    v = by_subject["emp_1"]["evidence"]["verification"]  # the count after the DELETE, same transaction
    assert v["outcome"] == "verified" and v["answer"] == "0 rows" and "hr_test.directory" in v["method"]
    assert query(tracking_db, "SELECT count(*) FROM hr_test.directory")[0][0] == 84
    assert (
        query(tracking_db, "SELECT count(*) FROM erasure.event_log WHERE event_type = 'rows_deleted'")[0][0]
        == 3
    )

    # a missing table is a permanent failure recorded on every subject
    _, bad = write_catalog(
        tmp_path / "bad", {}, postgres={"name": "hr2", "dsn_env": "ERASURE_TEST_HR_DSN",
                                        "table": "hr_test.nope", "key_column": "employee_id"},
    )  # fmt: skip
    create_requests(tracking_db, ["emp_5"], [("hr2", "postgres_table")])
    [s] = run_all(tracking_db, bad, "hr2")
    row = tasks(tracking_db, "hr2")[0]
    assert s.permanent == 1 and row["status"] == "failed" and "UndefinedTable" in row["last_error"]


def test_dispatch_dag_full_run(tracking_db, partners, tmp_path, monkeypatch):
    """One full ``erasure_dispatch`` run with dag.test(): plan + mapped batches per target."""
    from airflow.dag_processing.dagbag import DagBag

    p = partners("crm", "billing")
    subjects = [f"cus_g{i:03d}" for i in range(30)]
    for s in p.values():
        seed(s, subjects)
    cat_path, _ = write_catalog(tmp_path, {n: s.url for n, s in p.items()}, sync={"batch_size": 10})
    monkeypatch.setenv("ERASURE_CATALOG", str(cat_path))
    create_requests(tracking_db, subjects, [("crm", "sync_api"), ("billing", "sync_api")])
    create_requests(tracking_db, ["cus_hold"], [("crm", "sync_api")], status="held")

    bag = DagBag(str(ROOT / "dags" / "erasure_dispatch.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["erasure_dispatch"]
    assert {"plan_crm", "delete_crm", "plan_billing", "delete_billing"} <= set(dag.task_ids)
    assert dag.get_task("delete_crm").pool == "erasure_crm"
    run = dag.test()
    assert run.state == "success", run.state

    rows = tasks(tracking_db)
    assert Counter((r["target"], r["status"]) for r in rows) == {
        ("crm", "succeeded"): 30, ("billing", "succeeded"): 30, ("crm", "pending"): 1,
    }  # fmt: skip
    claims = {r["evidence"]["claim"].rsplit("/", 1)[0] for r in rows if r["status"] == "succeeded"}
    assert claims == {f"{run.run_id}/crm", f"{run.run_id}/billing"}
    tis = [ti for ti in run.get_task_instances() if ti.task_id == "delete_crm"]
    assert len(tis) == 3  # 30 subjects / batch_size 10: one mapped instance per batch
    assert sorted(ti.rendered_map_index for ti in tis) == [
        f"crm batch {i}/3 (10 subjects)" for i in (1, 2, 3)
    ]


# -- proof of erasure: verification after the partner's answer (issue 17) ---------------------------
def test_200_but_data_kept_is_caught_by_verification(tracking_db, partners, tmp_path):
    p = partners("crm")
    subjects = [f"cus_liar{i}" for i in range(6)]
    seed(p["crm"], subjects)
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url})
    create_requests(tracking_db, subjects, [("crm", "sync_api")])
    faults(p["crm"], silent_delete_failure=True)  # answers 200 "deleted", keeps the data

    [s] = run_all(tracking_db, cat, "crm")
    assert (s.succeeded, s.failed, s.permanent) == (0, 6, 0) and s.verification == {"failed": 6}
    for r in tasks(tracking_db):
        assert r["status"] == "failed" and r["completed_at"] is None
        ev = r["evidence"]
        assert ev["http_status"] == 200 and ev["outcome"] == "deleted"  # what the partner claimed
        assert ev["verification"]["outcome"] == "failed" and "still there" in ev["verification"]["answer"]
        assert ev["verification"]["method"].startswith("GET /subjects/")
        assert r["last_error"].startswith("verification failed: the partner answered HTTP 200")
    assert httpx.get(f"{p['crm'].url}/subjects/{subjects[0]}").status_code == 200

    # the partner is fixed: the retry deletes for real and is verified
    httpx.delete(f"{p['crm'].url}/admin/faults", timeout=10).raise_for_status()
    query(tracking_db, "UPDATE erasure.task SET next_attempt_at = now()")
    [s2] = run_all(tracking_db, cat, "crm", "fixed")
    assert s2.succeeded == 6 and s2.verification == {"verified": 6}
    assert {r["status"] for r in tasks(tracking_db)} == {"succeeded"}


def test_202_accepted_completes_only_once_verified_gone(tracking_db, partners, tmp_path):
    p = partners("crm")
    subjects = [f"cus_acc{i}" for i in range(5)]
    seed(p["crm"], subjects)
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url})
    create_requests(tracking_db, subjects, [("crm", "sync_api")])
    faults(p["crm"], accept_delete_after_s=2.0)  # 202 now, erased two seconds later

    [s1] = run_all(tracking_db, cat, "crm", "first")
    assert (s1.succeeded, s1.failed, s1.awaiting) == (0, 0, 5)
    rows = tasks(tracking_db)
    assert {r["status"] for r in rows} == {"awaiting_ack"} and {r["completed_at"] for r in rows} == {None}
    assert rows[0]["evidence"]["http_status"] == 202 and rows[0]["evidence"]["outcome"] == "accepted"
    assert "verification" not in rows[0]["evidence"]
    assert rows[0]["last_error"].startswith("HTTP 202 accepted, not yet confirmed gone")
    assert query(tracking_db, "SELECT DISTINCT status FROM erasure.request") == [("in_progress",)]

    time.sleep(2.5)  # the partner erased them meanwhile; the next run (backoff elapsed) looks again
    query(tracking_db, "UPDATE erasure.task SET next_attempt_at = now()")
    [s2] = run_all(tracking_db, cat, "crm", "second")
    assert s2.succeeded == 5 and s2.verification == {"verified": 5}
    rows = tasks(tracking_db)
    assert {r["status"] for r in rows} == {"succeeded"} and {r["attempts"] for r in rows} == {2}
    assert {r["evidence"]["verification"]["outcome"] for r in rows} == {"verified"}


def test_202_never_confirmed_never_completes(tracking_db, partners, tmp_path):
    p = partners("crm")
    seed(p["crm"], ["cus_void"])
    _, cat = write_catalog(tmp_path, {"crm": p["crm"].url}, target={"max_attempts": 2})
    create_requests(tracking_db, ["cus_void"], [("crm", "sync_api")])
    faults(p["crm"], accept_never_delete=True)

    [s1] = run_all(tracking_db, cat, "crm", "one")
    assert s1.awaiting == 1 and tasks(tracking_db)[0]["status"] == "awaiting_ack"
    query(tracking_db, "UPDATE erasure.task SET next_attempt_at = now()")
    [s2] = run_all(tracking_db, cat, "crm", "two")  # the last attempt: still there -> failed
    assert (s2.succeeded, s2.failed, s2.awaiting) == (0, 1, 0)
    [r] = tasks(tracking_db)
    assert r["status"] == "failed" and r["attempts"] == 2 and r["completed_at"] is None
    assert "never confirmed gone after 2 attempt(s)" in r["last_error"]
    query(tracking_db, "UPDATE erasure.task SET next_attempt_at = now()")
    assert plan_batches(tracking_db, cat, "crm") == []  # no attempts left: reconcile escalates it
    assert httpx.get(f"{p['crm'].url}/subjects/cus_void").status_code == 200


def test_target_that_cannot_be_asked_says_not_verifiable(tracking_db, partners, tmp_path):
    p = partners("crm")
    seed(p["crm"], ["cus_nv"])
    _, cat = write_catalog(
        tmp_path,
        {"crm": p["crm"].url},
        target={"verifiable": False, "verification_note": "the partner offers no lookup"},
    )
    create_requests(tracking_db, ["cus_nv"], [("crm", "sync_api")])
    [s] = run_all(tracking_db, cat, "crm")
    assert s.succeeded == 1 and s.verification == {"not_verifiable": 1}
    v = tasks(tracking_db)[0]["evidence"]["verification"]
    assert v["outcome"] == "not_verifiable" and "the partner offers no lookup" in v["answer"]
