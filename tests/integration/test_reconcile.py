"""Reconcile against the real tracking store, real dispatch + partner HTTP server, real Kafka outbox.

Time: reconcile takes ``now``; tests pass "real now + offset" to let backoffs and ack timeouts elapse
without sleeping. Dispatch and the outbox use the database clock, so they only ever see work that is
due in real time (reconcile puts a retried task back to ``pending``, which is due at once).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from erasure.reconcile import ReconcileResult, reconcile
from erasure.settings import get_settings
from tests.helpers.alert_receivers import webhook_receiver
from tests.helpers.reconcile_data import build_catalog, fetch, make_request, snapshot

pytestmark = pytest.mark.integration

EVIDENCE = {"http_status": 204, "response_id": "r-1"}
NO_DELIVERY = ("replay", "retry", "recompute", "sla")


def _now(offset: timedelta = timedelta(0)) -> datetime:
    return datetime.now(UTC) + offset


def _events(dsn: str, task_id: int, event_type: str) -> list[dict]:
    return fetch(
        dsn, "SELECT * FROM erasure.event_log WHERE task_id = %s AND event_type = %s", (task_id, event_type)
    )


# ------------------------------------------------------------------------------------ retry + escalate
def test_failing_target_is_retried_with_backoff_then_escalated_with_one_alert(
    tracking_db: str, tmp_path: Path
) -> None:
    from erasure.dispatch import plan_batches, run_batch
    from erasure_demo.partners.http_service import PartnerServer

    with webhook_receiver() as hook, PartnerServer("crm", tmp_path / "crm.sqlite") as partner:
        partner.service.faults.update({"error_rate": 1.0, "error_status": 503})
        cat = build_catalog(tmp_path, hook.url, partner_url=partner.url, max_attempts=3)
        req = make_request(tracking_db, {"crm_contacts": {}})
        task_id = req["tasks"]["crm_contacts"]

        def dispatch() -> int:
            batches = plan_batches(tracking_db, cat, "crm_contacts")
            for b in batches:
                run_batch(
                    tracking_db,
                    cat,
                    "crm_contacts",
                    b["task_ids"],
                    claim_key=uuid.uuid4().hex,
                    settings=get_settings(),
                )
            return len(batches)

        def task() -> dict:
            return fetch(tracking_db, "SELECT * FROM erasure.task WHERE id = %s", (task_id,))[0]

        for attempt in (1, 2, 3):
            assert dispatch() == 1, f"attempt {attempt} should be due"
            t = task()
            assert (t["status"], t["attempts"]) == ("failed", attempt)
            assert "503" in (t["last_error"] or "")
            if attempt == 3:
                break
            # Backoff (1 min, then 2 min): not retried before it elapsed, neither by reconcile nor dispatch.
            res = reconcile(tracking_db, cat, now=_now())
            assert res.retried == 0 and res.escalated == 0
            assert task()["status"] == "failed"
            assert dispatch() == 0
            res = reconcile(tracking_db, cat, now=_now(timedelta(minutes=2 ** (attempt - 1), seconds=5)))
            assert res.retried == 1
            assert task()["status"] == "pending"

        res = reconcile(tracking_db, cat, now=_now())
        assert (res.escalated, res.escalation_alerts, res.alerts_sent) == (1, 1, 1)
        t = task()
        assert t["status"] == "escalated" and t["attempts"] == 3
        for _ in range(3):  # re-runs: nothing new, no second alert
            again = reconcile(tracking_db, cat, now=_now(timedelta(hours=1)))
            assert again.escalated == 0 and again.alerts_sent == 0

        crm_posts = [p for p in hook.posts if p["path"] == "/alerts/crm"]
        assert len(crm_posts) == 1, hook.posts
        body = crm_posts[0]["body"]
        assert body["kind"] == "task_escalated" and body["target"] == "crm_contacts"
        assert body["request_id"] == req["id"] and "503" in body["message"]
        assert crm_posts[0]["idempotency_key"] == body["dedupe_key"]
        alerts = fetch(tracking_db, "SELECT * FROM erasure.alert")
        assert len(alerts) == 1 and alerts[0]["sent_at"] is not None and alerts[0]["team"] == "crm"

        assert len(_events(tracking_db, task_id, "task_retried")) == 2
        assert len(_events(tracking_db, task_id, "task_escalated")) == 1
        assert len(_events(tracking_db, task_id, "task_failed")) == 3
        r = fetch(
            tracking_db, "SELECT status, status_reason FROM erasure.request WHERE id = %s", (req["id"],)
        )[0]
        assert r["status"] == "failed" and "crm_contacts" in r["status_reason"]


def test_permanent_failure_is_escalated_at_once(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        req = make_request(
            tracking_db,
            {
                "crm_contacts": {
                    "status": "failed",
                    "attempts": 1,
                    "last_error": "HTTP 422: invalid subject",
                    "evidence": {"permanent": True, "http_status": 422},
                },
                "billing_profiles": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
            },
        )
        res = reconcile(tracking_db, cat)
        assert res.escalated == 1 and res.alerts_sent == 1 and res.failed == 1
        assert [p["body"]["target"] for p in hook.posts] == ["crm_contacts"]
        t = fetch(
            tracking_db, "SELECT status FROM erasure.task WHERE id = %s", (req["tasks"]["crm_contacts"],)
        )
        assert t[0]["status"] == "escalated"


def test_task_escalated_elsewhere_gets_exactly_one_alert(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        make_request(
            tracking_db, {"crm_contacts": {"status": "escalated", "attempts": 2, "last_error": "boom"}}
        )
        assert reconcile(tracking_db, cat).escalation_alerts == 1
        assert reconcile(tracking_db, cat).escalation_alerts == 0
        assert len(hook.bodies("task_escalated")) == 1


def test_failed_alert_send_is_recorded_and_retried_next_run(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        make_request(tracking_db, {"crm_contacts": {"status": "escalated", "attempts": 5, "last_error": "x"}})
        hook.fail_next = 1
        first = reconcile(tracking_db, cat)
        assert (first.alerts_sent, first.alerts_failed) == (0, 1)
        row = fetch(tracking_db, "SELECT * FROM erasure.alert")[0]
        assert row["sent_at"] is None and row["send_attempts"] == 1 and "HTTP 500" in row["send_error"]
        second = reconcile(tracking_db, cat)
        assert (second.alerts_sent, second.alerts_failed) == (1, 0)
        row = fetch(tracking_db, "SELECT * FROM erasure.alert")[0]
        assert row["sent_at"] is not None and row["send_attempts"] == 2 and row["send_error"] is None
        assert len(hook.bodies()) == 1  # one successful delivery; the failed POST was answered 500
        assert reconcile(tracking_db, cat).alerts_sent == 0


# ------------------------------------------------------------------------------------ replay
def _partner_consume(bootstrap: str, topic: str, group: str, want: int, timeout: float = 60) -> list[dict]:
    """A real partner consumer: reads erasure events from ``topic`` (its own group)."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    c.subscribe([topic])
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append(json.loads(m.value()))
    finally:
        c.close()
    return got


