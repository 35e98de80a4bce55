"""SQL on ``erasure.task`` for the stages that work through tasks: dispatch (due, claim), reconcile
(failed, awaiting an ack, escalated without alert, past a target's own SLA) and the warehouse job (pick,
lock). Every function takes the caller's cursor (a ``RealDictCursor``) and runs in its transaction; the
decisions about what to do with the rows live in the stages (unit-tested without Postgres), the SQL
here is tested against the real store by the stages' integration tests.

Status changes go through :func:`erasure.tracking.store.transition_task` (guarded by the statuses a
row may leave).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from erasure.vocab import RequestStatus, TaskStatus

# Due for dispatch = may be claimed now: pending; failed with attempts left, not permanent and its
# next attempt due; awaiting a later verification (a dispatch target's HTTP 202) and due; in progress
# past the lease (a killed worker) or claimed under this claimer's key.
_DUE = """
    r.status = 'in_progress'
    AND t.target = %(target)s
    AND (
        t.status = 'pending'
        OR (t.status = 'failed' AND t.next_attempt_at <= now() AND t.attempts < %(max_attempts)s
            AND NOT COALESCE((t.evidence ->> 'permanent')::boolean, false))
        OR (t.status = 'awaiting_ack' AND t.next_attempt_at <= now() AND t.attempts < %(max_attempts)s)
        OR (t.status = 'in_progress'
            AND (t.updated_at < now() - make_interval(secs => %(lease)s * 60)
                 OR t.evidence ->> 'claim' = %(claim)s))
    )
"""


def due_ids(cur: Any, target: str, max_attempts: int, lease_minutes: float, limit: int) -> list[int]:
    """Ids of ``target``'s tasks due for dispatch, earliest request due date first (reads only)."""
    cur.execute(
        f"""
        SELECT t.id FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
         WHERE {_DUE}
         ORDER BY r.due_at, t.id
         LIMIT %(limit)s
        """,  # noqa: S608 - constant SQL fragment, values are parameters
        {"target": target, "max_attempts": max_attempts, "lease": lease_minutes, "claim": "", "limit": limit},
    )
    return [r["id"] for r in cur.fetchall()]


def claim_due(
    cur: Any, ids: Sequence[int], target: str, max_attempts: int, lease_minutes: float, claim_key: str
) -> list[dict[str, Any]]:
    """Move the due ones of ``ids`` to ``in_progress`` under ``claim_key`` in one guarded UPDATE; rows
    another claimer holds are skipped (``SKIP LOCKED``). Returns ``task_id, request_id, subject_id,
    attempts`` of the claimed rows. A due ``failed`` row is first moved back to ``pending`` (its own
    statement, same transaction and round trip), so the event log records every retry as
    ``task_retried``."""
    params = {
        "ids": list(ids),
        "target": target,
        "max_attempts": max_attempts,
        "lease": lease_minutes,
        "claim": claim_key,
    }
    # both statements in one round trip (one simple query): on an autocommit connection they form one
    # implicit transaction that commits in the server, so the audit chain's lock (taken by the event
    # rows) is never held across a client round trip
    cur.execute(
        f"""
        WITH due AS (
            SELECT t.id FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
             WHERE t.id = ANY(%(ids)s) AND t.status = 'failed' AND {_DUE}
             ORDER BY t.id
             FOR UPDATE OF t SKIP LOCKED
        )
        UPDATE erasure.task t SET status = 'pending', updated_at = now() FROM due WHERE t.id = due.id;

        WITH due AS (
            SELECT t.id FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
             WHERE t.id = ANY(%(ids)s) AND {_DUE}
             ORDER BY t.id
             FOR UPDATE OF t SKIP LOCKED
        )
        UPDATE erasure.task t
           SET status = 'in_progress', updated_at = now(),
               evidence = t.evidence || jsonb_build_object('claim', %(claim)s::text, 'claimed_at', now())
          FROM due, erasure.request r
         WHERE t.id = due.id AND r.id = t.request_id
        RETURNING t.id AS task_id, t.request_id, r.subject_id, t.attempts
        """,  # noqa: S608 - constant SQL fragment, values are parameters
        params,
    )
    return [dict(r) for r in cur.fetchall()]


