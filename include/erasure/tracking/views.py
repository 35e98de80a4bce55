"""Read-only SQL behind the Erasure view of the Airflow UI (``erasure.airflow.ui``) and its write-side
audit: the caller's cursor (a ``RealDictCursor``) and transaction, plain rows out.

Every query here is bounded (aggregates, ``LIMIT``, one request's rows) so the overview stays fast with
100,000 requests (``tests/benchmarks/bench_ui_overview.py``). Subject identifiers are returned only
where a page needs them to mask or hash them (:mod:`erasure.ui_model`); nothing here formats them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from erasure.vocab import EventType, OperatorAction, RequestStatus

REQUEST_COLS = (
    "r.id, r.external_id, r.subject_type, r.subject_id, r.jurisdiction, r.source, r.is_canary, r.status, "
    "r.status_reason, r.received_at, r.due_at, r.completed_at, r.updated_at, r.airflow_run_id"
)


# ------------------------------------------------------------------------------------------ overview
def requests_by_status(cur: Any) -> dict[str, int]:
    """Number of requests per status (every status present, zero when none)."""
    cur.execute("SELECT status, count(*) AS n FROM erasure.request GROUP BY status")
    counts = {s.value: 0 for s in RequestStatus}
    for r in cur.fetchall():
        counts[r["status"]] = int(r["n"])
    return counts


def sla_by_jurisdiction(cur: Any, now: datetime, soon: datetime) -> list[dict[str, Any]]:
    """Open requests per jurisdiction: how many, overdue, due before ``soon``, the nearest due date."""
    cur.execute(
        """
        SELECT r.jurisdiction,
               count(*) AS open,
               count(*) FILTER (WHERE r.due_at <= %(now)s) AS overdue,
               count(*) FILTER (WHERE r.due_at > %(now)s AND r.due_at <= %(soon)s) AS due_soon,
               min(r.due_at) AS next_due
          FROM erasure.request r
         WHERE r.status = ANY(%(open)s)
         GROUP BY r.jurisdiction
         ORDER BY r.jurisdiction
        """,
        {"now": now, "soon": soon, "open": list(RequestStatus.open())},
    )
    return [dict(r) for r in cur.fetchall()]


def throughput_per_day(cur: Any, since: datetime) -> list[dict[str, Any]]:
    """Requests received and completed per UTC day since ``since`` (days without any are left out)."""
    cur.execute(
        """
        SELECT d AS day, sum(received)::int AS received, sum(completed)::int AS completed FROM (
            SELECT date_trunc('day', received_at)::date AS d, 1 AS received, 0 AS completed
              FROM erasure.request WHERE received_at >= %(since)s
            UNION ALL
            SELECT date_trunc('day', completed_at)::date, 0, 1
              FROM erasure.request WHERE completed_at >= %(since)s AND status = 'completed'
        ) x GROUP BY d ORDER BY d
        """,
        {"since": since},
    )
    return [dict(r) for r in cur.fetchall()]


def escalated_per_target(cur: Any) -> dict[str, int]:
    """Escalated tasks per target (a person must look at each)."""
    cur.execute("SELECT target, count(*) AS n FROM erasure.task WHERE status = 'escalated' GROUP BY target")
    return {r["target"]: int(r["n"]) for r in cur.fetchall()}


def open_alerts(cur: Any, since: datetime) -> list[dict[str, Any]]:
    """Alerts since ``since`` per team and kind: how many, how many not delivered yet."""
    cur.execute(
        """
        SELECT team, kind, count(*) AS n, count(*) FILTER (WHERE sent_at IS NULL) AS unsent,
               max(created_at) AS last_at
          FROM erasure.alert WHERE created_at >= %(since)s
         GROUP BY team, kind ORDER BY team, kind
        """,
        {"since": since},
    )
    return [dict(r) for r in cur.fetchall()]


def due_soonest(cur: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The open requests due first (overdue ones first of all)."""
    cur.execute(
        f"SELECT {REQUEST_COLS} FROM erasure.request r WHERE r.status = ANY(%(open)s) "  # noqa: S608
        "ORDER BY r.due_at, r.id LIMIT %(limit)s",
        {"open": list(RequestStatus.open()), "limit": limit},
    )
    return [dict(r) for r in cur.fetchall()]


