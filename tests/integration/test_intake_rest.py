"""Intake through the running Airflow (REST API v2, JWT from /auth/token): single and batch runs,
duplicates and a held subject, a request refused by the catalog check inside the run, and bad conf
refused by the Params with HTTP 400 before any run exists.

These runs go through the stack's scheduler, which uses the stack's own tracking database: every
subject id here is unique and nothing is truncated.
"""

from __future__ import annotations

import uuid

import pytest

from erasure.holds import place_hold, release_hold
from erasure.identity import IdentityCodec
from erasure.resolution import resolve_pending
from erasure.settings import get_settings
from tests.conftest import MAIN_TRACKING_DSN
from tests.helpers.db import query

pytestmark = pytest.mark.integration

DAG_ID = "erasure_intake"


def q(sql: str, *args) -> list[dict]:
    return query(MAIN_TRACKING_DSN, sql, args)


def uid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def api(airflow_api):
    airflow_api.wait_for_dag(DAG_ID, timeout=120)
    airflow_api.unpause(DAG_ID)
    return airflow_api


def run_intake(api, conf: dict) -> tuple[dict, dict | None]:
    run_id = f"it_intake_{uid()}"
    r = api.trigger(DAG_ID, conf, run_id=run_id)
    assert r.status_code == 200, r.text
    run = api.wait_for_run(DAG_ID, run_id, timeout=300)
    x = api.request(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/register/xcomEntries/return_value",
        params={"deserialize": True},
    )
    return run, (x.json()["value"] if x.status_code == 200 else None)


def invariant(result: dict) -> None:
    assert result["received"] == result["registered"] + result["duplicates"] + result["rejected"]
    assert len(result["outcomes"]) == result["received"]


def test_rest_single_request(api, identity_catalog):
    sid = f"cus_rest{uid()}"
    run, result = run_intake(
        api,
        {
            "subject_type": "customer",
            "subject_id": sid,
            "requested_by": "rest-client",
            "jurisdiction": "CCPA",
        },
    )
    assert run["state"] == "success", run
    invariant(result)
    assert (result["registered"], result["duplicates"], result["rejected"]) == (1, 0, 0)
    # registered: the run's conf and the API's log row no longer hold the id (docs/personal-data.md)
    conf = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}").json()["conf"]
    assert "subject_id" not in conf and conf.get("_minimised") is True, conf
    airflow_db = MAIN_TRACKING_DSN.rpartition("/")[0] + "/airflow"
    assert query(airflow_db, "SELECT count(*) AS n FROM log WHERE extra LIKE %s", (f"%{sid}%",))[0]["n"] == 0
    rows = q(
        "SELECT id, status, source, airflow_run_id, due_at - received_at AS sla FROM erasure.request WHERE subject_id = %s",
        sid,
    )
    # the stack's catalog has resolvers for customers: the request resolves its identity first
    assert len(rows) == 1 and rows[0]["status"] == "resolving" and rows[0]["source"] == "api"
    assert rows[0]["airflow_run_id"] == run["dag_run_id"] and rows[0]["sla"].days == 45
    assert rows[0]["id"] == result["outcomes"][0]["request_id"]
    n = q("SELECT count(*) AS n FROM erasure.task WHERE request_id = %s", rows[0]["id"])[0]["n"]
    assert n == len(identity_catalog.targets_for("customer"))


def test_rest_batch_with_duplicates_and_a_held_subject(api, catalog, identity_catalog):
    u = uid()
    held_sid = f"cus_held{u}"
    hold = place_hold(MAIN_TRACKING_DSN, "customer", held_sid, "litigation (test)", "it-legal", catalog)
    try:
        batch = [
            {
                "subject_type": "customer",
                "subject_id": f"cus_b1{u}",
                "requested_by": "crm",
                "external_id": f"B1-{u}",
            },
            {"subject_type": "customer", "subject_id": f"cus_b2{u}", "requested_by": "crm"},
            {
                "subject_type": "employee",
                "subject_id": f"emp_{int(u[:8], 16) % 10**9:09d}",
                "requested_by": "hr",
            },
            {
                "subject_type": "customer",
                "subject_id": f"cus_b1{u}",
                "requested_by": "crm",
                "external_id": f"B1-{u}",
            },
            {
                "subject_type": "customer",
                "subject_id": f"cus_b2{u}",
                "requested_by": "crm",
                "external_id": f"B2b-{u}",
            },
            {
                "subject_type": "customer",
                "subject_id": held_sid,
                "requested_by": "crm",
                "reason": "closing account",
            },
        ]
        run, result = run_intake(api, {"requests": batch})
        assert run["state"] == "success", run
        invariant(result)
        assert (
            result["received"],
            result["registered"],
            result["held"],
            result["duplicates"],
            result["rejected"],
        ) == (6, 4, 1, 2, 0)
        o = result["outcomes"]
        assert [x["status"] for x in o] == ["registered"] * 3 + ["duplicate"] * 2 + ["registered"]
        assert o[3]["request_id"] == o[0]["request_id"] and o[4]["request_id"] == o[1]["request_id"]
        held = q("SELECT id, status, status_reason FROM erasure.request WHERE subject_id = %s", held_sid)[0]
        assert held["status"] == "resolving"  # holds are applied once the identity is resolved
        resolve_pending(
            MAIN_TRACKING_DSN, identity_catalog, get_settings(), IdentityCodec.from_settings(get_settings())
        )
        held = q("SELECT id, status, status_reason FROM erasure.request WHERE subject_id = %s", held_sid)[0]
        assert held["status"] == "held" and "litigation (test)" in held["status_reason"]
        # re-submitting the same batch registers nothing new
        run2, result2 = run_intake(api, {"requests": batch})
        assert run2["state"] == "success" and result2["duplicates"] == 6 and result2["registered"] == 0
    finally:
        release_hold(MAIN_TRACKING_DSN, "it-legal", hold_id=hold.hold_id)
    assert (
        q("SELECT status FROM erasure.request WHERE subject_id = %s", held_sid)[0]["status"] == "in_progress"
    )


