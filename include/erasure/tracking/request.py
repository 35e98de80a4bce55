"""SQL on ``erasure.request`` for reconcile: request status from its tasks, SLA candidates. The caller's
cursor and transaction; decisions stay in :mod:`erasure.reconcile`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from erasure.vocab import RequestStatus

_SUCCEEDED_WITH_EVIDENCE = "(t.status = 'succeeded' AND t.evidence <> '{}'::jsonb)"


def complete_finished(cur: Any) -> int:
    """Requests whose every task succeeded *with* evidence -> ``completed`` (final); returns how many."""
    cur.execute(
        f"""
        UPDATE erasure.request r
           SET status = 'completed', completed_at = now(), updated_at = now(),
               status_reason = 'all targets erased with evidence'
         WHERE r.status IN ('received', 'in_progress', 'failed')
           AND EXISTS (SELECT 1 FROM erasure.task t WHERE t.request_id = r.id)
           AND NOT EXISTS (SELECT 1 FROM erasure.task t WHERE t.request_id = r.id
                              AND NOT {_SUCCEEDED_WITH_EVIDENCE})
        """  # noqa: S608 - constant SQL fragment, no input
    )
    return int(cur.rowcount)


def fail_escalated(cur: Any) -> int:
    """Requests whose tasks are all terminal and one is escalated -> ``failed``, naming those targets."""
    cur.execute(
        """
        UPDATE erasure.request r
           SET status = 'failed', updated_at = now(),
               status_reason = 'escalated: ' || (SELECT string_agg(t.target, ', ' ORDER BY t.target)
                                                  FROM erasure.task t
                                                 WHERE t.request_id = r.id AND t.status = 'escalated')
         WHERE r.status IN ('received', 'in_progress')
           AND EXISTS (SELECT 1 FROM erasure.task t WHERE t.request_id = r.id AND t.status = 'escalated')
           AND NOT EXISTS (SELECT 1 FROM erasure.task t WHERE t.request_id = r.id
                              AND t.status NOT IN ('succeeded', 'escalated'))
        """
    )
    return int(cur.rowcount)


def start_worked_on(cur: Any) -> int:
    """``received`` requests some task of which has started -> ``in_progress``."""
    cur.execute(
        """
        UPDATE erasure.request r SET status = 'in_progress', updated_at = now(), status_reason = NULL
         WHERE r.status = 'received'
           AND EXISTS (SELECT 1 FROM erasure.task t WHERE t.request_id = r.id
                          AND (t.status <> 'pending' OR t.attempts > 0))
        """
    )
    return int(cur.rowcount)


def reopen_active(cur: Any) -> int:
    """``failed`` requests a task of which is active again -> ``in_progress`` (unless the subject has
    another open request)."""
    cur.execute(
        """
        UPDATE erasure.request r
           SET status = 'in_progress', updated_at = now(), status_reason = 'reopened: a task is active again'
         WHERE r.status = 'failed'
           AND EXISTS (SELECT 1 FROM erasure.task t WHERE t.request_id = r.id
                          AND t.status NOT IN ('succeeded', 'escalated'))
           AND NOT EXISTS (SELECT 1 FROM erasure.request o
                            WHERE o.subject_type = r.subject_type AND o.subject_id = r.subject_id
                              AND o.id <> r.id AND o.status IN ('received', 'held', 'in_progress', 'in_review'))
        """
    )
    return int(cur.rowcount)


def near_or_past_due(
    cur: Any,
    statuses: Sequence[RequestStatus],
    now: datetime,
    horizon: datetime,
    approaching_prefix: str,
    breached_prefix: str,
    batch: int,
) -> list[dict[str, Any]]:
    """Requests due before ``horizon`` that still lack their ``approaching`` (not yet due) or
    ``breached`` (past due) alert, earliest due first."""
    cur.execute(
        """
        SELECT r.id, r.external_id, r.subject_type, r.jurisdiction, r.status, r.received_at, r.due_at
          FROM erasure.request r
         WHERE r.status = ANY(%(st)s) AND r.due_at <= %(horizon)s
           AND NOT EXISTS (SELECT 1 FROM erasure.alert a WHERE a.dedupe_key = %(breached)s || ':' || r.id)
           AND (r.due_at <= %(now)s
                OR NOT EXISTS (SELECT 1 FROM erasure.alert a WHERE a.dedupe_key = %(approaching)s || ':' || r.id))
         ORDER BY r.due_at
         LIMIT %(batch)s
        """,
        {
            "st": list(statuses),
            "horizon": horizon,
            "now": now,
            "breached": breached_prefix,
            "approaching": approaching_prefix,
            "batch": batch,
        },
    )
    return [dict(r) for r in cur.fetchall()]
