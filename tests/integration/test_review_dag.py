"""The review gate through the running Airflow: requests in review wait in the ``erasure_review`` DAG's
human-in-the-loop task (Airflow's Required Actions); an answer through the REST API approves one (it
goes ``in_progress``) and rejects the other with the reason, audited with the Airflow user who answered.

The requests live in the stack's own tracking database with unique subjects."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import MAIN_TRACKING_DSN
from tests.helpers.reconcile_data import cursor, fetch, make_request

pytestmark = pytest.mark.integration

DAG_ID = "erasure_review"


def in_review() -> dict:
    req = make_request(MAIN_TRACKING_DSN, {"crm_contacts": {}}, status="in_review")
    conn, cur = cursor(MAIN_TRACKING_DSN)
    cur.execute(
        "UPDATE erasure.request SET status_reason = 'review: subject type customer' WHERE id = %s",
        (req["id"],),
    )
    conn.close()
    return req


def wait_for(what: str, fn, timeout: float = 240, poll: float = 2):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(poll)


def test_approve_and_reject_in_the_hitl_task(airflow_api):
    approve, reject = in_review(), in_review()
    ids = [approve["id"], reject["id"]]
    airflow_api.wait_for_dag(DAG_ID, timeout=180)
    airflow_api.unpause(DAG_ID)
    try:
        r = airflow_api.trigger(DAG_ID, {}, run_id=f"it_review_{uuid.uuid4().hex[:8]}")
        assert r.status_code == 200, r.text
        claims = wait_for(
            "both requests claimed by a review run",
            lambda: (
                rows
                if len(
                    rows := fetch(
                        MAIN_TRACKING_DSN,
                        "SELECT request_id, dag_run_id, map_index FROM erasure.review WHERE request_id = ANY(%s)",
                        (ids,),
                    )
                )
                == 2
                else None
            ),
        )
        by_id = {c["request_id"]: c for c in claims}

        def hitl(req_id: int, method: str = "GET", **kw):
            c = by_id[req_id]
            path = f"/dags/{DAG_ID}/dagRuns/{c['dag_run_id']}/taskInstances/request.review/{c['map_index']}/hitlDetails"
            return airflow_api.request(method, path, **kw)

        for rid in ids:  # the task waits for a person (Required Actions)
            detail = wait_for(
                f"review task of request {rid}",
                lambda rid=rid: (r := hitl(rid)).status_code == 200 and r.json(),
            )
            assert detail["options"] == ["Approve", "Reject"]
            assert f"Erasure request {rid}" in detail["subject"]
        answers = {
            approve["id"]: {"chosen_options": ["Approve"], "params_input": {"reason": "verified"}},
            reject["id"]: {"chosen_options": ["Reject"], "params_input": {"reason": "identity not verified"}},
        }

        def answer_open_reviews():
            """Answer each review task still waiting. Under load Airflow 3.3.2 can lose a HITL task's
            first try to a scheduler race ("task state changed externally") and run it again with a fresh,
            unanswered detail: a person answers again in Required Actions; so does this test."""
            for rid, body in answers.items():
                d = hitl(rid)
                if d.status_code == 200 and not d.json().get("response_received"):
                    r = hitl(rid, "PATCH", json=body)
                    assert r.status_code in (200, 404, 409), r.text  # between two tries: no detail

        def statuses():
            rows = fetch(
                MAIN_TRACKING_DSN,
                "SELECT id, status, status_reason FROM erasure.request WHERE id = ANY(%s)",
                (ids,),
            )
            if all(r["status"] != "in_review" for r in rows):
                return {r["id"]: r for r in rows}
            answer_open_reviews()
            return None

        done = wait_for("both decisions applied", statuses)
        assert done[approve["id"]]["status"] == "in_progress"
        assert done[reject["id"]]["status"] == "rejected"
        assert (
            done[reject["id"]]["status_reason"] == "review rejected by airflow:admin: identity not verified"
        )
        actions = fetch(
            MAIN_TRACKING_DSN,
            "SELECT action, actor, reason FROM erasure.operator_action WHERE request_ids && %s::bigint[] ORDER BY id",
            (ids,),
        )
        assert sorted((a["action"], a["actor"], a["reason"]) for a in actions) == [
            ("review_approved", "airflow:admin", "verified"),
            ("review_rejected", "airflow:admin", "identity not verified"),
        ]
    finally:
        airflow_api.pause(DAG_ID)