def test_dropped_event_is_replayed_then_acknowledged(
    tracking_db: str, tmp_path: Path, kafka_bootstrap: str, unique_topic
) -> None:
    from confluent_kafka import Producer

    from erasure.ack_auth import sign_headers
    from erasure.events import new_ack
    from erasure.outbox import consume_acks, enqueue_due, publish_pending

    ACK_KEY = "marketing-events-test-ack-key-" + uuid.uuid4().hex  # noqa: N806

    topic, ack_topic = unique_topic("erasure.events.test"), unique_topic("erasure.acks.test", partitions=1)
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url, topic=topic, ack_topic=ack_topic, ack_timeout_minutes=5)
        req = make_request(tracking_db, {"marketing_events": {}})
        task_id = req["tasks"]["marketing_events"]
        assert enqueue_due(tracking_db, cat).enqueued == 1
        assert publish_pending(tracking_db, kafka_bootstrap).published == 1
        group = f"partner-{uuid.uuid4().hex[:8]}"

        # The partner receives the event and drops it (no ack).
        first = _partner_consume(kafka_bootstrap, topic, group, want=1)
        assert len(first) == 1
        event_id = first[0]["event_id"]

        # Before the ack timeout nothing happens; after it, the event is replayed with the same id.
        assert reconcile(tracking_db, cat, now=_now(timedelta(minutes=4))).replayed == 0
        res = reconcile(tracking_db, cat, now=_now(timedelta(minutes=6)))
        assert res.replayed == 1 and res.escalated == 0
        ob = fetch(tracking_db, "SELECT * FROM erasure.outbox WHERE task_id = %s", (task_id,))
        assert len(ob) == 1 and str(ob[0]["event_id"]) == event_id and ob[0]["published_at"] is None
        assert len(_events(tracking_db, task_id, "event_replayed")) == 1
        # A second reconcile before re-publication does not replay it again.
        assert reconcile(tracking_db, cat, now=_now(timedelta(minutes=6))).replayed == 0

        assert publish_pending(tracking_db, kafka_bootstrap).published == 1
        second = _partner_consume(kafka_bootstrap, topic, group, want=1)
        assert [e["event_id"] for e in second] == [event_id]  # same event id: the partner can dedupe

        # This time the partner erases and acknowledges.
        p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
        ack_value = new_ack(event_id, "marketing_events", "erased", {"rows": 1}).to_bytes()
        p.produce(ack_topic, value=ack_value, headers=sign_headers(ACK_KEY, ack_value))  # signed (issue 17)
        assert p.flush(30) == 0
        acks = consume_acks(
            tracking_db,
            kafka_bootstrap,
            catalog=cat,
            topics=[ack_topic],
            group_id=f"acks-{uuid.uuid4().hex[:8]}",
            ack_keys={"marketing_events": ACK_KEY},
        )
        assert acks.tasks_succeeded == 1

        res = reconcile(tracking_db, cat, now=_now(timedelta(minutes=30)))
        assert res.completed == 1 and res.replayed == 0
        r = fetch(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", (req["id"],))[0]
        assert r["status"] == "completed"
        ob = fetch(tracking_db, "SELECT * FROM erasure.outbox WHERE task_id = %s", (task_id,))[0]
        assert ob["publish_count"] == 2 and ob["acked_at"] is not None
        assert hook.posts == []


def test_unacked_event_is_escalated_after_max_publications(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url, ack_timeout_minutes=5, max_attempts=3)
        req = make_request(tracking_db, {"marketing_events": {"status": "awaiting_ack", "attempts": 1}})
        task_id = req["tasks"]["marketing_events"]
        fetch(
            tracking_db,
            """
            INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload, published_at, publish_count)
            VALUES (%s, %s, 'erasure.events', 'customer:x', '{}'::jsonb, now(), 3)
            """,
            (uuid.uuid4(), task_id),
        )
        res = reconcile(tracking_db, cat, now=_now(timedelta(minutes=10)))
        assert (res.replayed, res.escalated, res.alerts_sent) == (0, 1, 1)
        body = hook.bodies("task_escalated")[0]
        assert body["target"] == "marketing_events" and "3 publication" in body["message"]
        assert hook.posts[0]["path"] == "/alerts/marketing"
        assert reconcile(tracking_db, cat, now=_now(timedelta(minutes=20))).changes == 0


# ------------------------------------------------------------------------------------ SLA
def test_request_past_due_raises_one_sla_alert_naming_the_blocking_target(
    tracking_db: str, tmp_path: Path
) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        req = make_request(
            tracking_db,
            {
                "crm_contacts": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
                "billing_profiles": {"status": "failed", "attempts": 1, "last_error": "HTTP 503"},
            },
            due_in=timedelta(days=-1),
        )
        results = [reconcile(tracking_db, cat) for _ in range(3)]
        assert [r.sla_alerts for r in results] == [1, 0, 0]
        posts = [p for p in hook.posts if p["path"] == "/alerts/privacy"]
        assert len(posts) == 1
        body = posts[0]["body"]
        assert body["kind"] == "sla_breached" and body["request_id"] == req["id"]
        assert "billing_profiles" in body["message"] and "crm_contacts" not in body["message"]
        assert [b["target"] for b in body["details"]["blocking_targets"]] == ["billing_profiles"]
        assert body["details"]["blocking_targets"][0]["owner"] == "billing"
        assert req["external_id"] in body["message"]


def test_approaching_due_date_then_breach_one_alert_each(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        make_request(tracking_db, {"crm_contacts": {}}, due_in=timedelta(days=10))
        assert reconcile(tracking_db, cat, sla_warn_days=5).sla_alerts == 0
        assert reconcile(tracking_db, cat, now=_now(timedelta(days=6)), sla_warn_days=5).sla_alerts == 1
        assert reconcile(tracking_db, cat, now=_now(timedelta(days=7)), sla_warn_days=5).sla_alerts == 0
        assert reconcile(tracking_db, cat, now=_now(timedelta(days=11)), sla_warn_days=5).sla_alerts == 1
        assert reconcile(tracking_db, cat, now=_now(timedelta(days=12)), sla_warn_days=5).sla_alerts == 0
        assert [b["kind"] for b in hook.bodies()] == ["sla_approaching", "sla_breached"]
        assert all("crm_contacts" in b["message"] for b in hook.bodies())


# ------------------------------------------------------------------------------------ completion
def test_request_completes_only_when_every_task_has_evidence(tracking_db: str, tmp_path: Path) -> None:
    cat = build_catalog(tmp_path, "http://127.0.0.1:9")
    req = make_request(
        tracking_db,
        {
            "crm_contacts": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
            "billing_profiles": {"status": "succeeded", "attempts": 1},  # no evidence
        },
    )
    assert reconcile(tracking_db, cat, steps=NO_DELIVERY).completed == 0
    fetch(
        tracking_db,
        "UPDATE erasure.task SET evidence = %s::jsonb WHERE id = %s",
        (json.dumps(EVIDENCE), req["tasks"]["billing_profiles"]),
    )
    assert reconcile(tracking_db, cat, steps=NO_DELIVERY).completed == 1
    r = fetch(tracking_db, "SELECT status, completed_at FROM erasure.request WHERE id = %s", (req["id"],))[0]
    assert r["status"] == "completed" and r["completed_at"] is not None


def test_completed_request_never_regresses(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        req = make_request(
            tracking_db,
            {
                "crm_contacts": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
                "marketing_events": {
                    "status": "succeeded",
                    "attempts": 1,
                    "evidence": {"ack": {"outcome": "erased"}},
                },
            },
            due_in=timedelta(days=-3),  # completed late: still no SLA alert once complete
        )
        # Complete it first (the SLA step runs after recompute, so no alert for a just-completed request).
        assert reconcile(tracking_db, cat).completed == 1
        # Then everything that could pull it back: a late failure of a task, an unacked old event.
        fetch(
            tracking_db,
            "UPDATE erasure.task SET status = 'failed', attempts = 9, last_error = 'late' WHERE id = %s",
            (req["tasks"]["crm_contacts"],),
        )
        fetch(
            tracking_db,
            """
            INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload, published_at, publish_count)
            VALUES (%s, %s, 'erasure.events', 'customer:x', '{}'::jsonb, now() - interval '1 day', 1)
            """,
            (uuid.uuid4(), req["tasks"]["marketing_events"]),
        )
        before = snapshot(tracking_db)
        for _ in range(3):
            res = reconcile(tracking_db, cat, now=_now(timedelta(days=2)))
            assert res.changes == 0, res
        assert snapshot(tracking_db) == before
        r = fetch(tracking_db, "SELECT status FROM erasure.request WHERE id = %s", (req["id"],))[0]
        assert r["status"] == "completed"
        assert hook.posts == []


def test_failed_request_completes_after_late_success(tracking_db: str, tmp_path: Path) -> None:
    """An escalated task that later succeeds (e.g. a late ack) completes the failed request."""
    cat = build_catalog(tmp_path, "http://127.0.0.1:9")
    req = make_request(
        tracking_db, {"crm_contacts": {"status": "escalated", "attempts": 3, "last_error": "x"}}
    )
    assert reconcile(tracking_db, cat, steps=NO_DELIVERY).failed == 1
    fetch(
        tracking_db,
        "UPDATE erasure.task SET status = 'succeeded', evidence = %s::jsonb WHERE id = %s",
        (json.dumps(EVIDENCE), req["tasks"]["crm_contacts"]),
    )
    assert reconcile(tracking_db, cat, steps=NO_DELIVERY).completed == 1


def test_reconcile_is_idempotent_once_everything_is_complete(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        for _ in range(3):
            make_request(
                tracking_db,
                {
                    "crm_contacts": {"status": "succeeded", "attempts": 1, "evidence": EVIDENCE},
                    "billing_profiles": {"status": "succeeded", "attempts": 2, "evidence": EVIDENCE},
                },
                status="received",
            )
        first = reconcile(tracking_db, cat)
        assert first.completed == 3
        before = snapshot(tracking_db)
        runs: list[ReconcileResult] = [reconcile(tracking_db, cat) for _ in range(5)]
        assert [r.changes for r in runs] == [0] * 5
        assert snapshot(tracking_db) == before
        assert hook.posts == []


def test_received_request_moves_to_in_progress_once_work_started(tracking_db: str, tmp_path: Path) -> None:
    cat = build_catalog(tmp_path, "http://127.0.0.1:9")
    idle = make_request(tracking_db, {"crm_contacts": {}}, status="received")
    busy = make_request(
        tracking_db, {"crm_contacts": {"status": "in_progress", "attempts": 1}}, status="received"
    )
    assert reconcile(tracking_db, cat, steps=NO_DELIVERY).started == 1
    st = {r["id"]: r["status"] for r in fetch(tracking_db, "SELECT id, status FROM erasure.request")}
    assert st == {idle["id"]: "received", busy["id"]: "in_progress"}


def test_held_request_is_left_alone(tracking_db: str, tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url)
        make_request(
            tracking_db,
            {"crm_contacts": {"status": "failed", "attempts": 9, "last_error": "x"}},
            status="held",
            due_in=timedelta(days=-1),
        )
        before = snapshot(tracking_db)
        assert reconcile(tracking_db, cat).changes == 0
        assert snapshot(tracking_db) == before and hook.posts == []


def test_target_sla_days_alerts_the_owner_once(tracking_db: str, tmp_path: Path) -> None:
    """A target's own ``sla_days``: its owner is alerted once per task still not done past it."""
    with webhook_receiver() as hook:
        cat = build_catalog(tmp_path, hook.url, crm_sla_days=3)
        late = make_request(tracking_db, {"crm_contacts": {}, "billing_profiles": {}})
        done = make_request(tracking_db, {"crm_contacts": {"status": "succeeded", "evidence": {"ok": 1}}})
        steps = ("sla",)
        assert reconcile(tracking_db, cat, now=_now(timedelta(days=2)), steps=steps).target_sla_alerts == 0
        res = reconcile(tracking_db, cat, now=_now(timedelta(days=4)), steps=steps)
        assert res.target_sla_alerts == 1
        assert reconcile(tracking_db, cat, now=_now(timedelta(days=5)), steps=steps).target_sla_alerts == 0
        reconcile(tracking_db, cat, steps=("deliver",))
        posts = [p for p in hook.posts if p["body"]["kind"] == "target_sla_breached"]
        assert [p["path"].rsplit("/", 1)[-1] for p in posts] == ["crm"]  # the owner; billing has no sla_days
        body = posts[0]["body"]
        assert body["request_id"] == late["id"] and body["target"] == "crm_contacts"
        assert "within its own SLA of 3 days" in body["message"] and late["external_id"] in body["message"]
        assert done["id"] not in {p["body"]["request_id"] for p in posts}
