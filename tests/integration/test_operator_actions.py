"""Operator actions of the Erasure view (erasure.operator_actions) on a real tracking store: each does its
change and is audited with the user (erasure.operator_action + an ``operator_action`` event in the hash
chain, which still verifies); refused actions change nothing. Also the overview/request/target queries
of erasure.tracking.views against known rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from erasure import operator_actions as ops
from erasure.airflow.ui import model
from erasure.evidence.audit import verify_chain
from tests.helpers.reconcile_data import fetch, make_request

pytestmark = pytest.mark.integration

ACTOR = "airflow:operator"


def _events(dsn: str, request_id: int) -> list[dict]:
    return fetch(
        dsn,
        "SELECT event_type, details FROM erasure.event_log WHERE request_id = %s ORDER BY seq",
        (request_id,),
    )


def _actions(dsn: str) -> list[dict]:
    return fetch(dsn, "SELECT * FROM erasure.operator_action ORDER BY id")


def test_rerun_escalated_task_reopens_failed_request_and_is_audited(tracking_db):
    req = make_request(
        tracking_db,
        {"crm_contacts": {"status": "escalated", "attempts": 5, "last_error": "HTTP 500"}},
        status="failed",
    )
    tid = req["tasks"]["crm_contacts"]
    res = ops.rerun_task(tracking_db, tid, "partner fixed their API", ACTOR)
    assert res.request_ids == [req["id"]]
    task = fetch(tracking_db, "SELECT status, evidence FROM erasure.task WHERE id = %s", (tid,))[0]
    assert task["status"] == "pending" and task["evidence"]["rerun"] == {"by": ACTOR, "from": "escalated"}
    assert fetch(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", (req["id"],))[0][
        "status"
    ] == ("in_progress")
    (action,) = _actions(tracking_db)
    assert (action["actor"], action["action"], action["task_id"], action["request_ids"]) == (
        ACTOR,
        "task_rerun",
        tid,
        [req["id"]],
    )
    ops_events = [e for e in _events(tracking_db, req["id"]) if e["event_type"] == "operator_action"]
    assert ops_events[0]["details"]["actor"] == ACTOR and ops_events[0]["details"]["action"] == "task_rerun"
    assert verify_chain(tracking_db).ok


def test_rerun_refuses_a_task_that_is_not_failed(tracking_db):
    req = make_request(tracking_db, {"crm_contacts": {"status": "succeeded", "attempts": 1}})
    with pytest.raises(ops.ActionError, match="only a failed or escalated task"):
        ops.rerun_task(tracking_db, req["tasks"]["crm_contacts"], "why not", ACTOR)
    assert _actions(tracking_db) == []


def test_withdraw_only_before_dispatch(tracking_db):
    fresh = make_request(tracking_db, {"crm_contacts": {}, "billing_profiles": {}}, status="received")
    res = ops.withdraw_request(tracking_db, fresh["id"], "customer withdrew the request", ACTOR)
    row = fetch(
        tracking_db, "SELECT status, status_reason FROM erasure.request WHERE id = %s", (fresh["id"],)
    )[0]
    assert row["status"] == "rejected"
    assert row["status_reason"] == f"withdrawn by {ACTOR}: customer withdrew the request"
    assert res.action == "request_withdrawn"

    started = make_request(
        tracking_db, {"crm_contacts": {"status": "in_progress", "attempts": 1}, "billing_profiles": {}}
    )
    with pytest.raises(ops.ActionError, match="already dispatched to crm_contacts"):
        ops.withdraw_request(tracking_db, started["id"], "too late", ACTOR)
    assert fetch(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", (started["id"],))[0][
        "status"
    ] == ("in_progress")
    assert [a["action"] for a in _actions(tracking_db)] == ["request_withdrawn"]


def test_replay_one_published_unacked_event(tracking_db):
    req = make_request(tracking_db, {"marketing_events": {"status": "awaiting_ack", "attempts": 1}})
    tid = req["tasks"]["marketing_events"]
    eid = str(uuid.uuid4())
    conn = psycopg2.connect(tracking_db)
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload, published_at, publish_count)
               VALUES (%s, %s, 'erasure.events', 'k', '{}'::jsonb, now(), 1)""",
            (eid, tid),
        )
    conn.close()
    ops.replay_event(tracking_db, eid, "partner lost the message", ACTOR)
    assert (
        fetch(tracking_db, "SELECT published_at FROM erasure.outbox WHERE event_id = %s", (eid,))[0][
            "published_at"
        ]
        is None
    )
    kinds = [e["event_type"] for e in _events(tracking_db, req["id"])]
    assert kinds[-2:] == ["event_replayed", "operator_action"]
    with pytest.raises(ops.ActionError, match="not published yet"):
        ops.replay_event(tracking_db, eid, "again", ACTOR)
    with pytest.raises(ops.ActionError, match="not a UUID"):
        ops.replay_event(tracking_db, "nope", "x", ACTOR)