# ------------------------------------------------------------------------------------------ requests
def find_requests(
    cur: Any,
    *,
    ref: str | None = None,
    subject: tuple[str, str] | None = None,
    limit: int = 50,
    digest: str | None = None,
) -> list[dict[str, Any]]:
    """Requests by numeric id or external id (``ref``), or by subject (type, id), newest first;
    ``digest``: the subject id's keyed hash, which a minimised request holds instead (erasure.retention)."""
    if subject is not None:
        cur.execute(
            f"SELECT {REQUEST_COLS} FROM erasure.request r "  # noqa: S608
            "WHERE r.subject_type = %s AND r.subject_id = ANY(%s) ORDER BY r.received_at DESC, r.id DESC LIMIT %s",
            (subject[0], [subject[1], *([digest] if digest else [])], limit),
        )
        return [dict(r) for r in cur.fetchall()]
    q = (ref or "").strip()
    if not q:
        return []
    cur.execute(
        f"SELECT {REQUEST_COLS} FROM erasure.request r "  # noqa: S608
        "WHERE r.external_id = %(q)s OR r.id = %(id)s ORDER BY (r.id = %(id)s) DESC, r.id DESC LIMIT %(limit)s",
        {"q": q, "id": int(q) if q.isdigit() and len(q) < 19 else None, "limit": limit},
    )
    return [dict(r) for r in cur.fetchall()]


def request_row(cur: Any, request_id: int) -> dict[str, Any] | None:
    cur.execute(f"SELECT {REQUEST_COLS} FROM erasure.request r WHERE r.id = %s", (request_id,))  # noqa: S608
    row = cur.fetchone()
    return dict(row) if row is not None else None


def request_tasks(cur: Any, request_id: int) -> list[dict[str, Any]]:
    """The request's tasks with their latest outbox event (Kafka targets)."""
    cur.execute(
        """
        SELECT t.id, t.target, t.kind, t.status, t.stage, t.attempts, t.last_error, t.next_attempt_at,
               t.evidence, t.created_at, t.updated_at, t.completed_at,
               o.event_id::text AS event_id, o.attempt AS event_attempt, o.published_at, o.publish_count,
               o.acked_at, o.ack ->> 'outcome' AS ack_outcome
          FROM erasure.task t
          LEFT JOIN LATERAL (SELECT * FROM erasure.outbox ob WHERE ob.task_id = t.id
                              ORDER BY ob.created_at DESC LIMIT 1) o ON true
         WHERE t.request_id = %s
         ORDER BY t.target
        """,
        (request_id,),
    )
    return [dict(r) for r in cur.fetchall()]


def request_events(cur: Any, request_id: int, limit: int = 500) -> list[dict[str, Any]]:
    """The request's audit events in chain order (``seq``)."""
    cur.execute(
        """
        SELECT seq, event_id::text AS event_id, task_id, target, event_type, status, attempt, occurred_at,
               details, hash
          FROM erasure.event_log WHERE request_id = %s ORDER BY seq LIMIT %s
        """,
        (request_id, limit),
    )
    return [dict(r) for r in cur.fetchall()]


def request_alerts(cur: Any, request_id: int) -> list[dict[str, Any]]:
    cur.execute(
        """SELECT kind, team, target, created_at, sent_at, send_attempts FROM erasure.alert
            WHERE request_id = %s ORDER BY id""",
        (request_id,),
    )
    return [dict(r) for r in cur.fetchall()]


def request_receipt(cur: Any, request_id: int) -> dict[str, Any] | None:
    cur.execute(
        """SELECT request_id, receipt_id, key_id, issued_at, audit_hash, document
             FROM erasure.receipt WHERE request_id = %s""",
        (request_id,),
    )
    row = cur.fetchone()
    return dict(row) if row is not None else None


