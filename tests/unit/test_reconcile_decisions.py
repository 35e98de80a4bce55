"""Reconcile's decisions, without a database: retry or escalate a failed task, replay or escalate an
unacknowledged event. The SQL that feeds them is tested against Postgres in tests/integration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erasure.catalog import load_catalog
from erasure.reconcile import Action, replay_decision, retry_decision

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(ROOT / "include" / "catalog")


def _failed(**over):
    row = {
        "task_id": 1,
        "target": "crm_contacts",
        "attempts": 1,
        "last_error": "HTTP 503",
        "next_attempt_at": NOW - timedelta(hours=1),
        "updated_at": NOW - timedelta(seconds=30),
        "evidence": {},
    }
    return {**row, **over}


def test_failed_task_waits_its_retry_delay_then_retries(catalog):
    t = catalog.target("crm_contacts")
    row = _failed(attempts=2, updated_at=NOW - timedelta(seconds=10))
    d = retry_decision(row, t, NOW)
    assert d.action == Action.WAIT and d.due == row["updated_at"] + t.retry_delay(2)
    d = retry_decision(row, t, row["updated_at"] + t.retry_delay(2))
    assert d.action == Action.RETRY


def test_a_later_next_attempt_is_kept(catalog):
    t = catalog.target("crm_contacts")
    later = NOW + timedelta(days=2)
    assert retry_decision(_failed(next_attempt_at=later), t, NOW).due == later


@pytest.mark.parametrize(
    ("row", "target", "reason"),
    [
        (_failed(attempts=99), "crm_contacts", "failed 99 of max_attempts"),
        (
            _failed(evidence={"permanent": True}, last_error="HTTP 400"),
            "crm_contacts",
            "permanent failure: HTTP 400",
        ),
        (_failed(target="gone"), None, "target 'gone' is not in the catalog"),
    ],
)
def test_escalation_names_its_reason(catalog, row, target, reason):
    d = retry_decision(row, catalog.target(target) if target else None, NOW)
    assert d.action == Action.ESCALATE and reason in d.reason


def _unacked(**over):
    row = {"event_id": "e1", "publish_count": 1, "published_at": NOW - timedelta(minutes=10), "target": "x"}
    return {**row, **over}


def test_unacked_event_is_replayed_after_the_kinds_ack_timeout(catalog):
    t = next(t for t in catalog.targets if t.kind == "kafka")
    timeout = timedelta(minutes=t.spec.ack_timeout_minutes)
    row = _unacked(published_at=NOW - timeout + timedelta(seconds=1))
    assert replay_decision(row, t, NOW).action == Action.NOTHING
    d = replay_decision(_unacked(published_at=NOW - timeout), t, NOW)
    assert d.action == Action.REPLAY and "ack timeout" in d.reason
    d = replay_decision(_unacked(published_at=NOW - timeout, publish_count=t.max_attempts), t, NOW)
    assert d.action == Action.ESCALATE and f"after {t.max_attempts} publication(s)" in d.reason
