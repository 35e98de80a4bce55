"""The status query and `python -m erasure.cli status`, against the real tracking store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from erasure.status import StatusError, request_status, subject_status
from tests.helpers.reconcile_data import fetch, make_request

pytestmark = pytest.mark.integration


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERASURE_TRACKING_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "erasure.cli", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _seed(dsn: str) -> dict:
    req = make_request(
        dsn,
        {
            "crm_contacts": {"status": "succeeded", "attempts": 1, "evidence": {"http_status": 204}},
            "billing_profiles": {"status": "failed", "attempts": 2, "last_error": "HTTP 503: upstream down"},
            "marketing_events": {
                "status": "awaiting_ack",
                "attempts": 1,
                "evidence": {"topic": "erasure.events"},
            },
        },
        subject_id=f"cus_{uuid.uuid4().hex[:8]}",
    )
    fetch(
        dsn,
        """
        INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload, published_at, publish_count)
        VALUES (%s, %s, 'erasure.events', 'customer:x', '{}'::jsonb, now(), 1)
        """,
        (uuid.uuid4(), req["tasks"]["marketing_events"]),
    )
    return req


def test_status_by_id_and_external_id(tracking_db: str) -> None:
    req = _seed(tracking_db)
    by_id = request_status(req["id"], tracking_db)
    by_ext = request_status(req["external_id"], tracking_db)
    assert by_id["id"] == by_ext["id"] == req["id"]
    tasks = {t["target"]: t for t in by_id["tasks"]}
    assert set(tasks) == {"crm_contacts", "billing_profiles", "marketing_events"}
    assert tasks["billing_profiles"]["attempts"] == 2
    assert tasks["billing_profiles"]["last_error"].startswith("HTTP 503")
    assert tasks["crm_contacts"]["evidence"] == {"http_status": 204}
    assert tasks["marketing_events"]["event"]["attempt"] == 1


def test_status_unknown_reference_is_a_clear_error(tracking_db: str) -> None:
    with pytest.raises(StatusError, match="no request with id or external id 'nope'"):
        request_status("nope", tracking_db)
    with pytest.raises(StatusError, match="no request for customer:cus_missing"):
        subject_status("customer", "cus_missing", tracking_db)


def test_cli_status_request_and_subject(tracking_db: str) -> None:
    req = _seed(tracking_db)
    sid = fetch(tracking_db, "SELECT subject_id FROM erasure.request WHERE id = %s", (req["id"],))[0][
        "subject_id"
    ]

    out = _cli(tracking_db, "--request", req["external_id"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in (
        "crm_contacts",
        "billing_profiles",
        "marketing_events",
        "attempts=2",
        "HTTP 503",
        '"http_status": 204',
    ):
        assert needle in text, (needle, text)

    js = _cli(tracking_db, "--subject", f"customer:{sid}", "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert [r["id"] for r in data] == [req["id"]]
    assert {t["target"]: t["status"] for t in data[0]["tasks"]} == {
        "billing_profiles": "failed",
        "crm_contacts": "succeeded",
        "marketing_events": "awaiting_ack",
    }


def test_cli_status_errors(tracking_db: str) -> None:
    missing = _cli(tracking_db, "--request", "ext-does-not-exist")
    assert missing.returncode == 1 and "no request with id or external id" in missing.stderr
    bad = _cli(tracking_db, "--subject", "customer")
    assert bad.returncode == 1 and "expected TYPE:ID" in bad.stderr
