"""Bulk bookkeeping (issue 15) against the real tracking store and a real partner HTTP server.

* guarded transitions written in bulk (one statement per chunk) still refuse backwards moves;
* the event log holds exactly one row per transition, with the values the row triggers wrote, and the
  hash chain verifies (``python -m erasure.cli audit verify``), also across savepoints rolled back;
* a batch killed between the partner's answers and its chunk's commit loses nothing and double-counts
  nothing: the re-run (same claim key, as Airflow's retry) erases the rest, idempotently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import httpx
import psycopg2
import psycopg2.extras
import pytest

from erasure.db import transaction
from erasure.dispatch import run_batch
from erasure.evidence.audit import verify_chain
from erasure.settings import get_settings
from erasure.tracking import Transition, transition_task, transition_tasks
from erasure.vocab import TaskStatus, WarehouseStage
from erasure_demo.partners.http_service import PartnerServer
from tests.helpers.sync_fixtures import create_requests, query, task_ids, tasks, write_catalog

pytestmark = pytest.mark.integration


def _events(dsn: str, event_type: str) -> list[dict]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "SELECT seq, task_id, request_id, target, status, attempt, details FROM erasure.event_log"
                " WHERE event_type = %s ORDER BY seq",
                (event_type,),
            )
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _status(dsn: str) -> dict[int, str]:
    return dict(query(dsn, "SELECT id, status FROM erasure.task"))


def test_bulk_transitions_are_guarded_and_log_one_event_each(tracking_db):
    dsn = tracking_db
    create_requests(dsn, [f"cus_{i:04d}" for i in range(30)], [("crm", "sync_api")])
    ids = task_ids(dsn, "crm")
    created = _events(dsn, "task_created")
    assert [e["task_id"] for e in created] == ids  # one per inserted task, in id order
    assert len(_events(dsn, "request_received")) == 30

    # 20 claimed (one statement), 10 stay pending
    with transaction(dsn) as cur:
        moved = transition_tasks(
            cur, [Transition(i, TaskStatus.IN_PROGRESS, (TaskStatus.PENDING,)) for i in ids[:20]]
        )
    assert moved == set(ids[:20])
    # outcomes for all 30 in chunks of 7: only the 20 in progress may move; evidence per row
    changes = [
        Transition(
            i,
            TaskStatus.SUCCEEDED if n % 2 == 0 else TaskStatus.FAILED,
            (TaskStatus.IN_PROGRESS,),
            evidence={"n": n},
            last_error=None if n % 2 == 0 else f"error {n}",
            increment_attempts=True,
        )
        for n, i in enumerate(ids)
    ]
    with transaction(dsn) as cur:
        moved = transition_tasks(cur, changes, chunk=7)
    assert moved == set(ids[:20])
    st = _status(dsn)
    assert all(st[i] == "pending" for i in ids[20:])
    assert [st[i] for i in ids[:4]] == ["succeeded", "failed", "succeeded", "failed"]

    # backwards moves in bulk are refused: a finished task never goes back to in progress or pending
    with transaction(dsn) as cur:
        back = transition_tasks(
            cur,
            [Transition(i, TaskStatus.IN_PROGRESS, (TaskStatus.PENDING,)) for i in ids[:20]]
            + [Transition(i, TaskStatus.PENDING, (TaskStatus.IN_PROGRESS,)) for i in ids[20:]],
        )
        again = transition_tasks(
            cur, [Transition(i, TaskStatus.SUCCEEDED, (TaskStatus.IN_PROGRESS,)) for i in ids[:20]]
        )
    assert back == set() and again == set()
    assert _status(dsn) == st

    # one event per transition, nothing for refused moves, the values of the row triggers
    assert Counter(e["task_id"] for e in _events(dsn, "task_dispatched")) == Counter(ids[:20])
    ok = _events(dsn, "task_succeeded")
    bad = _events(dsn, "task_failed")
    assert sorted(e["task_id"] for e in ok) == ids[0:20:2]
    assert sorted(e["task_id"] for e in bad) == ids[1:20:2]
    assert all(e["attempt"] == 1 and e["status"] == "succeeded" for e in ok)
    assert {e["task_id"]: e["details"] for e in ok}[ids[2]] == {"n": 2}
    assert {e["task_id"]: e["details"] for e in bad}[ids[3]] == {"n": 3, "error": "error 3"}
    assert not _events(dsn, "task_retried")
    report = verify_chain(dsn)
    assert report.ok and report.events == 30 + 30 + 20 + 20, report.summary()


def test_stage_event_precedes_status_event_and_single_transition_still_works(tracking_db):
    dsn = tracking_db
    create_requests(dsn, ["cus_a", "cus_b"], [("wh", "warehouse_delta")])
    a, b = task_ids(dsn, "wh")
    with transaction(dsn) as cur:
        assert transition_task(cur, a, TaskStatus.IN_PROGRESS, (TaskStatus.PENDING,))
        assert not transition_task(cur, a, TaskStatus.IN_PROGRESS, (TaskStatus.PENDING,))
        moved = transition_tasks(
            cur,
            [
                Transition(a, TaskStatus.SUCCEEDED, (TaskStatus.IN_PROGRESS,), stage=WarehouseStage.DELETED,
                           evidence={"rows": 3}),
                Transition(b, TaskStatus.IN_PROGRESS, (TaskStatus.PENDING,), stage=WarehouseStage.DELETED),
            ],
        )  # fmt: skip
    assert moved == {a, b}
    rows = query(
        dsn,
        "SELECT task_id, event_type FROM erasure.event_log WHERE event_type IN"
        " ('rows_deleted', 'task_succeeded', 'task_dispatched') ORDER BY seq",
    )
    assert rows == [
        (a, "task_dispatched"),
        (a, "rows_deleted"),
        (a, "task_succeeded"),
        (b, "rows_deleted"),
        (b, "task_dispatched"),
    ]
    with pytest.raises(ValueError, match="more than once"):
        with transaction(dsn) as cur:
            transition_tasks(cur, [Transition(a, "failed", ("succeeded",))] * 2)
    with pytest.raises(ValueError, match="unknown task status"):
        with transaction(dsn) as cur:
            transition_tasks(cur, [Transition(a, "done", ("succeeded",))])
    assert verify_chain(dsn).ok


def test_chain_stays_valid_across_rolled_back_savepoints_and_concurrent_writers(tracking_db):
    """The chain keeps its last link per transaction (migration 0006): a savepoint rolled back takes
    its rows and that link with it; concurrent writers stay serialised into one chain."""
    dsn = tracking_db
    create_requests(dsn, [f"cus_{i}" for i in range(10)], [("crm", "sync_api")])
    ids = task_ids(dsn, "crm")
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            transition_tasks(cur, [Transition(i, "in_progress", ("pending",)) for i in ids[:3]])
            cur.execute("SAVEPOINT s")
            transition_tasks(cur, [Transition(i, "in_progress", ("pending",)) for i in ids[3:6]])
            cur.execute("ROLLBACK TO SAVEPOINT s")
            transition_tasks(cur, [Transition(i, "in_progress", ("pending",)) for i in ids[6:]])
    finally:
        conn.close()
    # another writer's transaction after it, and one that writes nothing
    with transaction(dsn) as cur:
        transition_tasks(cur, [Transition(i, "succeeded", ("in_progress",)) for i in ids])
    st = _status(dsn)
    assert [st[i] for i in ids] == ["succeeded"] * 3 + ["pending"] * 3 + ["succeeded"] * 4
    report = verify_chain(dsn)
    assert report.ok, report.summary()
    seqs = [r[0] for r in query(dsn, "SELECT seq FROM erasure.event_log ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap where the savepoint's rows were
    assert query(dsn, "SELECT seq FROM erasure.audit_head")[0][0] == seqs[-1]


# -- a batch killed between the partner's answers and its chunk's commit ----------------------------

KILL_SCRIPT = """
import json, sys, time
from erasure import dispatch
from erasure.catalog import load_catalog
from erasure.settings import get_settings

