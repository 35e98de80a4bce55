"""The Erasure view's endpoints on the running Airflow API server (plugin ``erasure_ui``): every route
refuses an anonymous request (401) and a user without permission (403); the read-only ``viewer`` reads
but may not act; the ``operator`` (role user) acts, and each action is audited with that user.

Requests here live in the stack's own tracking database (the api-server reads it), each with a unique
subject; they are created ``received`` or ``failed`` so no dispatch run touches them before the test."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest

from erasure.airflow.ui.app import create_app
from tests.conftest import MAIN_TRACKING_DSN
from tests.helpers import ui
from tests.helpers.reconcile_data import fetch, make_request

pytestmark = pytest.mark.integration

FAKE_EVENT = str(uuid.UUID(int=0))
READS = [
    ("GET", "/erasure/ui/", None),
    ("GET", "/erasure/ui/requests?q=1", None),
    ("POST", "/erasure/ui/requests", {"data": {"identifier": "customer:cus_nobody00"}}),
    ("GET", "/erasure/ui/requests/1", None),
    ("GET", "/erasure/ui/targets", None),
    ("GET", "/erasure/ui/holds", None),
    ("GET", "/erasure/ui/actions", None),
    ("GET", "/erasure/api/overview", None),
    ("GET", "/erasure/api/requests?q=1", None),
    ("POST", "/erasure/api/requests/search", {"json": {"identifier": "customer:cus_nobody00"}}),
    ("GET", "/erasure/api/requests/1", None),
    ("GET", "/erasure/api/targets", None),
    ("GET", "/erasure/api/holds", None),
    ("GET", "/erasure/api/actions", None),
]
WRITES = [
    (
        "POST",
        "/erasure/api/holds",
        {"json": {"subject_type": "customer", "subject_id": "cus_nobody00", "reason": "r"}},
    ),
    ("POST", "/erasure/api/holds/999999999/release", {"json": {"reason": "r"}}),
    ("POST", "/erasure/api/tasks/999999999/rerun", {"json": {"reason": "r"}}),
    ("POST", f"/erasure/api/events/{FAKE_EVENT}/replay", {"json": {"reason": "r"}}),
    ("POST", "/erasure/api/requests/999999999/withdraw", {"json": {"reason": "r"}}),
]


@pytest.fixture(scope="module", autouse=True)
def _served() -> None:
    ui.require_plugin()


def call(method: str, path: str, kw: dict | None, user: str | None) -> httpx.Response:
    return httpx.request(method, ui.BASE + path, headers=ui.headers(user), timeout=60, **(kw or {}))


def test_every_route_of_the_app_is_covered_here():
    app = create_app()
    routes = {(m, getattr(r, "path", "")) for r in app.routes for m in getattr(r, "methods", ()) or ()}
    covered = set()
    for m, path, _ in READS + WRITES:
        p = path.split("?")[0]
        for r_m, r_p in routes:
            pattern = "/erasure" + r_p
            if r_m == m and _matches(pattern, p):
                covered.add((r_m, r_p))
    assert routes - {("GET", "/static"), ("HEAD", "/static")} - covered == set()


def _matches(pattern: str, path: str) -> bool:
    a, b = pattern.strip("/").split("/"), path.strip("/").split("/")
    return len(a) == len(b) and all(
        x == y or (x.startswith("{") and x.endswith("}")) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    ("method", "path", "kw"), READS + WRITES, ids=[f"{m} {p}" for m, p, _ in READS + WRITES]
)
def test_anonymous_and_unauthorised_users_are_refused(method, path, kw):
    assert call(method, path, kw, None).status_code == 401
    r = httpx.request(
        method, ui.BASE + path, headers={"Authorization": "Bearer not-a-token"}, timeout=60, **(kw or {})
    )
    assert r.status_code in (401, 403)
    r = call(method, path, kw, "outsider")
    assert r.status_code == 403, r.text
    assert "cus_nobody00" not in r.text


@pytest.mark.parametrize(("method", "path", "kw"), READS, ids=[f"{m} {p}" for m, p, _ in READS])
def test_viewer_reads(method, path, kw):
    r = call(method, path, kw, "viewer")
    assert r.status_code in (200, 404), r.text  # request 1 may not exist in this store
    assert "cus_nobody00" not in r.text


@pytest.mark.parametrize(("method", "path", "kw"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_viewer_may_not_act(method, path, kw):
    before = fetch(MAIN_TRACKING_DSN, "SELECT count(*) AS n FROM erasure.operator_action")[0]["n"]
    r = call(method, path, kw, "viewer")
    assert r.status_code == 403, r.text
    assert fetch(MAIN_TRACKING_DSN, "SELECT count(*) AS n FROM erasure.operator_action")[0]["n"] == before


def test_operator_acts_and_every_action_is_audited_with_the_user(catalog):
    sid = f"cus_{uuid.uuid4().hex[:12]}"
    fresh = make_request(MAIN_TRACKING_DSN, {"crm_contacts": {}}, status="received", subject_id=sid)
    failed = make_request(
        MAIN_TRACKING_DSN,
        {"crm_contacts": {"status": "escalated", "attempts": 5, "last_error": "HTTP 500"}},
        status="failed",
        due_in=timedelta(days=20),
    )
    r = call(
        "POST",
        "/erasure/api/holds",
        {"json": {"subject_type": "customer", "subject_id": sid, "reason": "litigation"}},
        "operator",
    )
    assert r.status_code == 200, r.text
    hold_id = r.json()["hold_id"]
    assert r.json()["requests_held"] == [fresh["id"]]
    r = call("POST", f"/erasure/api/holds/{hold_id}/release", {"json": {"reason": "closed"}}, "operator")
    assert r.status_code == 200 and r.json()["requests_released"] == [fresh["id"]], r.text
    tid = failed["tasks"]["crm_contacts"]
    r = call("POST", f"/erasure/api/tasks/{tid}/rerun", {"json": {"reason": "partner fixed"}}, "operator")
    assert r.status_code == 200, r.text
    r = call("POST", f"/erasure/api/tasks/{tid}/rerun", {"json": {"reason": "twice"}}, "operator")
    assert r.status_code == 409 and "only a failed or escalated task" in r.json()["detail"]
    r = call(
        "POST",
        f"/erasure/api/requests/{fresh['id']}/withdraw",
        {"json": {"reason": "customer withdrew"}},
        "operator",
    )
    assert r.status_code == 200, r.text
    r = call(
        "POST",
        "/erasure/api/holds",
        {"json": {"subject_type": "customer", "subject_id": sid, "reason": ""}},
        "operator",
    )
    assert r.status_code == 422  # the reason is required

    rows = fetch(
        MAIN_TRACKING_DSN,
        "SELECT actor, action, reason FROM erasure.operator_action WHERE request_ids && %s::bigint[] ORDER BY id",
        ([fresh["id"], failed["id"]],),
    )
    assert [(a["actor"], a["action"], a["reason"]) for a in rows] == [
        ("airflow:operator", "hold_placed", "litigation"),
        ("airflow:operator", "hold_released", "closed"),
        ("airflow:operator", "task_rerun", "partner fixed"),
        ("airflow:operator", "request_withdrawn", "customer withdrew"),
    ]
    assert (
        fetch(MAIN_TRACKING_DSN, "SELECT status FROM erasure.request WHERE id = %s", (fresh["id"],))[0][
            "status"
        ]
        == "rejected"
    )

    detail = call("GET", f"/erasure/api/requests/{fresh['id']}", None, "viewer").json()
    assert sid not in str(detail) and detail["subject"].startswith("cus_••••")
    assert [
        e["details"]["action"] for e in detail["request_events"] if e["event_type"] == "operator_action"
    ] == [
        "hold_placed",
        "hold_released",
        "request_withdrawn",
    ]
    found = call(
        "POST", "/erasure/api/requests/search", {"json": {"identifier": f"customer:{sid}"}}, "viewer"
    ).json()
    assert [r["id"] for r in found["requests"]] == [fresh["id"]] and sid not in str(found)


def test_overview_numbers_are_the_tracking_store_s():
    q = "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'failed') AS failed FROM erasure.request"
    before = fetch(MAIN_TRACKING_DSN, q)[0]
    data = call("GET", "/erasure/api/overview", None, "viewer").json()
    after = fetch(MAIN_TRACKING_DSN, q)[0]
    assert before["n"] <= data["total"] <= after["n"]
    assert sum(data["requests_by_status"].values()) == data["total"]
