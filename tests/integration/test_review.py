"""The review gate on a real tracking store: the catalog's ``review`` rules put requests ``in_review`` at
intake (never dispatched, SLA clock running), a run claims each once (what the reviewer sees is
masked), approve releases a request to dispatch, reject closes it with the reason; both audited."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extras
import pytest

from erasure.catalog import Review
from erasure.evidence.audit import verify_chain
from erasure.intake import register_requests
from erasure.reconcile import SLA_REQUEST_STATUSES
from erasure.review import ReviewError, claim, decide
from erasure.tracking import request as request_sql
from erasure.tracking import task as task_sql
from tests.helpers.reconcile_data import fetch

pytestmark = pytest.mark.integration


@pytest.fixture
def review_catalog(catalog):
    return catalog.model_copy(update={"review": Review(subject_types=["employee"], jurisdictions=["CCPA"])})


def _req(subject_type: str, sid: str, jurisdiction: str = "GDPR") -> dict:
    return {
        "subject_type": subject_type,
        "subject_id": sid,
        "requested_by": "tests",
        "jurisdiction": jurisdiction,
        "external_id": f"rv-{uuid.uuid4().hex[:10]}",
    }


def test_review_rules_in_the_catalog_are_checked(catalog):
    assert Review(subject_types=["employee"]).rule_for("employee", "GDPR") == "subject type employee"
    assert Review(jurisdictions=["CCPA"]).rule_for("customer", "CCPA") == "jurisdiction CCPA"
    assert Review().rule_for("customer", "GDPR") is None
    with pytest.raises(ValueError, match="review.subject_types: unknown subject type 'robot'"):
        type(catalog).model_validate({**catalog.model_dump(), "review": {"subject_types": ["robot"]}})


def test_requests_wait_in_review_then_are_approved_or_rejected(tracking_db, review_catalog):
    emp = f"emp_{uuid.uuid4().int % 10**8:08d}"
    ccpa = f"cus_{uuid.uuid4().hex[:10]}"
    plain = f"cus_{uuid.uuid4().hex[:10]}"
    result = register_requests(
        tracking_db,
        review_catalog,
        [_req("employee", emp), _req("customer", ccpa, "CCPA"), _req("customer", plain)],
        "api",
    )
    ids = [o.request_id for o in result.outcomes]
    rows = {
        r["id"]: r
        for r in fetch(
            tracking_db, "SELECT id, status, status_reason FROM erasure.request WHERE id = ANY(%s)", (ids,)
        )
    }
    assert [(rows[i]["status"], rows[i]["status_reason"]) for i in ids] == [
        ("in_review", "review: subject type employee"),
        ("in_review", "review: jurisdiction CCPA"),
        ("in_progress", None),
    ]

    # nothing of a request in review is due for dispatch; a second submission is a duplicate
    conn = psycopg2.connect(tracking_db)
    with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        due = task_sql.due_ids(cur, "crm_contacts", 5, 15.0, 1000)
        task_of = {
            r["id"]: r["request_id"] for r in fetch(tracking_db, "SELECT id, request_id FROM erasure.task")
        }
        assert {task_of[t] for t in due} == {ids[2]}
        # the SLA clock runs: a request in review past its due date is an SLA candidate
        cur.execute("UPDATE erasure.request SET due_at = now() - interval '1 day' WHERE id = %s", (ids[0],))
        now = datetime.now(UTC)
        late = request_sql.near_or_past_due(
            cur, SLA_REQUEST_STATUSES, now, now + timedelta(days=5), "a", "b", 50
        )
        assert ids[0] in {r["id"] for r in late}
    conn.close()
    again = register_requests(tracking_db, review_catalog, [_req("employee", emp)], "api")
    assert again.outcomes[0].status == "duplicate" and again.outcomes[0].request_id == ids[0]

    # one run claims each request once; the reviewer sees no identifier in clear
    claimed = claim(tracking_db, "scheduled__run1")
    assert [c.request_id for c in claimed] == ids[:2] and [c.map_index for c in claimed] == [0, 1]
    assert all(emp not in c.body + c.subject and ccpa not in c.body + c.subject for c in claimed)
    assert "`emp_••••" in claimed[0].body and "due " in claimed[0].body
    assert claim(tracking_db, "scheduled__run2") == []

    assert decide(tracking_db, ids[0], True, "airflow:reviewer", None) == "in_progress"
    assert decide(tracking_db, ids[1], False, "airflow:reviewer", "identity not verified") == "rejected"
    with pytest.raises(ReviewError, match="already approved"):
        decide(tracking_db, ids[0], False, "airflow:other", "too late")
    with pytest.raises(ReviewError, match="no review claimed"):
        decide(tracking_db, ids[2], True, "airflow:reviewer", None)

    rows = {
        r["id"]: r
        for r in fetch(
            tracking_db, "SELECT id, status, status_reason FROM erasure.request WHERE id = ANY(%s)", (ids,)
        )
    }
    assert rows[ids[0]]["status"] == "in_progress"
    assert rows[ids[1]]["status_reason"] == "review rejected by airflow:reviewer: identity not verified"
    reviews = fetch(
        tracking_db, "SELECT request_id, decision, decided_by, reason FROM erasure.review ORDER BY 1"
    )
    assert [(r["decision"], r["decided_by"], r["reason"]) for r in reviews] == [
        ("approved", "airflow:reviewer", "approved"),
        ("rejected", "airflow:reviewer", "identity not verified"),
    ]
    actions = fetch(tracking_db, "SELECT action, actor, request_ids FROM erasure.operator_action ORDER BY id")
    assert [(a["action"], a["actor"], a["request_ids"]) for a in actions] == [
        ("review_approved", "airflow:reviewer", [ids[0]]),
        ("review_rejected", "airflow:reviewer", [ids[1]]),
    ]
    assert verify_chain(tracking_db).ok