def test_rest_request_refused_by_catalog_check_fails_run_and_is_recorded(api):
    sid = f"cus_wrongtype{uid()}"
    # passes the Params (the id matches *some* subject type) but not the employee id pattern
    run, result = run_intake(
        api, {"subject_type": "employee", "subject_id": sid, "requested_by": "rest-client"}
    )
    assert run["state"] == "failed"
    invariant(result)
    assert result["rejected"] == 1 and result["outcomes"][0]["errors"][0]["field"] == "subject_id"
    rej = q(
        "SELECT errors, source FROM erasure.rejected_request WHERE airflow_run_id = %s", run["dag_run_id"]
    )
    assert (
        len(rej) == 1
        and rej[0]["source"] == "api"
        and "id pattern of subject type 'employee'" in rej[0]["errors"][0]["problem"]
    )
    assert q("SELECT count(*) AS n FROM erasure.request WHERE subject_id = %s", sid)[0]["n"] == 0
    log = api.request(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/report/logs/1",
    )
    assert log.status_code == 200 and "REJECTED request #0" in log.text


_G = {"subject_type": "customer", "subject_id": "cus_abcdef", "requested_by": "rest-client"}
BAD_CONF = [
    ("unknown_subject_type", {**_G, "subject_type": "alien"}, "subject_type"),
    ("sql_in_subject_id", {**_G, "subject_id": "cus_1' OR '1'='1"}, "subject_id"),
    ("id_matches_no_type", {**_G, "subject_id": "12345"}, "subject_id"),
    ("id_not_string", {**_G, "subject_id": 12345}, "subject_id"),
    ("id_with_newline", {**_G, "subject_id": "cus_abcdef\n"}, "subject_id"),
    ("requested_by_too_long", {**_G, "requested_by": "a" * 201}, "requested_by"),
    ("requested_by_empty", {**_G, "requested_by": ""}, "requested_by"),
    ("reason_nul", {**_G, "reason": "x\u0000y"}, "reason"),
    ("reason_too_long", {**_G, "reason": "r" * 1001}, "reason"),
    ("external_id_sql", {**_G, "external_id": "1; DROP TABLE erasure.request"}, "external_id"),
    ("unknown_jurisdiction", {**_G, "jurisdiction": "MARS"}, "jurisdiction"),
    ("requests_not_list", {"requests": "cus_abcdef"}, "requests"),
    ("batch_item_extra_field", {"requests": [{**_G, "email": "a@b.c"}]}, "requests"),
    (
        "batch_item_missing_field",
        {"requests": [{"subject_type": "customer", "subject_id": "cus_abcdef"}]},
        "requests",
    ),
    ("batch_item_wrong_type_id", {"requests": [{**_G, "subject_type": "employee"}]}, "requests"),
    ("batch_empty", {"requests": []}, "requests"),
    ("batch_too_large", {"requests": [_G] * 1001}, "requests"),
]


def test_bad_conf_is_refused_by_airflow_before_any_run(api):
    before = api.request("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 1}).json()["total_entries"]
    problems = []
    for name, conf, param in BAD_CONF:
        run_id = f"it_bad_{name}_{uid()}"
        r = api.trigger(DAG_ID, conf, run_id=run_id)
        if r.status_code not in (400, 422) or f"param {param}" not in r.text:
            problems.append(f"{name}: {r.status_code} {r.text[:200]}")
        elif api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").status_code != 404:
            problems.append(f"{name}: a run was created")
    assert problems == []
    after = api.request("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 1}).json()["total_entries"]
    assert after == before
