"""Guarded status changes. Every transition names the statuses it may come from, so a replayed or
late step never moves a row backwards (e.g. a succeeded task is never set back to in_progress).

:func:`transition_tasks` moves many tasks with ONE statement per chunk (``UPDATE ... FROM (VALUES
...)``), each row guarded by its own ``allowed_from``; :func:`transition_task` is the one-row case of
the same statement. The event log gets one row per transition from the statement-level trigger of
migration 0006 (hash-chained by migration 0003), in the same transaction.

The statuses are :class:`erasure.vocab.TaskStatus` (the store's CHECK constraint holds the same values).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extras

from erasure.vocab import TaskStatus, WarehouseStage

DEFAULT_CHUNK = 1000
"""Transitions per statement in :func:`transition_tasks`."""

_TRANSITION_SQL = """
UPDATE erasure.task t
   SET status = v.to_status,
       evidence = t.evidence || v.ev,
       last_error = CASE WHEN v.clear_error THEN NULL ELSE COALESCE(v.err, t.last_error) END,
       attempts = t.attempts + v.inc,
       next_attempt_at = COALESCE(v.nxt, t.next_attempt_at),
       stage = COALESCE(v.stage, t.stage),
       completed_at = CASE WHEN v.terminal THEN now() ELSE t.completed_at END,
       updated_at = now()
  FROM (VALUES %s) AS v(id, to_status, frm, ev, clear_error, err, inc, nxt, stage, terminal)
 WHERE t.id = v.id AND t.status = ANY(v.frm)
RETURNING t.id
"""
_TEMPLATE = (
    "(%s::bigint, %s::text, %s::text[], %s::jsonb, %s::boolean, %s::text, %s::integer, %s::timestamptz,"
    " %s::text, %s::boolean)"
)


@dataclass(frozen=True)
class Transition:
    """One task's guarded move: to ``to_status`` if it is currently in ``allowed_from``.

    ``evidence`` is merged into the task's evidence (JSONB ``||``), never replacing earlier keys
    wholesale. Reaching ``succeeded`` clears ``last_error``; reaching a terminal status
    (:meth:`TaskStatus.terminal`) sets ``completed_at``.
    """

    task_id: int
    to_status: TaskStatus | str
    allowed_from: tuple[TaskStatus | str, ...]
    evidence: dict[str, Any] | None = None
    last_error: str | None = None
    increment_attempts: bool = False
    next_attempt_at: Any = None
    stage: WarehouseStage | str | None = field(default=None)

    def row(self) -> tuple[Any, ...]:
        """The statement's VALUES row (validated against the vocabulary)."""
        try:
            to = TaskStatus(self.to_status)
        except ValueError:
            raise ValueError(f"unknown task status {self.to_status!r}") from None
        try:
            frm = [TaskStatus(s).value for s in self.allowed_from]
        except ValueError as exc:
            raise ValueError(f"allowed_from: unknown task status ({exc})") from None
        stage = None
        if self.stage is not None:
            try:
                stage = WarehouseStage(self.stage).value
            except ValueError:
                raise ValueError(f"unknown warehouse stage {self.stage!r}") from None
        return (
            int(self.task_id),
            to.value,
            frm,
            json.dumps(self.evidence or {}, default=str),
            to is TaskStatus.SUCCEEDED,
            self.last_error,
            1 if self.increment_attempts else 0,
            self.next_attempt_at,
            stage,
            to in TaskStatus.terminal(),
        )


def transition_tasks(cur: Any, transitions: Sequence[Transition], *, chunk: int = DEFAULT_CHUNK) -> set[int]:
    """Apply ``transitions`` with one ``UPDATE`` per ``chunk`` of them; returns the ids that moved.

    A row not (any longer) in its transition's ``allowed_from`` is left alone and not returned (guarded,
    exactly as :func:`transition_task`). Rows are taken in task-id order (a stable lock order for
    concurrent writers). A task may appear once per call. Runs inside the caller's transaction (``cur``
    is a psycopg2 cursor, plain or dict).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    rows = sorted((t.row() for t in transitions), key=lambda r: r[0])
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("transition_tasks: a task appears more than once in one call")
    moved: set[int] = set()
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        out = psycopg2.extras.execute_values(
            cur, _TRANSITION_SQL, part, template=_TEMPLATE, page_size=len(part), fetch=True
        )
        moved.update(int(r["id"] if isinstance(r, dict) else r[0]) for r in out)
    return moved


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

    The one-row case of :func:`transition_tasks` (see :class:`Transition` for what a move writes).
    """
    t = Transition(
        task_id,
        to_status,
        tuple(allowed_from),
        evidence=evidence,
        last_error=last_error,
        increment_attempts=increment_attempts,
        next_attempt_at=next_attempt_at,
        stage=stage,
    )
    return task_id in transition_tasks(cur, [t])