# ------------------------------------------------------------------------------------------ targets
def target_health(cur: Any, since: datetime) -> list[dict[str, Any]]:
    """Per target, over tasks created since ``since``: counts per outcome, retries, latency percentiles
    (created -> completed, seconds, succeeded tasks), the last error and when it was seen."""
    cur.execute(
        """
        SELECT t.target, min(t.kind) AS kind,
               count(*) AS tasks,
               count(*) FILTER (WHERE t.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE t.status = 'failed') AS failed,
               count(*) FILTER (WHERE t.status = 'escalated') AS escalated,
               count(*) FILTER (WHERE t.status IN ('pending', 'in_progress', 'awaiting_ack')) AS open,
               coalesce(sum(greatest(t.attempts - 1, 0)), 0) AS retries,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t.completed_at - t.created_at))
                   FILTER (WHERE t.status = 'succeeded') AS p50_s,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM t.completed_at - t.created_at))
                   FILTER (WHERE t.status = 'succeeded') AS p95_s,
               max(t.updated_at) FILTER (WHERE t.last_error IS NOT NULL) AS last_error_at
          FROM erasure.task t
         WHERE t.created_at >= %(since)s
         GROUP BY t.target ORDER BY t.target
        """,
        {"since": since},
    )
    rows = [dict(r) for r in cur.fetchall()]
    cur.execute(
        """
        SELECT DISTINCT ON (t.target) t.target, left(t.last_error, 300) AS last_error
          FROM erasure.task t
         WHERE t.created_at >= %(since)s AND t.last_error IS NOT NULL
         ORDER BY t.target, t.updated_at DESC
        """,
        {"since": since},
    )
    errors = {r["target"]: r["last_error"] for r in cur.fetchall()}
    for r in rows:
        r["last_error"] = errors.get(r["target"])
    return rows


# ------------------------------------------------------------------------------------------ holds
def hold_row(cur: Any, hold_id: int) -> dict[str, Any] | None:
    cur.execute(
        """SELECT id, subject_type, subject_id, reason, placed_by, placed_at, released_at, released_by
             FROM erasure.legal_hold WHERE id = %s""",
        (hold_id,),
    )
    row = cur.fetchone()
    return dict(row) if row is not None else None


def subject_request_ids(cur: Any, subject_type: str, subject_id: str) -> list[int]:
    cur.execute(
        "SELECT id FROM erasure.request WHERE subject_type = %s AND subject_id = %s ORDER BY id",
        (subject_type, subject_id),
    )
    return [int(r["id"]) for r in cur.fetchall()]


# ------------------------------------------------------------------------------------------ audit
def record_action(
    cur: Any,
    *,
    actor: str,
    action: OperatorAction | str,
    reason: str,
    request_ids: Sequence[int] = (),
    task_id: int | None = None,
    target: str | None = None,
    hold_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Append an operator's action to ``erasure.operator_action`` and, for each request it concerns, an
    ``operator_action`` event to the hash-chained event log (same transaction). Returns the action's id."""
    action = OperatorAction(action)
    extra = dict(details or {})
    cur.execute(
        """
        INSERT INTO erasure.operator_action (actor, action, reason, request_ids, task_id, target, hold_id, details)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING id
        """,
        (
            actor,
            action.value,
            reason,
            list(request_ids),
            task_id,
            target,
            hold_id,
            json.dumps(extra, default=str),
        ),
    )
    action_id = int(cur.fetchone()["id"])
    for rid in request_ids:
        cur.execute(
            """
            INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, details)
            SELECT r.id, %(task)s, %(target)s, %(et)s, r.status,
                   jsonb_build_object('action', %(action)s::text, 'actor', %(actor)s::text,
                                      'reason', %(reason)s::text, 'operator_action_id', %(aid)s::bigint)
                   || CASE WHEN %(hold)s::bigint IS NULL THEN '{}'::jsonb
                           ELSE jsonb_build_object('hold_id', %(hold)s::bigint) END
              FROM erasure.request r WHERE r.id = %(rid)s
            """,
            {
                "task": task_id,
                "target": target,
                "et": EventType.OPERATOR_ACTION.value,
                "action": action.value,
                "actor": actor,
                "reason": reason,
                "aid": action_id,
                "hold": hold_id,
                "rid": rid,
            },
        )
    return action_id


def recent_actions(cur: Any, limit: int = 50) -> list[dict[str, Any]]:
    cur.execute(
        """SELECT id, occurred_at, actor, action, reason, request_ids, task_id, target, hold_id, details
             FROM erasure.operator_action ORDER BY id DESC LIMIT %s""",
        (limit,),
    )
    return [dict(r) for r in cur.fetchall()]