close = dispatch.OutcomeWriter.close


def stalled_close(self):
    # every partner answer is in; the last chunk is not committed yet: say so, then wait to be killed
    print("ANSWERS-IN", flush=True)
    time.sleep(120)
    close(self)


dispatch.OutcomeWriter.close = stalled_close
a = json.loads(sys.argv[1])
# chunks of 5 (12 subjects: 2 chunks committed as they fill, 2 answers buffered when the process dies)
dispatch.run_batch(a["dsn"], load_catalog(a["catalog"]), "crm", a["ids"], claim_key=a["claim"],
                   settings=get_settings(), flush_every_s=60.0, flush_max=5)
"""


def test_batch_killed_between_answers_and_commit_loses_nothing_and_counts_nothing_twice(
    tracking_db, tmp_path
):
    dsn = tracking_db
    srv = PartnerServer("crm", tmp_path / "partners" / "crm.db").start()
    try:
        subjects = [f"cus_{i:04d}" for i in range(12)]
        httpx.post(f"{srv.url}/admin/seed", json={"subject_ids": subjects}, timeout=30).raise_for_status()
        cat_path, cat = write_catalog(tmp_path / "cat", {"crm": srv.url})
        create_requests(dsn, subjects, [("crm", "sync_api")])
        ids = task_ids(dsn, "crm")

        arg = json.dumps({"dsn": dsn, "catalog": str(cat_path), "ids": ids, "claim": "run-1/crm/0"})
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, arg], env=os.environ.copy(), stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until every answer is in (or the process ends)
            assert line.strip() == "ANSWERS-IN", f"batch ended before its last chunk: {line!r} {proc.poll()}"
            # the partner answered every subject: deleted once each, and looked up
            assert len(httpx.get(f"{srv.url}/admin/deletions", timeout=10).json()["deletions"]) == 12
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

        st = tasks(dsn, "crm")
        assert Counter(t["status"] for t in st) == {"succeeded": 10, "in_progress": 2}
        lost = sorted(t["id"] for t in st if t["status"] == "in_progress")
        assert len(_events(dsn, "task_succeeded")) == 10

        # Airflow's retry of the same batch (same claim key) re-claims the 2 lost ones at once
        s = run_batch(dsn, cat, "crm", ids, claim_key="run-1/crm/0", settings=get_settings())
        assert s.claimed == 2 and s.succeeded == 2 and s.not_recorded == 0

        st = tasks(dsn, "crm")
        assert all(t["status"] == "succeeded" for t in st)
        assert all(t["attempts"] == 1 for t in st)  # the lost attempt is not counted, none twice
        ok = _events(dsn, "task_succeeded")
        assert sorted(e["task_id"] for e in ok) == ids  # exactly one per task
        # re-claiming a task still in progress is no transition (as with the row triggers): no event
        assert Counter(e["task_id"] for e in _events(dsn, "task_dispatched")) == Counter(ids)
        # the partner erased every subject once; the 2 retried calls were answered from its idempotency
        # store (the first answer replayed), and the lookup confirmed them gone
        dels = httpx.get(f"{srv.url}/admin/deletions", timeout=10).json()["deletions"]
        assert Counter(d["subject_id"] for d in dels) == Counter(subjects)
        by_id = {t["id"]: t["evidence"] for t in st}
        assert all(json.loads(by_id[i]["response_snippet"]).get("replayed") is True for i in lost)
        assert all(by_id[i]["verification"]["outcome"] == "verified" for i in ids)
        assert verify_chain(dsn).ok
    finally:
        srv.close()


# -- intake registration in bulk ----------------------------------------------------------------------


def test_large_intake_batch_is_registered_in_bulk_with_the_same_outcomes(tracking_db, catalog):
    """1,000 requests (two chunks) with duplicates inside the batch, an existing request, a held subject
    and invalid ones: every outcome as the one-request path gives it, in input order, one request row
    per registered request with its tasks, and one event per inserted row."""
    from erasure.holds import place_hold
    from erasure.intake import MAX_BATCH, REGISTER_CHUNK, register_requests

    dsn = tracking_db
    assert MAX_BATCH >= 1000 > REGISTER_CHUNK
    pre = register_requests(dsn, catalog, [{"subject_type": "customer", "subject_id": "cus_exists",
                                            "requested_by": "tests", "external_id": "ext-exists"}], "api")  # fmt: skip
    assert pre.registered == 1
    place_hold(dsn, "customer", "cus_held", "litigation", "legal", catalog)
    events_before = query(dsn, "SELECT count(*) FROM erasure.event_log")[0][0]

    batch = [
        {"subject_type": "customer", "subject_id": f"cus_{i:05d}", "requested_by": "tests"}
        for i in range(995)
    ]
    batch[10] = {
        "subject_type": "customer",
        "subject_id": "cus_00003",
        "requested_by": "tests",
    }  # same subject
    batch[600] = {
        "subject_type": "customer",
        "subject_id": "cus_exists",
        "requested_by": "tests",
    }  # open already
    batch[700] = {"subject_type": "customer", "subject_id": "cus_held", "requested_by": "tests"}
    batch[800] = {"subject_type": "customer", "requested_by": "tests"}  # invalid: no subject_id
    batch += [
        {"subject_type": "customer", "subject_id": "cus_xa001", "requested_by": "t", "external_id": "ext-a"},
        {"subject_type": "customer", "subject_id": "cus_xa002", "requested_by": "t", "external_id": "ext-a"},
        {
            "subject_type": "customer",
            "subject_id": "cus_xa003",
            "requested_by": "t",
            "external_id": "ext-exists",
        },
        {"subject_type": "nobody", "subject_id": "x", "requested_by": "t"},
        {"subject_type": "customer", "subject_id": "cus_xa004", "requested_by": "t", "reason": "bulk"},
    ]
    res = register_requests(dsn, catalog, batch, "api")
    assert res.consistent and res.received == 1000
    assert [o.index for o in res.outcomes] == list(range(1000))
    by = {o.index: o for o in res.outcomes}
    first_3 = by[3].request_id
    assert by[10].status == "duplicate" and by[10].request_id == first_3
    assert by[600].status == "duplicate" and by[600].request_id == pre.outcomes[0].request_id
    assert by[700].status == "registered" and by[700].held
    assert by[800].status == "rejected" and "subject_id" in by[800].message
    assert by[995].status == "registered"
    assert by[996].status == "rejected" and "already used by request" in by[996].message
    assert by[997].status == "rejected" and "already used by request" in by[997].message
    assert by[998].status == "rejected"
    assert by[999].status == "registered"
    assert (res.registered, res.duplicates, res.rejected, res.held) == (994, 2, 4, 1)

    tasks_per = len(catalog.targets_for("customer"))
    rows = query(
        dsn,
        "SELECT r.id, r.status, count(t.id) FROM erasure.request r LEFT JOIN erasure.task t ON t.request_id = r.id"
        " WHERE r.id <> %s GROUP BY r.id, r.status",
        (pre.outcomes[0].request_id,),
    )
    assert len(rows) == 994 and all(n == tasks_per for _, _, n in rows)
    assert sorted(rid for rid, _, _ in rows) == sorted(
        o.request_id for o in res.outcomes if o.status == "registered"
    )
    assert [s for _, s, _ in rows].count("held") == 1
    assert query(dsn, "SELECT count(*) FROM erasure.rejected_request")[0][0] == 4
    # one request_received per request, one request_held for the held one, one task_created per task
    new_events = dict(
        query(
            dsn,
            "SELECT event_type, count(*) FROM erasure.event_log WHERE seq > %s GROUP BY 1",
            (events_before,),
        )
    )
    assert new_events == {"request_received": 994, "request_held": 1, "task_created": 994 * tasks_per}
    assert verify_chain(dsn).ok
