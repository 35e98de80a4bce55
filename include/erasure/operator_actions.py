"""What an operator may do from the Erasure view of the Airflow UI, each audited (core; no Airflow).

Every function takes the tracking store's DSN, the acting user (``actor``, e.g. ``airflow:alice``) and a
reason, does its change and writes the audit in the same transaction
(:func:`erasure.tracking.views.record_action`: a row of ``erasure.operator_action`` and an
``operator_action`` event in the hash-chained event log per request concerned):

* :func:`place_hold` / :func:`release_hold` - legal holds (``erasure.holds``), audited;
* :func:`rerun_task` - a ``failed`` or ``escalated`` task back to ``pending`` for the next dispatch run
  (its request back to ``in_progress`` when it had failed);
* :func:`replay_event` - one published, unacknowledged Kafka event marked for re-publication (same event
  id; the next outbox publish run sends it);
* :func:`withdraw_request` - a request none of whose targets has been touched yet is closed as
  ``rejected`` ("withdrawn by ...").

Errors are :class:`ActionError` with a message naming what is wrong (the UI shows it as it is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from erasure.catalog import Catalog
from erasure.db import transaction
from erasure.intake import REQUESTED_BY_PATTERN, lock_subject
from erasure.tracking import views
from erasure.tracking.store import transition_task
from erasure.vocab import OperatorAction, RequestStatus, TaskStatus

MAX_REASON = 1000


class ActionError(ValueError):
    """The action cannot be done (bad input, or the row is not in a state that allows it)."""


@dataclass
class ActionResult:
    action: str
    action_id: int
    request_ids: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "action_id": self.action_id,
            "request_ids": self.request_ids,
            **self.detail,
        }


def check_actor(actor: Any) -> str:
    if not isinstance(actor, str) or not re.fullmatch(REQUESTED_BY_PATTERN, actor):
        raise ActionError(f"actor: must match {REQUESTED_BY_PATTERN}")
    return actor


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ActionError("reason: is required and must not be empty")
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise ActionError(f"reason: is {len(reason)} characters long, more than the maximum of {MAX_REASON}")
    if any(ord(c) < 32 and c not in "\t" for c in reason):
        raise ActionError("reason: must not contain control characters")
    return reason


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ActionError(f"{name}: must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------ holds
def place_hold(
    dsn: str, catalog: Catalog | None, subject_type: str, subject_id: str, reason: str, actor: str
) -> ActionResult:
    """Place a legal hold (``erasure.holds.place_hold``) and audit it with the subject's requests."""
    from erasure import holds

    actor, reason = check_actor(actor), check_reason(reason)
    try:
        placed = holds.place_hold(dsn, subject_type, subject_id, reason, actor, catalog=catalog)
    except holds.HoldError as exc:
        raise ActionError(str(exc)) from None
    with transaction(dsn) as cur:
        lock_subject(cur, subject_type, subject_id)
        request_ids = views.subject_request_ids(cur, subject_type, subject_id)
        aid = views.record_action(
            cur,
            actor=actor,
            action=OperatorAction.HOLD_PLACED,
            reason=reason,
            request_ids=request_ids,
            hold_id=placed.hold_id,
            details={"created": placed.created, "requests_held": placed.requests_held},
        )
    return ActionResult(
        OperatorAction.HOLD_PLACED,
        aid,
        request_ids,
        {"hold_id": placed.hold_id, "created": placed.created, "requests_held": placed.requests_held},
    )


def release_hold(dsn: str, hold_id: int, reason: str, actor: str) -> ActionResult:
    """Release one legal hold by id; its subject's held requests proceed (unless another hold is active)."""
    from erasure import holds

    actor, reason, hold_id = check_actor(actor), check_reason(reason), _positive("hold_id", hold_id)
    with transaction(dsn) as cur:
        row = views.hold_row(cur, hold_id)
    if row is None:
        raise ActionError(f"hold_id: no legal hold with id {hold_id}")
    if row["released_at"] is not None:
        raise ActionError(f"hold {hold_id}: already released by {row['released_by']}")
    try:
        released = holds.release_hold(dsn, actor, hold_id=hold_id)
    except holds.HoldError as exc:
        raise ActionError(str(exc)) from None
    with transaction(dsn) as cur:
        request_ids = views.subject_request_ids(cur, row["subject_type"], row["subject_id"])
        aid = views.record_action(
            cur,
            actor=actor,
            action=OperatorAction.HOLD_RELEASED,
            reason=reason,
            request_ids=request_ids,
            hold_id=hold_id,
            details={"requests_released": released.requests_released},
        )
    return ActionResult(
        OperatorAction.HOLD_RELEASED, aid, request_ids, {"requests_released": released.requests_released}
    )


# ------------------------------------------------------------------------------------------ tasks
_RERUNNABLE = (TaskStatus.FAILED, TaskStatus.ESCALATED)