def test_hold_place_and_release_are_audited_with_the_user(tracking_db, catalog):
    sid = f"cus_{uuid.uuid4().hex[:10]}"
    req = make_request(tracking_db, {"crm_contacts": {}}, subject_id=sid)
    placed = ops.place_hold(tracking_db, catalog, "customer", sid, "litigation 2026-17", ACTOR)
    assert placed.request_ids == [req["id"]] and placed.detail["requests_held"] == [req["id"]]
    released = ops.release_hold(tracking_db, placed.detail["hold_id"], "litigation closed", "airflow:admin")
    assert released.detail["requests_released"] == [req["id"]]
    hold = fetch(tracking_db, "SELECT placed_by, released_by FROM erasure.legal_hold")[0]
    assert (hold["placed_by"], hold["released_by"]) == (ACTOR, "airflow:admin")
    assert [(a["action"], a["actor"], a["reason"]) for a in _actions(tracking_db)] == [
        ("hold_placed", ACTOR, "litigation 2026-17"),
        ("hold_released", "airflow:admin", "litigation closed"),
    ]
    with pytest.raises(ops.ActionError, match="already released"):
        ops.release_hold(tracking_db, placed.detail["hold_id"], "again", ACTOR)
    with pytest.raises(ops.ActionError, match="reason: is required"):
        ops.place_hold(tracking_db, catalog, "customer", sid, "  ", ACTOR)
    assert verify_chain(tracking_db).ok


def test_operator_action_log_is_append_only(tracking_db):
    req = make_request(tracking_db, {"crm_contacts": {}}, status="received")
    ops.withdraw_request(tracking_db, req["id"], "withdrawn", ACTOR)
    conn = psycopg2.connect(tracking_db)
    try:
        with pytest.raises(psycopg2.Error, match="append-only"), conn, conn.cursor() as cur:
            cur.execute("UPDATE erasure.operator_action SET actor = 'someone else'")
        with pytest.raises(psycopg2.Error, match="append-only"), conn, conn.cursor() as cur:
            cur.execute("DELETE FROM erasure.operator_action")
    finally:
        conn.close()


def test_overview_request_detail_and_target_health(tracking_db, catalog):
    now = datetime.now(UTC)
    sid = f"cus_{uuid.uuid4().hex[:10]}"
    overdue = make_request(tracking_db, {"crm_contacts": {}}, due_in=timedelta(days=-1), subject_id=sid)
    make_request(tracking_db, {"crm_contacts": {}}, due_in=timedelta(days=3))
    make_request(
        tracking_db,
        {"crm_contacts": {"status": "escalated", "attempts": 5, "last_error": f"HTTP 500 for {sid}"}},
        status="failed",
    )
    ov = model.overview(tracking_db, catalog, now)
    assert ov["total"] == 3 and ov["open"] == 2 and ov["overdue"] == 1 and ov["due_soon"] == 1
    assert ov["requests_by_status"]["failed"] == 1
    assert {t["team"]: t["escalated"] for t in ov["teams"]} == {"crm": 1}
    assert ov["throughput"][-1]["received"] == 3 and len(ov["throughput"]) == model.THROUGHPUT_DAYS
    assert ov["due_first"][0]["id"] == overdue["id"] and sid not in str(ov)

    detail = model.request_detail(tracking_db, overdue["id"], model.Links(""), hmac_key=b"k" * 32)
    assert detail is not None and sid not in str(detail)
    assert detail["subject"] == model.mask(sid) and detail["subject_hash"].startswith("hmac-sha256:")
    assert [e["event_type"] for e in detail["tasks"][0]["timeline"]] == ["task_created"]
    assert detail["can_withdraw"] is True  # open, and no target touched yet
    health = {t["target"]: t for t in model.target_health(tracking_db, catalog, now)["targets"]}
    crm = health["crm_contacts"]
    assert (crm["tasks"], crm["escalated"], crm["owner"]) == (3, 1, "crm")
    assert crm["last_error"] == f"HTTP 500 for {model.mask(sid)}"  # identifiers in free text are masked


def test_mask_hides_the_identifier():
    assert model.mask("cus_8f3k2j9xq1") == "cus_••••q1"
    assert model.mask("emp_123") == "emp_••••"
    assert model.mask("abc") == "••••"
    assert model.redact({"url": "/x/cus_1", "n": [1, "cus_1"]}, {"cus_1": "M"}) == {
        "url": "/x/M",
        "n": [1, "M"],
    }