def release_claim(cur: Any, claim_key: str, error: str, now: datetime) -> list[dict[str, Any]]:
    """Tasks still ``in_progress`` under ``claim_key`` (their batch's task instance failed for good) ->
    ``failed`` with the attempt counted and the next attempt due at once. Guarded: rows another claim
    took over, or that an outcome already moved, are left alone. Returns the released rows."""
    cur.execute(
        """
        UPDATE erasure.task
           SET status = 'failed', attempts = attempts + 1, next_attempt_at = %(now)s, updated_at = now(),
               last_error = %(error)s,
               evidence = evidence || jsonb_build_object('released', jsonb_build_object(
                   'claim', %(claim)s::text, 'at', %(now)s, 'reason', %(error)s::text))
         WHERE status = 'in_progress' AND evidence ->> 'claim' = %(claim)s
        RETURNING id AS task_id, request_id, target, attempts
        """,
        {"claim": claim_key, "error": error[:2000], "now": now},
    )
    return [dict(r) for r in cur.fetchall()]


def expired_claims(cur: Any, lease_minutes: float, now: datetime, alert_prefix: str) -> list[dict[str, Any]]:
    """Claims whose tasks are still ``in_progress`` past the lease (their batch died without a word),
    one row per (target, claim) with the task count, not yet alerted as ``<alert_prefix>:<claim>``."""
    cur.execute(
        """
        SELECT t.target, t.evidence ->> 'claim' AS claim, count(*) AS tasks, min(t.updated_at) AS since
          FROM erasure.task t
         WHERE t.status = 'in_progress' AND t.evidence ? 'claim'
           AND t.updated_at < %(now)s - make_interval(secs => %(lease)s * 60)
           AND NOT EXISTS (SELECT 1 FROM erasure.alert a
                            WHERE a.dedupe_key = %(prefix)s || ':' || (t.evidence ->> 'claim'))
         GROUP BY t.target, t.evidence ->> 'claim'
         ORDER BY min(t.updated_at)
        """,
        {"lease": lease_minutes, "now": now, "prefix": alert_prefix},
    )
    return [dict(r) for r in cur.fetchall()]


def failed(cur: Any, active: Sequence[RequestStatus], batch: int) -> list[dict[str, Any]]:
    """Failed tasks of active requests, locked (``SKIP LOCKED``) for a retry-or-escalate decision."""
    cur.execute(
        """
        SELECT t.id AS task_id, t.request_id, t.target, t.kind, t.attempts, t.last_error,
               t.next_attempt_at, t.updated_at, t.evidence, r.external_id
          FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
         WHERE t.status = 'failed' AND r.status = ANY(%(active)s)
         ORDER BY t.id
         LIMIT %(batch)s
         FOR UPDATE OF t SKIP LOCKED
        """,
        {"active": list(active), "batch": batch},
    )
    return [dict(r) for r in cur.fetchall()]


def push_next_attempt(cur: Any, task_id: int, due: datetime) -> int:
    """Make a failed task wait until ``due`` (so dispatch waits too); returns rows changed."""
    cur.execute(
        "UPDATE erasure.task SET next_attempt_at = %s WHERE id = %s AND status = %s",
        (due, task_id, TaskStatus.FAILED.value),
    )
    return int(cur.rowcount)


def push_next_attempts(cur: Any, dues: Sequence[tuple[int, datetime]]) -> int:
    """:func:`push_next_attempt` for many ``(task id, due)`` pairs in one statement; returns rows changed."""
    if not dues:
        return 0
    cur.execute(
        """
        UPDATE erasure.task t SET next_attempt_at = v.due
          FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, due)
         WHERE t.id = v.id AND t.status = %s
        """,
        ([d[0] for d in dues], [d[1] for d in dues], TaskStatus.FAILED.value),
    )
    return int(cur.rowcount)


def unacked(cur: Any, active: Sequence[RequestStatus], now: datetime, batch: int) -> list[dict[str, Any]]:
    """Tasks awaiting an ack whose newest event was published (over a minute ago) and not acked,
    locked, with that event's id, attempt, publish count and publication time."""
    cur.execute(
        """
        SELECT o.event_id, o.attempt, o.publish_count, o.published_at, t.id AS task_id, t.request_id,
               t.target, t.kind, t.attempts, t.last_error, r.external_id
          FROM erasure.task t
          JOIN erasure.request r ON r.id = t.request_id
          JOIN LATERAL (SELECT ob.event_id, ob.attempt, ob.publish_count, ob.published_at, ob.acked_at
                          FROM erasure.outbox ob WHERE ob.task_id = t.id
                         ORDER BY ob.created_at DESC LIMIT 1) o ON true
         WHERE t.status = 'awaiting_ack' AND r.status = ANY(%(active)s)
           AND o.acked_at IS NULL AND o.published_at IS NOT NULL
           AND o.published_at < %(now)s - interval '1 minute'
         ORDER BY o.published_at
         LIMIT %(batch)s
         FOR UPDATE OF t SKIP LOCKED
        """,
        {"active": list(active), "now": now, "batch": batch},
    )
    return [dict(r) for r in cur.fetchall()]


