"""Intake against the real tracking store (an isolated Postgres DB per session): registration with
tasks and SLA, duplicates (also concurrent), rejections with no partial rows, legal holds and
release, and the DAGs under ``dag.test()`` (scheduled ingestion of ``erasure.intake`` + hold re-check)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest

from erasure.holds import HoldError, list_holds, place_hold, recheck_held_requests, release_hold
from erasure.intake import MAX_BATCH, IntakeError, ingest_pending, register_requests
from tests.helpers.db import query
from tests.unit.test_intake import BAD_INPUTS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CUSTOMER_TARGETS = 11  # enabled targets of subject type "customer" in include/catalog
EMPLOYEE_TARGETS = 2


def q(dsn: str, sql: str, *args) -> list[dict]:
    return query(dsn, sql, args)


def counts(dsn: str) -> dict[str, int]:
    row = q(
        dsn,
        """SELECT (SELECT count(*) FROM erasure.request) AS requests, (SELECT count(*) FROM erasure.task) AS tasks,
                  (SELECT count(*) FROM erasure.rejected_request) AS rejected,
                  (SELECT count(*) FROM erasure.event_log) AS events""",
    )[0]
    return {k: int(v) for k, v in row.items()}


def req(subject_id: str, **kw) -> dict:
    return {"subject_type": "customer", "subject_id": subject_id, "requested_by": "alice@example.com", **kw}


def assert_invariant(res) -> None:
    assert res.received == res.registered + res.duplicates + res.rejected == len(res.outcomes)


# --------------------------------------------------------------------------------- registration
def test_register_writes_request_and_one_task_per_target_with_sla(tracking_db, catalog):
    res = register_requests(
        tracking_db,
        catalog,
        [
            req("cus_alpha1", external_id="ZD-1", reason="asked by email"),
            req("cus_beta22", jurisdiction="CCPA"),
            {"subject_type": "employee", "subject_id": "emp_00123", "requested_by": "hr-bot"},
        ],
        "api",
        run_id="manual__test",
    )
    assert (res.received, res.registered, res.duplicates, res.rejected) == (3, 3, 0, 0)
    assert_invariant(res)
    rows = {
        r["subject_id"]: r
        for r in q(
            tracking_db,
            "SELECT *, extract(epoch FROM due_at - received_at) / 86400 AS sla FROM erasure.request",
        )
    }
    a = rows["cus_alpha1"]
    assert (a["external_id"], a["status"], a["source"], a["airflow_run_id"], a["reason"]) == (
        "ZD-1", "in_progress", "api", "manual__test", "asked by email",
    )  # fmt: skip
    assert a["sla"] == 30 and rows["cus_beta22"]["sla"] == 45 and rows["cus_beta22"]["jurisdiction"] == "CCPA"
    assert len(rows["cus_beta22"]["external_id"]) == 36  # generated uuid4
    tasks = q(
        tracking_db,
        "SELECT r.subject_id, t.target, t.kind, t.status FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id",
    )
    by_subject: dict[str, set] = {}
    for t in tasks:
        assert t["status"] == "pending"
        assert t["kind"] == catalog.target(t["target"]).kind
        by_subject.setdefault(t["subject_id"], set()).add(t["target"])
    assert by_subject["cus_alpha1"] == {t.name for t in catalog.targets_for("customer")}
    assert len(by_subject["cus_alpha1"]) == CUSTOMER_TARGETS
    assert by_subject["emp_00123"] == {"support_desk", "hr_directory"}
    ev = q(tracking_db, "SELECT event_type, count(*) AS n FROM erasure.event_log GROUP BY 1")
    assert {e["event_type"]: e["n"] for e in ev} == {
        "request_received": 3,
        "task_created": 2 * CUSTOMER_TARGETS + EMPLOYEE_TARGETS,
    }
    assert [o.status for o in res.outcomes] == ["registered"] * 3 and all(o.request_id for o in res.outcomes)


def test_unknown_source_is_a_programming_error(tracking_db, catalog):
    with pytest.raises(IntakeError, match="source must be one of"):
        register_requests(tracking_db, catalog, [req("cus_alpha1")], "email")
    assert counts(tracking_db)["requests"] == 0


# ----------------------------------------------------------------------------------- duplicates
def test_duplicates_by_external_id_and_open_subject(tracking_db, catalog):
    first = register_requests(tracking_db, catalog, [req("cus_dup001", external_id="T-1")], "api")
    rid = first.outcomes[0].request_id
    res = register_requests(
        tracking_db,
        catalog,
        [
            req("cus_dup001", external_id="T-1"),  # same external id
            req("cus_dup001", external_id="T-2"),  # same subject, request still open
            req("cus_dup002"),
            req("cus_dup002"),  # duplicate inside the same batch
            req("cus_other9", external_id="T-1"),  # external id reused for another subject
        ],
        "intake_table",
    )
    assert_invariant(res)
    assert (res.registered, res.duplicates, res.rejected) == (1, 3, 1)
    o = res.outcomes
    assert o[0].status == o[1].status == "duplicate" and o[0].request_id == o[1].request_id == rid
    assert "by external_id" in o[0].message and "open request for the same subject" in o[1].message
    assert o[3].status == "duplicate" and o[3].request_id == o[2].request_id
    assert o[4].status == "rejected" and o[4].errors == [
        {"field": "external_id", "problem": f"already used by request {rid} for a different subject"}
    ]
    c = counts(tracking_db)
    assert (c["requests"], c["tasks"], c["rejected"]) == (2, 2 * CUSTOMER_TARGETS, 1)
    # once the first request is closed, the subject may be requested again (new external id)
    q(tracking_db, "UPDATE erasure.request SET status = 'completed', completed_at = now() WHERE id = %s", rid)
    again = register_requests(
        tracking_db,
        catalog,
        [req("cus_dup001", external_id="T-3"), req("cus_dup001", external_id="T-1")],
        "api",
    )
    assert [x.status for x in again.outcomes] == ["registered", "duplicate"]
    assert again.outcomes[1].request_id == rid  # an external id is never reused, even after completion


def test_concurrent_intake_of_the_same_subject_registers_once(tracking_db, catalog):
    results = []
    barrier = threading.Barrier(6)

    def submit(i: int) -> None:
        barrier.wait()
        results.append(
            register_requests(tracking_db, catalog, [req("cus_race01", external_id=f"R-{i % 3}")], "api")
        )

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.outcomes[0].status for r in results)
    assert statuses == ["duplicate"] * 5 + ["registered"]
    assert len({r.outcomes[0].request_id for r in results}) == 1
    c = counts(tracking_db)
    assert (c["requests"], c["tasks"]) == (1, CUSTOMER_TARGETS)


# ----------------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    ("payload", "field", "words"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_rejected_with_clear_error_and_no_partial_rows(
    tracking_db, catalog, payload, field, words
):
    res = register_requests(tracking_db, catalog, [payload], "cli", run_id="run-bad")
    assert (res.received, res.registered, res.duplicates, res.rejected) == (1, 0, 0, 1)
    o = res.outcomes[0]
    assert o.status == "rejected" and o.request_id is None
    assert any(e["field"] == field and words in e["problem"] for e in o.errors), o.errors
    assert field in o.message
    c = counts(tracking_db)
    assert (c["requests"], c["tasks"], c["events"], c["rejected"]) == (0, 0, 0, 1)
    row = q(tracking_db, "SELECT * FROM erasure.rejected_request")[0]
    assert row["source"] == "cli" and row["airflow_run_id"] == "run-bad"
    assert row["errors"] == o.errors
    assert len(json.dumps(row["payload"])) < 8000  # sanitised and truncated


def test_mixed_batch_keeps_the_invariant(tracking_db, catalog):
    batch = [req(f"cus_mix{i:03d}") for i in range(5)] + [c[1] for c in BAD_INPUTS] + [req("cus_mix000")]
    res = register_requests(tracking_db, catalog, batch, "api")
    assert_invariant(res)
    assert (res.registered, res.duplicates, res.rejected) == (5, 1, len(BAD_INPUTS))
    c = counts(tracking_db)
    assert (c["requests"], c["tasks"], c["rejected"]) == (5, 5 * CUSTOMER_TARGETS, len(BAD_INPUTS))


def test_batch_too_large_is_rejected_as_a_whole(tracking_db, catalog):
    res = register_requests(
        tracking_db, catalog, [req(f"cus_big{i:05d}") for i in range(MAX_BATCH + 1)], "cli"
    )
    assert_invariant(res)
    assert res.rejected == MAX_BATCH + 1 and res.registered == 0
    assert (
        res.outcomes[0].errors[0]["field"] == "requests" and "exceeds the maximum" in res.outcomes[0].message
    )
    c = counts(tracking_db)
    assert (c["requests"], c["tasks"], c["rejected"]) == (0, 0, 1)


def test_sql_injection_in_free_text_is_stored_verbatim(tracking_db, catalog):
    evil = "x'); DROP TABLE erasure.task; -- \" OR 1=1; SELECT pg_sleep(10);"
    res = register_requests(tracking_db, catalog, [req("cus_inject1", reason=evil)], "api")
    assert res.registered == 1
    assert q(tracking_db, "SELECT reason FROM erasure.request")[0]["reason"] == evil
    assert counts(tracking_db)["tasks"] == CUSTOMER_TARGETS  # erasure.task still there


def test_database_failure_mid_registration_leaves_nothing(tracking_db, catalog):
    """A task row that cannot be written rolls back its request too (one transaction per request)."""
    q(tracking_db, "ALTER TABLE erasure.task ADD CONSTRAINT test_no_hr CHECK (target <> 'hr_directory')")
    try:
        with pytest.raises(psycopg2.errors.CheckViolation):
            register_requests(
                tracking_db,
                catalog,
                [
                    req("cus_before1"),
                    {"subject_type": "employee", "subject_id": "emp_00999", "requested_by": "hr"},
                ],
                "api",
            )
    finally:
        q(tracking_db, "ALTER TABLE erasure.task DROP CONSTRAINT test_no_hr")
    rows = q(tracking_db, "SELECT subject_id FROM erasure.request")
    assert rows == [
        {"subject_id": "cus_before1"}
    ]  # the earlier request committed, the failed one left nothing
    assert counts(tracking_db)["tasks"] == CUSTOMER_TARGETS


# ---------------------------------------------------------------------------------------- holds
def test_hold_blocks_then_release_lets_the_request_proceed(tracking_db, catalog):
    h = place_hold(tracking_db, "customer", "cus_hold01", "litigation L-7", "legal@example.com", catalog)
    assert h.created and h.requests_held == []
    assert place_hold(tracking_db, "customer", "cus_hold01", "again", "legal", catalog).hold_id == h.hold_id
    res = register_requests(tracking_db, catalog, [req("cus_hold01"), req("cus_free01")], "api")
    assert (res.registered, res.held) == (2, 1) and res.outcomes[0].held
    r = q(
        tracking_db, "SELECT id, status, status_reason FROM erasure.request WHERE subject_id = 'cus_hold01'"
    )[0]
    assert r["status"] == "held" and r["status_reason"] == f"legal hold {h.hold_id}: litigation L-7"
    # tasks exist but stay pending (dispatch only touches in_progress requests)
    assert {
        t["status"] for t in q(tracking_db, "SELECT status FROM erasure.task WHERE request_id = %s", r["id"])
    } == {"pending"}
    # re-check while the hold is active: nothing changes
    rc = recheck_held_requests(tracking_db)
    assert (rc.released, rc.held, rc.still_held) == ([], [], 1)
    assert list_holds(tracking_db)[0]["held_requests"] == 1
    # the hold is released directly in SQL (e.g. by the legal team's tool); the next run re-checks
    q(tracking_db, "UPDATE erasure.legal_hold SET released_at = now(), released_by = 'legal-tool'")
    rc = recheck_held_requests(tracking_db)
    assert rc.released == [r["id"]] and rc.still_held == 0
    after = q(tracking_db, "SELECT status, status_reason FROM erasure.request WHERE id = %s", r["id"])[0]
    assert after == {"status": "in_progress", "status_reason": "legal hold released"}
    ev = [
        e["event_type"]
        for e in q(
            tracking_db,
            "SELECT event_type FROM erasure.event_log WHERE request_id = %s AND task_id IS NULL ORDER BY occurred_at",
            r["id"],
        )
    ]
    assert ev == ["request_received", "request_held", "request_released"]
    assert list_holds(tracking_db) == [] and len(list_holds(tracking_db, active_only=False)) == 1


def test_hold_on_open_request_and_release_by_api(tracking_db, catalog):
    res = register_requests(tracking_db, catalog, [req("cus_late01")], "api")
    rid = res.outcomes[0].request_id
    h1 = place_hold(tracking_db, "customer", "cus_late01", "regulator inquiry", "dpo", catalog)
    h2 = place_hold(tracking_db, "customer", "cus_late02", "tax audit", "dpo", catalog)
    assert h1.requests_held == [rid] and h2.requests_held == []
    assert q(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", rid)[0]["status"] == "held"
    rel = release_hold(tracking_db, "dpo", hold_id=h1.hold_id)
    assert rel.hold_ids == [h1.hold_id] and rel.requests_released == [rid]
    assert (
        q(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", rid)[0]["status"] == "in_progress"
    )
    # a hold inserted directly in SQL on an open request is applied by the re-check
    res2 = register_requests(tracking_db, catalog, [req("cus_late03")], "api")
    q(
        tracking_db,
        "INSERT INTO erasure.legal_hold (subject_type, subject_id, reason, placed_by) VALUES ('customer', 'cus_late03', 'sql', 'x')",
    )
    assert recheck_held_requests(tracking_db).held == [res2.outcomes[0].request_id]
    rel2 = release_hold(tracking_db, "dpo", subject_type="customer", subject_id="cus_late03")
    assert rel2.requests_released == [res2.outcomes[0].request_id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject_type": "alien"}, "subject_type: unknown subject type"),
        ({"subject_id": "cus_1' OR 1=1"}, "subject_id: does not match"),
        ({"reason": ""}, "reason: is required"),
        ({"reason": "a\x00b"}, "reason: contains control character"),
        ({"placed_by": "x'--"}, "placed_by: must match"),
        ({"reason": "r" * 1001}, "reason: is 1001 characters long"),
    ],
)
def test_bad_hold_input_names_the_field(tracking_db, catalog, kwargs, message):
    args = {
        "subject_type": "customer",
        "subject_id": "cus_hold99",
        "reason": "ok",
        "placed_by": "dpo",
        **kwargs,
    }
    with pytest.raises(HoldError, match=message.replace("(", r"\(")):
        place_hold(tracking_db, catalog=catalog, **args)
    assert q(tracking_db, "SELECT count(*) AS n FROM erasure.legal_hold")[0]["n"] == 0


def test_release_needs_a_target(tracking_db):
    with pytest.raises(HoldError, match="give either hold_id"):
        release_hold(tracking_db, "dpo")
    with pytest.raises(HoldError, match="no legal hold with id 999"):
        release_hold(tracking_db, "dpo", hold_id=999)


# ----------------------------------------------------------------------------- intake table
INTAKE_ROWS = [
    # external_id, subject_type, subject_id, requested_by, reason, jurisdiction -> expected status
    (("CRM-1", "customer", "cus_tab001", "crm-sync", "account closed", None), "registered"),
    (("CRM-2", "customer", "cus_tab001", "crm-sync", None, None), "duplicate"),
    ((None, "customer", "cus_tab002", "crm-sync", None, "CCPA"), "registered"),
    (("CRM-3", "customer", "cus_tabheld", "crm-sync", None, None), "registered"),  # held
    (("CRM-4", "planet", "cus_tab003", "crm-sync", None, None), "rejected"),
    (("CRM-5", "customer", None, "crm-sync", None, None), "rejected"),
    (("CRM-6", "customer", "cus_1; DROP TABLE erasure.intake;--", "crm-sync", None, None), "rejected"),
    (("CRM-7", "customer", "cus_tab004", "crm-sync", None, "Narnia"), "rejected"),
    (("CRM-8", "employee", "emp_00777", "", None, None), "rejected"),
]


def _insert_intake(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO erasure.intake (external_id, subject_type, subject_id, requested_by, reason, jurisdiction) VALUES %s",
            [r for r, _ in INTAKE_ROWS],
        )
    conn.close()


def test_ingest_pending_updates_each_row_in_the_same_transaction(tracking_db, catalog):
    place_hold(tracking_db, "customer", "cus_tabheld", "litigation", "legal", catalog)
    _insert_intake(tracking_db)
    res = ingest_pending(tracking_db, catalog, run_id="scheduled__x", chunk=4)  # several chunks
    assert_invariant(res)
    assert (res.received, res.registered, res.held, res.duplicates, res.rejected) == (9, 3, 1, 1, 5)
    rows = q(tracking_db, "SELECT * FROM erasure.intake ORDER BY id")
    assert [r["status"] for r in rows] == [s for _, s in INTAKE_ROWS]
    assert all(r["processed_at"] is not None for r in rows)
    assert rows[1]["request_id"] == rows[0]["request_id"]  # duplicate points at the existing request
    assert "subject_type: unknown subject type 'planet'" in rows[4]["error"]
    assert rows[5]["error"] == "subject_id: is required"
    assert "subject_id: does not match" in rows[6]["error"]
    assert "jurisdiction: unknown jurisdiction 'Narnia'" in rows[7]["error"]
    assert "requested_by: must not be empty" in rows[8]["error"]
    assert all(r["request_id"] is None for r in rows[4:])
    src = {r["source"] for r in q(tracking_db, "SELECT source FROM erasure.request")}
    assert src == {"intake_table"}
    assert counts(tracking_db)["rejected"] == 5
    # idempotent: a second pass finds nothing pending
    assert ingest_pending(tracking_db, catalog).received == 0


def _dag(name: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(ROOT / "dags" / f"{name}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[name]


def test_scheduled_dag_ingests_and_rechecks_holds(tracking_db, catalog, catalog_env):
    place_hold(tracking_db, "customer", "cus_tabheld", "litigation", "legal", catalog)
    _insert_intake(tracking_db)
    dag = _dag("erasure_intake_scheduled")
    assert dag.max_active_runs == 1 and {"recheck_holds", "ingest"} == set(dag.task_ids)
    run = dag.test()
    assert run.state == "success", run.state
    rows = q(tracking_db, "SELECT status FROM erasure.intake ORDER BY id")
    assert [r["status"] for r in rows] == [s for _, s in INTAKE_ROWS]
    held = q(tracking_db, "SELECT id, status FROM erasure.request WHERE subject_id = 'cus_tabheld'")[0]
    assert held["status"] == "held"
    ti = next(t for t in run.get_task_instances() if t.task_id == "ingest")
    assert ti.state == "success"

    # the hold is released upstream; the next scheduled run releases the request
    q(tracking_db, "UPDATE erasure.legal_hold SET released_at = now(), released_by = 'legal-tool'")
    run2 = dag.test()
    assert run2.state == "success"
    assert (
        q(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", held["id"])[0]["status"]
        == "in_progress"
    )
    assert (
        q(tracking_db, "SELECT count(*) AS n FROM erasure.event_log WHERE event_type = 'request_released'")[
            0
        ]["n"]
        == 1
    )
    assert q(tracking_db, "SELECT count(*) AS n FROM erasure.request")[0]["n"] == 3  # nothing re-processed


def test_triggered_dag_under_dag_test_single_and_batch(tracking_db, catalog, catalog_env):
    dag = _dag("erasure_intake")
    run = dag.test(
        run_conf={"subject_type": "customer", "subject_id": "cus_dagt01", "requested_by": "ui-user"}
    )
    assert run.state == "success"
    batch = [req("cus_dagt02", external_id="B-1"), req("cus_dagt03"), req("cus_dagt01")]
    run2 = dag.test(run_conf={"requests": batch})
    assert run2.state == "success"
    rows = q(tracking_db, "SELECT subject_id, source, airflow_run_id FROM erasure.request ORDER BY id")
    assert [r["subject_id"] for r in rows] == ["cus_dagt01", "cus_dagt02", "cus_dagt03"]
    assert {r["source"] for r in rows} == {"api"}
    assert rows[1]["airflow_run_id"] == run2.run_id
    # a request that passes the Params but not the catalog check fails the run, after recording it
    run3 = dag.test(
        run_conf={"subject_type": "employee", "subject_id": "cus_dagt04", "requested_by": "ui-user"}
    )
    assert run3.state == "failed"
    rej = q(tracking_db, "SELECT errors, airflow_run_id FROM erasure.rejected_request")
    assert rej[0]["airflow_run_id"] == run3.run_id and rej[0]["errors"][0]["field"] == "subject_id"
    assert (
        q(tracking_db, "SELECT count(*) AS n FROM erasure.request WHERE subject_id = 'cus_dagt04'")[0]["n"]
        == 0
    )


def test_cli_submit_and_holds(tracking_db, tmp_path, capsys, catalog_env):
    from erasure.cli import main

    assert (
        main(["hold", "place", "--subject", "customer:cus_cli001", "--reason", "litigation", "--by", "dpo"])
        == 0
    )
    assert "placed on customer:cus_cli001" in capsys.readouterr().out
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([req("cus_cli001"), req("cus_cli002"), req("cus_cli002"), req("nope")]))
    assert main(["intake", "submit", "--file", str(batch)]) == 2  # one rejected
    out = capsys.readouterr().out
    assert "received=4 registered=2 (held=1) duplicates=1 rejected=1" in out and "REJECTED request #3" in out
    assert main(["hold", "list"]) == 0 and "held requests: 1" in capsys.readouterr().out
    assert main(["hold", "release", "--subject", "customer:cus_cli001", "--by", "dpo"]) == 0
    assert "requests released: [" in capsys.readouterr().out
    assert main(["hold", "place", "--subject", "customer", "--reason", "x", "--by", "dpo"]) == 1
    assert "--subject: expected TYPE:ID" in capsys.readouterr().err
    assert (
        main(
            [
                "intake",
                "submit",
                "--subject-type",
                "customer",
                "--subject-id",
                "cus_cli003",
                "--requested-by",
                "me",
            ]
        )
        == 0
    )
    q(
        tracking_db,
        "INSERT INTO erasure.intake (subject_type, subject_id, requested_by) VALUES ('customer', 'cus_cli004', 'x')",
    )
    assert main(["intake", "ingest"]) == 0 and "registered=1" in capsys.readouterr().out
    statuses = {
        r["subject_id"]: (r["status"], r["source"])
        for r in q(tracking_db, "SELECT subject_id, status, source FROM erasure.request")
    }
    assert statuses == {
        "cus_cli001": ("in_progress", "cli"),
        "cus_cli002": ("in_progress", "cli"),
        "cus_cli003": ("in_progress", "cli"),
        "cus_cli004": ("in_progress", "intake_table"),
    }
