"""Guarded status changes. Every transition names the statuses it may come from, so a replayed or
late step never moves a row backwards (e.g. a succeeded task is never set back to in_progress).

The statuses are :class:`erasure.vocab.TaskStatus` (the store's CHECK constraint holds the same values).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from erasure.vocab import TaskStatus, WarehouseStage


def transition_task(
    cur: Any,
    task_id: int,
    to_status: TaskStatus | str,
    allowed_from: Iterable[TaskStatus | str],
    *,
    evidence: dict[str, Any] | None = None,
    last_error: str | None = None,
    increment_attempts: bool = False,
    next_attempt_at: Any = None,
    stage: WarehouseStage | str | None = None,
) -> bool:
    """Move one task to ``to_status`` if it is currently in ``allowed_from``; returns whether it moved.

    ``evidence`` is merged into the task's evidence (JSONB ``||``), never replacing earlier keys
    wholesale. Reaching ``succeeded`` clears ``last_error``; reaching a terminal status
    (:meth:`TaskStatus.terminal`) sets ``completed_at``. Runs inside the caller's transaction (``cur`` is
    a psycopg2 cursor).
    """
    try:
        to = TaskStatus(to_status)
    except ValueError:
        raise ValueError(f"unknown task status {to_status!r}") from None
    try:
        frm = [TaskStatus(s).value for s in allowed_from]
    except ValueError as exc:
        raise ValueError(f"allowed_from: unknown task status ({exc})") from None
    if stage is not None:
        try:
            stage = WarehouseStage(stage)
        except ValueError:
            raise ValueError(f"unknown warehouse stage {stage!r}") from None
    cur.execute(
        """
        UPDATE erasure.task
           SET status = %(to)s,
               evidence = evidence || %(ev)s::jsonb,
               last_error = CASE WHEN %(clear_error)s THEN NULL ELSE COALESCE(%(err)s, last_error) END,
               attempts = attempts + %(inc)s,
               next_attempt_at = COALESCE(%(nxt)s, next_attempt_at),
               stage = COALESCE(%(stage)s, stage),
               completed_at = CASE WHEN %(terminal)s THEN now() ELSE completed_at END,
               updated_at = now()
         WHERE id = %(id)s AND status = ANY(%(from)s)
        """,
        {
            "to": to.value,
            "ev": json.dumps(evidence or {}, default=str),
            "clear_error": to is TaskStatus.SUCCEEDED,
            "err": last_error,
            "inc": 1 if increment_attempts else 0,
            "nxt": next_attempt_at,
            "stage": stage.value if stage is not None else None,
            "terminal": to in TaskStatus.terminal(),
            "id": task_id,
            "from": frm,
        },
    )
    return cur.rowcount == 1