def escalated_without_alert(cur: Any, alert_prefix: str, batch: int) -> list[dict[str, Any]]:
    """Escalated tasks with no ``<alert_prefix>:<task id>:a<attempts>`` alert yet (escalated elsewhere)."""
    cur.execute(
        """
        SELECT t.id AS task_id, t.request_id, t.target, t.kind, t.attempts, t.last_error, r.external_id
          FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
         WHERE t.status = 'escalated'
           AND NOT EXISTS (SELECT 1 FROM erasure.alert a
                            WHERE a.dedupe_key = %(prefix)s || ':' || t.id || ':a' || t.attempts)
         ORDER BY t.id
         LIMIT %(batch)s
        """,
        {"prefix": alert_prefix, "batch": batch},
    )
    return [dict(r) for r in cur.fetchall()]


def past_target_sla(
    cur: Any,
    target: str,
    sla_days: int,
    open_requests: Sequence[RequestStatus],
    now: datetime,
    alert_prefix: str,
    batch: int,
) -> list[dict[str, Any]]:
    """Tasks of ``target`` not done ``sla_days`` after their request was received, with no
    ``<alert_prefix>:<task id>`` alert yet; with the target's due time (``target_due_at``)."""
    cur.execute(
        """
        SELECT t.id AS task_id, t.request_id, t.status, t.attempts, t.last_error, r.external_id,
               r.received_at + make_interval(days => %(days)s) AS target_due_at
          FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
         WHERE t.target = %(target)s AND t.status <> ALL(%(done)s) AND r.status = ANY(%(open)s)
           AND r.received_at + make_interval(days => %(days)s) <= %(now)s
           AND NOT EXISTS (SELECT 1 FROM erasure.alert a WHERE a.dedupe_key = %(prefix)s || ':' || t.id)
         ORDER BY t.id
         LIMIT %(batch)s
        """,
        {
            "target": target,
            "days": sla_days,
            "done": [s.value for s in TaskStatus.terminal()],
            "open": list(open_requests),
            "now": now,
            "prefix": alert_prefix,
            "batch": batch,
        },
    )
    return [dict(r) for r in cur.fetchall()]


def blocking(cur: Any, request_id: int) -> list[dict[str, Any]]:
    """Tasks of a request that keep it from completing (not succeeded with evidence)."""
    cur.execute(
        """
        SELECT target, kind, status, attempts, left(last_error, 300) AS last_error, next_attempt_at
          FROM erasure.task
         WHERE request_id = %s AND NOT (status = 'succeeded' AND evidence <> '{}'::jsonb)
         ORDER BY target
        """,
        (request_id,),
    )
    return [dict(r) for r in cur.fetchall()]


def blocking_many(cur: Any, request_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """:func:`blocking` for many requests in one query: request id -> its blocking tasks (by target)."""
    out: dict[int, list[dict[str, Any]]] = {int(i): [] for i in request_ids}
    if not out:
        return out
    cur.execute(
        """
        SELECT request_id, target, kind, status, attempts, left(last_error, 300) AS last_error, next_attempt_at
          FROM erasure.task
         WHERE request_id = ANY(%s) AND NOT (status = 'succeeded' AND evidence <> '{}'::jsonb)
         ORDER BY request_id, target
        """,
        (list(out),),
    )
    for r in cur.fetchall():
        row = dict(r)
        out[int(row.pop("request_id"))].append(row)
    return out


def warehouse_workable(cur: Any, kind: str, target: str, max_attempts: int) -> list[dict[str, Any]]:
    """The warehouse job's tasks of ``target``: request in progress; task pending, in progress, or
    failed with attempts left (exhausted ones are reconcile's to escalate)."""
    cur.execute(
        """
        SELECT t.id AS task_id, t.request_id, r.subject_id, t.status, t.stage, t.attempts, t.evidence
          FROM erasure.task t
          JOIN erasure.request r ON r.id = t.request_id
         WHERE r.status = 'in_progress'
           AND t.kind = %(kind)s
           AND t.target = %(target)s
           AND (t.status IN ('pending', 'in_progress') OR (t.status = 'failed' AND t.attempts < %(max_attempts)s))
         ORDER BY t.id
        """,
        {"kind": kind, "target": target, "max_attempts": max_attempts},
    )
    return [dict(r) for r in cur.fetchall()]


def lock_stages(cur: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Lock tasks (in id order) and return their current ``stage`` and ``status`` by id."""
    cur.execute(
        "SELECT id, stage, status FROM erasure.task WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE",
        {"ids": list(ids)},
    )
    return {r["id"]: dict(r) for r in cur.fetchall()}
