"""Guarded status changes. Every transition names the statuses it may come from, so a replayed or
late step never moves a row backwards (e.g. a succeeded task is never set back to in_progress)."""

from __future__ import annotations

import json
from typing import Any

TASK_STATUSES = ("pending", "in_progress", "awaiting_ack", "succeeded", "failed", "escalated")
TERMINAL_TASK_STATUSES = ("succeeded", "escalated")
OPEN_REQUEST_STATUSES = ("received", "held", "in_progress")
REQUEST_STATUSES = ("received", "held", "in_progress", "completed", "failed", "rejected")


def transition_task(
    cur: Any,
    task_id: int,
    to_status: str,
    allowed_from: tuple[str, ...] | list[str],
    *,
    evidence: dict[str, Any] | None = None,
    last_error: str | None = None,
    increment_attempts: bool = False,
    next_attempt_at: Any = None,
    stage: str | None = None,
) -> bool:
    """Move one task to ``to_status`` if it is currently in ``allowed_from``; returns whether it moved.

    ``evidence`` is merged into the task's evidence (JSONB ``||``), never replacing earlier keys
    wholesale. Runs inside the caller's transaction (``cur`` is a psycopg2 cursor).
    """
    if to_status not in TASK_STATUSES:
        raise ValueError(f"unknown task status {to_status!r}")
    cur.execute(
        """
        UPDATE erasure.task
           SET status = %(to)s,
               evidence = evidence || %(ev)s::jsonb,
               last_error = CASE WHEN %(to)s IN ('succeeded') THEN NULL ELSE COALESCE(%(err)s, last_error) END,
               attempts = attempts + %(inc)s,
               next_attempt_at = COALESCE(%(nxt)s, next_attempt_at),
               stage = COALESCE(%(stage)s, stage),
               completed_at = CASE WHEN %(to)s IN ('succeeded', 'escalated') THEN now() ELSE completed_at END,
               updated_at = now()
         WHERE id = %(id)s AND status = ANY(%(from)s)
        """,
        {
            "to": to_status,
            "ev": json.dumps(evidence or {}, default=str),
            "err": last_error,
            "inc": 1 if increment_attempts else 0,
            "nxt": next_attempt_at,
            "stage": stage,
            "id": task_id,
            "from": list(allowed_from),
        },
    )
    return cur.rowcount == 1