def rerun_task(dsn: str, task_id: int, reason: str, actor: str) -> ActionResult:
    """A ``failed`` or ``escalated`` task -> ``pending`` (due now) for the next dispatch run."""
    actor, reason, task_id = check_actor(actor), check_reason(reason), _positive("task_id", task_id)
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT t.id, t.status, t.target, t.request_id, r.status AS request_status,
                      r.subject_type, r.subject_id
                 FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
                WHERE t.id = %s FOR UPDATE OF t, r""",
            (task_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise ActionError(f"task_id: no task with id {task_id}")
        if row["status"] not in _RERUNNABLE:
            raise ActionError(
                f"task {task_id} is {row['status']}: only a failed or escalated task can be re-run"
            )
        if row["request_status"] in (RequestStatus.HELD, RequestStatus.REJECTED, RequestStatus.COMPLETED):
            raise ActionError(f"task {task_id}: its request is {row['request_status']}")
        if row["request_status"] == RequestStatus.FAILED:
            cur.execute(
                """SELECT id FROM erasure.request WHERE subject_type = %s AND subject_id = %s AND id <> %s
                      AND status = ANY(%s)""",
                (row["subject_type"], row["subject_id"], row["request_id"], list(RequestStatus.open())),
            )
            other = cur.fetchone()
            if other is not None:
                raise ActionError(f"task {task_id}: the subject has another open request ({other['id']})")
            cur.execute(
                """UPDATE erasure.request SET status = 'in_progress', updated_at = now(),
                          status_reason = %s WHERE id = %s AND status = 'failed'""",
                (f"re-run of {row['target']} by {actor}"[:1000], row["request_id"]),
            )
        moved = transition_task(
            cur,
            task_id,
            TaskStatus.PENDING,
            _RERUNNABLE,
            evidence={"rerun": {"by": actor, "from": row["status"]}, "permanent": False},
            next_attempt_at=_now_sql(cur),
        )
        if not moved:  # cannot happen under the row lock
            raise ActionError(f"task {task_id}: changed meanwhile, try again")
        aid = views.record_action(
            cur,
            actor=actor,
            action=OperatorAction.TASK_RERUN,
            reason=reason,
            request_ids=[int(row["request_id"])],
            task_id=task_id,
            target=row["target"],
            details={"from": row["status"]},
        )
    return ActionResult(
        OperatorAction.TASK_RERUN, aid, [int(row["request_id"])], {"task_id": task_id, "from": row["status"]}
    )


def _now_sql(cur: Any) -> Any:
    cur.execute("SELECT now() AS now")
    return cur.fetchone()["now"]


def replay_event(dsn: str, event_id: str, reason: str, actor: str) -> ActionResult:
    """Mark one published, unacknowledged outbox event for re-publication (same event id)."""
    import uuid

    from erasure.outbox import mark_for_replay

    actor, reason = check_actor(actor), check_reason(reason)
    try:
        eid = str(uuid.UUID(str(event_id)))
    except ValueError:
        raise ActionError(f"event_id: not a UUID: {str(event_id)[:64]!r}") from None
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT o.event_id, o.task_id, o.published_at, o.acked_at, t.request_id, t.target
                 FROM erasure.outbox o JOIN erasure.task t ON t.id = o.task_id
                WHERE o.event_id = %s::uuid FOR UPDATE OF o""",
            (eid,),
        )
        row = cur.fetchone()
        if row is None:
            raise ActionError(f"event_id: no outbox event {eid}")
        if row["acked_at"] is not None:
            raise ActionError(f"event {eid}: already acknowledged")
        if row["published_at"] is None:
            raise ActionError(f"event {eid}: not published yet (the next publish run sends it)")
        marked = mark_for_replay(cur, [eid], reason=f"operator replay by {actor}")
        if not marked:
            raise ActionError(f"event {eid}: changed meanwhile, try again")
        aid = views.record_action(
            cur,
            actor=actor,
            action=OperatorAction.EVENT_REPLAY,
            reason=reason,
            request_ids=[int(row["request_id"])],
            task_id=int(row["task_id"]),
            target=row["target"],
            details={"kafka_event_id": eid},
        )
    return ActionResult(OperatorAction.EVENT_REPLAY, aid, [int(row["request_id"])], {"event_id": eid})


# ------------------------------------------------------------------------------------------ requests
def withdraw_request(dsn: str, request_id: int, reason: str, actor: str) -> ActionResult:
    """Close an open request none of whose targets has been touched (every task pending, never tried,
    no Kafka event written) as ``rejected``: "withdrawn by <actor>: <reason>"."""
    actor, reason, request_id = check_actor(actor), check_reason(reason), _positive("request_id", request_id)
    with transaction(dsn) as cur:
        cur.execute("SELECT id, status FROM erasure.request WHERE id = %s FOR UPDATE", (request_id,))
        row = cur.fetchone()
        if row is None:
            raise ActionError(f"request_id: no request with id {request_id}")
        if row["status"] not in RequestStatus.open():
            raise ActionError(
                f"request {request_id} is {row['status']}: only an open request can be withdrawn"
            )
        # lock every task first: a dispatch run claims with SKIP LOCKED, so it cannot take one meanwhile
        cur.execute("SELECT id FROM erasure.task WHERE request_id = %s ORDER BY id FOR UPDATE", (request_id,))
        cur.execute(
            """SELECT t.target FROM erasure.task t
                WHERE t.request_id = %s
                  AND (t.status <> 'pending' OR t.attempts > 0
                       OR EXISTS (SELECT 1 FROM erasure.outbox o WHERE o.task_id = t.id))
                ORDER BY t.target""",
            (request_id,),
        )
        touched = [r["target"] for r in cur.fetchall()]
        if touched:
            raise ActionError(
                f"request {request_id}: already dispatched to {', '.join(touched)}; it cannot be withdrawn"
            )
        cur.execute(
            """UPDATE erasure.request SET status = 'rejected', updated_at = now(), status_reason = %s
                WHERE id = %s""",
            (f"withdrawn by {actor}: {reason}"[:1000], request_id),
        )
        aid = views.record_action(
            cur,
            actor=actor,
            action=OperatorAction.REQUEST_WITHDRAWN,
            reason=reason,
            request_ids=[request_id],
            details={"from": row["status"]},
        )
    return ActionResult(OperatorAction.REQUEST_WITHDRAWN, aid, [request_id], {"from": row["status"]})
