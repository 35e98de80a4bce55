"""Reconcile: replay unacknowledged events, retry or escalate failed tasks, complete requests, SLA alerts.

One ``reconcile()`` run does, in order (each step in its own transaction, every change guarded by the
previous status so a concurrent dispatch / ack consumer is never overwritten):

1. **replay** - the newest outbox event of an ``awaiting_ack`` task, published but not acknowledged
   within the target's ack timeout (its adapter's ``ack_timeout``: ``kafka.ack_timeout_minutes``), is marked for re-publication
   (``erasure.outbox.mark_for_replay``: ``published_at = NULL``, same ``event_id`` and payload so
   partners dedupe, an ``event_replayed`` event-log row); the outbox publisher re-sends it and counts
   ``publish_count``. Once ``publish_count`` reached the target's ``max_attempts`` the task is escalated.
2. **retry / escalate** - a ``failed`` task whose backoff has elapsed goes back to ``pending`` (dispatch
   picks up ``pending`` and ``failed`` tasks with ``next_attempt_at <= now``); while the backoff runs,
   ``next_attempt_at`` is pushed to its end so dispatch waits too. Backoff after the n-th failed attempt:
   :meth:`erasure.catalog.Target.retry_delay`, ``retry_backoff_minutes * 2**(n-1)`` capped at 24 h (the one
   retry policy, also used by dispatch and the warehouse job). A task with ``attempts >= max_attempts`` or a
   permanent failure (``evidence.permanent = true``) is ``escalated`` and one alert goes to the target's
   owner team. Tasks escalated by other steps (e.g. dispatch) get their one alert here too.
3. **recompute** - a request is ``completed`` only when every task ``succeeded`` *with* evidence; it is
   ``failed`` when every task is terminal and at least one is escalated; ``received`` becomes
   ``in_progress`` once work started; a ``failed`` request whose escalated task was re-opened becomes
   ``in_progress`` again. ``completed`` is never touched again; ``held`` requests are left alone.
4. **SLA** - an open request within ``sla_warn_days`` of ``due_at`` raises one ``sla_approaching`` alert,
   one past ``due_at`` one ``sla_breached`` alert, to the catalog's pipeline owner, naming the blocking
   targets. A target with its own ``sla_days`` raises one ``target_sla_breached`` alert per task to its
   owner team when the task is not done ``sla_days`` after the request was received.
5. **deliver** - unsent alerts are sent (``erasure.alerts.deliver_pending``); failures retry next run.

Over many requests a run stays a fixed number of statements per step (bounded by ``batch``): the retries
are one guarded ``UPDATE`` (:func:`erasure.tracking.store.transition_tasks`), the backoff pushes one, the
replays one per reason, the blocking targets of every SLA candidate one query; escalations and alerts
are written per task (each is its own decision and alert).

Running it again once everything is complete changes nothing (no row is updated, no alert is sent).
Alerts name the request (id, external id) and target, never the subject identifier.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from erasure.alerts import DeliveryResult, Notifier, deliver_pending, raise_team_alert
from erasure.catalog import Catalog, Target
from erasure.db import transaction
from erasure.outbox import mark_for_replay
from erasure.settings import Settings
from erasure.targets import adapter_for
from erasure.tracking import request as request_sql
from erasure.tracking import task as task_sql
from erasure.tracking.store import Transition, transition_task, transition_tasks
from erasure.vocab import AlertKind, RequestStatus, TaskStatus

log = logging.getLogger("erasure.reconcile")

ACTIVE_REQUEST_STATUSES = (RequestStatus.RECEIVED, RequestStatus.IN_PROGRESS)
"""Requests whose tasks reconcile retries, replays and escalates (not held, not finished)."""
SLA_REQUEST_STATUSES = (
    RequestStatus.RECEIVED,
    RequestStatus.IN_PROGRESS,
    RequestStatus.FAILED,
    RequestStatus.IN_REVIEW,  # the SLA clock runs while a person reviews it
)
"""Requests that still count against their SLA (a failed request is not erased yet)."""
DEFAULT_SLA_WARN_DAYS = 5.0
DEFAULT_ACK_TIMEOUT = timedelta(minutes=60)
_DEFAULT_TARGET = Target.model_construct(
    retry_backoff_minutes=Target.model_fields["retry_backoff_minutes"].default,
    max_attempts=Target.model_fields["max_attempts"].default,
)
"""Stands in for a target that is no longer in the catalog (the catalog's defaults)."""
DEFAULT_BATCH = 5000
STEPS = ("replay", "retry", "leases", "recompute", "sla", "deliver")
DEFAULT_LEASE_MINUTES = 15.0
"""Default of the ``dispatch_lease_minutes`` setting (the DAG passes the setting)."""


@dataclass
class ReconcileResult:
    replayed: int = 0
    retried: int = 0
    backoff_scheduled: int = 0
    escalated: int = 0
    escalation_alerts: int = 0
    completed: int = 0
    failed: int = 0
    started: int = 0
    reopened: int = 0
    sla_alerts: int = 0
    target_sla_alerts: int = 0
    lease_alerts: int = 0
    alerts_sent: int = 0
    alerts_failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def changes(self) -> int:
        """How many rows this run changed (0 once everything is complete)."""
        return (
            self.replayed
            + self.retried
            + self.backoff_scheduled
            + self.escalated
            + self.escalation_alerts
            + self.completed
            + self.failed
            + self.started
            + self.reopened
            + self.sla_alerts
            + self.target_sla_alerts
            + self.lease_alerts
            + self.alerts_sent
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _target(catalog: Catalog, name: str) -> Target | None:
    try:
        return catalog.target(name)
    except KeyError:
        return None


def _owner(catalog: Catalog, target: Target | None) -> str:
    return target.owner if target is not None else catalog.pipeline_owner


def retry_delay(target: Target | None, attempts: int) -> timedelta:
    """The target's retry policy (:meth:`Target.retry_delay`); a target no longer in the catalog
    waits as a default target would."""
    return (target or _DEFAULT_TARGET).retry_delay(max(int(attempts), 1))


def max_attempts(target: Target | None) -> int:
    return (target or _DEFAULT_TARGET).max_attempts


def ack_timeout(target: Target | None) -> timedelta:
    """How long an event may wait for its acknowledgement (the kind's own setting, else an hour)."""
    timeout = adapter_for(target).ack_timeout(target) if target is not None else None
    return timeout or DEFAULT_ACK_TIMEOUT


def escalation_key(task_id: int, attempts: int) -> str:
    """One escalation alert per task and attempt count (a re-opened, re-tried task can escalate again)."""
    return f"{AlertKind.TASK_ESCALATED.value}:{task_id}:a{attempts}"


def _escalation_message(row: Mapping[str, Any], reason: str) -> str:
    return (
        f"Erasure task for target '{row['target']}' of request {row['request_id']} "
        f"(external id {row['external_id']}) escalated: {reason}"
    )


def _alert_escalation(
    cur: Any, catalog: Catalog, row: Mapping[str, Any], reason: str, result: ReconcileResult
) -> None:
    """The task's one escalation alert to its owning team (deduplicated by task and attempt count)."""
    if raise_team_alert(
        cur,
        catalog,
        team=_owner(catalog, _target(catalog, row["target"])),
        dedupe_key=escalation_key(row["task_id"], row["attempts"]),
        kind=AlertKind.TASK_ESCALATED,
        message=_escalation_message(row, reason),
        request_id=row["request_id"],
        task_id=row["task_id"],
        target=row["target"],
        details={
            "reason": reason[:1000],
            "attempts": row["attempts"],
            "last_error": (row.get("last_error") or "")[:1000],
            "external_id": row["external_id"],
            "kind": row.get("kind"),
        },
    ):
        result.escalation_alerts += 1


def _escalate(
    cur: Any, catalog: Catalog, row: Mapping[str, Any], from_status: str, reason: str, result: ReconcileResult
) -> None:
    """Escalate one task and record its one alert, in the caller's transaction."""
    moved = transition_task(
        cur,
        row["task_id"],
        TaskStatus.ESCALATED,
        (from_status,),
        evidence={"escalation": {"reason": reason, "at": _utcnow().isoformat()}},
        last_error=row.get("last_error") or reason,
    )
    if not moved:
        return
    result.escalated += 1
    _alert_escalation(cur, catalog, row, reason, result)
    log.warning(
        "escalated task %s (%s, request %s): %s", row["task_id"], row["target"], row["request_id"], reason
    )


# ------------------------------------------------------------------------------------------ decisions
class Action(StrEnum):
    """What reconcile does with one task (decided without the database, see the ``*_decision``s)."""

    RETRY = "retry"  # failed -> pending: its retry delay has passed
    WAIT = "wait"  # failed, retry delay running; ``due`` is when it ends (pushed to next_attempt_at)
    ESCALATE = "escalate"  # no retry left: escalated, its owner alerted
    REPLAY = "replay"  # awaiting an ack past the ack timeout: the same event is published again
    NOTHING = "nothing"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    due: datetime | None = None


def retry_decision(row: Mapping[str, Any], target: Target | None, now: datetime) -> Decision:
    """A failed task: escalate (target gone, permanent failure, no attempts left), retry (its retry
    delay since the last failure has passed) or wait until ``due``."""
    if target is None:
        return Decision(Action.ESCALATE, f"target '{row['target']}' is not in the catalog")
    if (row.get("evidence") or {}).get("permanent") is True:
        return Decision(Action.ESCALATE, f"permanent failure: {row['last_error']}")
    if row["attempts"] >= max_attempts(target):
        return Decision(
            Action.ESCALATE,
            f"failed {row['attempts']} of max_attempts {max_attempts(target)}: {row['last_error']}",
        )
    due = max(row["next_attempt_at"], row["updated_at"] + retry_delay(target, row["attempts"]))
    return Decision(Action.RETRY) if due <= now else Decision(Action.WAIT, due=due)


def replay_decision(row: Mapping[str, Any], target: Target | None, now: datetime) -> Decision:
    """A task awaiting the ack of a published event: nothing while the ack timeout runs, then replay
    the same event, or escalate once it was published ``max_attempts`` times."""
    timeout = ack_timeout(target)
    if row["published_at"] + timeout > now:
        return Decision(Action.NOTHING)
    mins = int(timeout.total_seconds() // 60)
    if row["publish_count"] >= max_attempts(target):
        return Decision(
            Action.ESCALATE,
            f"no acknowledgement of event {row['event_id']} after {row['publish_count']} publication(s) "
            f"(ack timeout {mins} min, max_attempts {max_attempts(target)})",
        )
    return Decision(Action.REPLAY, f"no ack within {mins} min (ack timeout)")


# ---------------------------------------------------------------------------------------------- steps
def replay_unacked(
    dsn: str, catalog: Catalog, now: datetime, result: ReconcileResult, batch: int = DEFAULT_BATCH
) -> None:
    """Step 1: unpublish events whose ack timed out (same event id), or escalate after max attempts.
    The replays of a run are marked with one statement (``mark_for_replay`` over all their ids)."""
    with transaction(dsn) as cur:
        replay: dict[str, list[str]] = {}  # reason (it names the target's ack timeout) -> event ids
        for row in task_sql.unacked(cur, ACTIVE_REQUEST_STATUSES, now, batch):
            d = replay_decision(row, _target(catalog, row["target"]), now)
            if d.action == Action.ESCALATE:
                _escalate(
                    cur, catalog, {**row, "last_error": d.reason}, TaskStatus.AWAITING_ACK, d.reason, result
                )
            elif d.action == Action.REPLAY:
                replay.setdefault(d.reason, []).append(row["event_id"])
        for reason, ids in replay.items():
            result.replayed += len(mark_for_replay(cur, ids, reason=reason))


def retry_or_escalate(
    dsn: str, catalog: Catalog, now: datetime, result: ReconcileResult, batch: int = DEFAULT_BATCH
) -> None:
    """Step 2: failed tasks -> pending once their retry delay elapsed, or escalated after max attempts.
    The retries of a run are one guarded UPDATE (``transition_tasks``), the backoff pushes one more."""
    with transaction(dsn) as cur:
        retries: list[Transition] = []
        pushes: list[tuple[int, datetime]] = []
        for row in task_sql.failed(cur, ACTIVE_REQUEST_STATUSES, batch):
            d = retry_decision(row, _target(catalog, row["target"]), now)
            if d.action == Action.ESCALATE:
                _escalate(cur, catalog, row, TaskStatus.FAILED, d.reason, result)
            elif d.action == Action.RETRY:
                retries.append(
                    Transition(row["task_id"], TaskStatus.PENDING, (TaskStatus.FAILED,), next_attempt_at=now)
                )
            elif d.due is not None and row["next_attempt_at"] < d.due:
                pushes.append((row["task_id"], d.due))
        result.retried += len(transition_tasks(cur, retries))
        result.backoff_scheduled += task_sql.push_next_attempts(cur, pushes)

        # Tasks escalated elsewhere (e.g. a permanent 4xx in dispatch) still get their one alert.
        for row in task_sql.escalated_without_alert(cur, AlertKind.TASK_ESCALATED.value, batch):
            _alert_escalation(cur, catalog, row, row["last_error"] or "escalated", result)


def check_leases(
    dsn: str, catalog: Catalog, now: datetime, result: ReconcileResult, lease_minutes: float
) -> None:
    """Step 2b: tasks still ``in_progress`` past the dispatch lease (their batch died without its
    failure callback, e.g. the worker machine went away): one ``lease_expired`` alert per batch to the
    target's owner, naming target and batch. The next dispatch run re-claims them."""
    with transaction(dsn) as cur:
        for row in task_sql.expired_claims(cur, lease_minutes, now, AlertKind.LEASE_EXPIRED.value):
            target = _target(catalog, row["target"])
            msg = (
                f"Erasure batch {row['claim']} of target '{row['target']}' holds {row['tasks']} task(s) in "
                f"progress since {row['since'].isoformat()}, past the {lease_minutes:g}-minute lease: its "
                "worker died; the next dispatch run takes them over"
            )
            if raise_team_alert(
                cur,
                catalog,
                team=_owner(catalog, target),
                dedupe_key=f"{AlertKind.LEASE_EXPIRED}:{row['claim']}",
                kind=AlertKind.LEASE_EXPIRED,
                message=msg,
                target=row["target"],
                details={"claim": row["claim"], "tasks": row["tasks"], "since": row["since"].isoformat()},
            ):
                result.lease_alerts += 1


def recompute_requests(dsn: str, result: ReconcileResult) -> None:
    """Step 3: request status from its tasks (set-based, guarded; completed is final)."""
    with transaction(dsn) as cur:
        result.completed += request_sql.complete_finished(cur)
        result.failed += request_sql.fail_escalated(cur)
        result.started += request_sql.start_worked_on(cur)
        result.reopened += request_sql.reopen_active(cur)


def blocking_targets(cur: Any, request_id: int) -> list[dict[str, Any]]:
    """Tasks of a request that keep it from completing (not succeeded with evidence)."""
    return task_sql.blocking(cur, request_id)


def check_sla(
    dsn: str,
    catalog: Catalog,
    now: datetime,
    result: ReconcileResult,
    warn_days: float,
    batch: int = DEFAULT_BATCH,
) -> None:
    """Step 4: one alert when a request nears ``due_at`` and one when it is past, to the pipeline owner."""
    team = catalog.pipeline_owner
    with transaction(dsn) as cur:
        due = request_sql.near_or_past_due(
            cur,
            SLA_REQUEST_STATUSES,
            now,
            now + timedelta(days=warn_days),
            AlertKind.SLA_APPROACHING.value,
            AlertKind.SLA_BREACHED.value,
            batch,
        )
        blocking_of = task_sql.blocking_many(cur, [req["id"] for req in due])  # one query for all
        for req in due:
            breached = req["due_at"] <= now
            kind = AlertKind.SLA_BREACHED if breached else AlertKind.SLA_APPROACHING
            blocking = blocking_of[req["id"]]
            names = ", ".join(f"{b['target']} ({b['status']}, {b['attempts']} attempts)" for b in blocking)
            when = req["due_at"].isoformat()
            if breached:
                msg = f"Request {req['id']} (external id {req['external_id']}) is PAST its due date {when}"
            else:
                left = req["due_at"] - now
                msg = (
                    f"Request {req['id']} (external id {req['external_id']}) is due {when} "
                    f"(in {left.days} d {left.seconds // 3600} h)"
                )
            msg += f"; blocking targets: {names}" if blocking else "; no tasks exist yet"
            if raise_team_alert(
                cur,
                catalog,
                team=team,
                dedupe_key=f"{kind}:{req['id']}",
                kind=kind,
                message=msg,
                request_id=req["id"],
                details={
                    "external_id": req["external_id"],
                    "jurisdiction": req["jurisdiction"],
                    "status": req["status"],
                    "due_at": when,
                    "blocking_targets": [
                        {**b, "owner": _owner(catalog, _target(catalog, b["target"]))} for b in blocking
                    ],
                },
            ):
                result.sla_alerts += 1


def check_target_sla(
    dsn: str, catalog: Catalog, now: datetime, result: ReconcileResult, batch: int = DEFAULT_BATCH
) -> None:
    """Step 4b: a target's own ``sla_days`` (counted from the request's receipt): one
    ``target_sla_breached`` alert per task still not done past it, to the target's owner team."""
    targets = [t for t in catalog.targets if t.enabled and t.sla_days is not None]
    if not targets:
        return
    with transaction(dsn) as cur:
        for target in targets:
            rows = task_sql.past_target_sla(
                cur,
                target.name,
                target.sla_days or 0,
                SLA_REQUEST_STATUSES,
                now,
                AlertKind.TARGET_SLA_BREACHED.value,
                batch,
            )
            for row in rows:
                due = row["target_due_at"].isoformat()
                msg = (
                    f"Target '{target.name}' has not erased request {row['request_id']} (external id "
                    f"{row['external_id']}) within its own SLA of {target.sla_days} days (due {due}); task "
                    f"{row['task_id']} is {row['status']} after {row['attempts']} attempt(s)"
                )
                if row["last_error"]:
                    msg += f"; last error: {row['last_error'][:300]}"
                if raise_team_alert(
                    cur,
                    catalog,
                    team=target.owner,
                    dedupe_key=f"{AlertKind.TARGET_SLA_BREACHED}:{row['task_id']}",
                    kind=AlertKind.TARGET_SLA_BREACHED,
                    message=msg,
                    request_id=row["request_id"],
                    target=target.name,
                    details={"task_id": row["task_id"], "status": row["status"], "target_due_at": due},
                ):
                    result.target_sla_alerts += 1


def reconcile(
    dsn: str,
    catalog: Catalog,
    *,
    now: datetime | None = None,
    sla_warn_days: float = DEFAULT_SLA_WARN_DAYS,
    lease_minutes: float = DEFAULT_LEASE_MINUTES,
    settings: Settings | None = None,
    notifiers: Mapping[str, Notifier] | None = None,
    steps: Collection[str] = STEPS,
    batch: int = DEFAULT_BATCH,
) -> ReconcileResult:
    """Run the given ``steps`` (default: all, in order) once.

    ``now`` may be given (tests simulate time passing); default: the current UTC time.
    ``sla_warn_days``: the ``sla_warn_days`` setting (ERASURE_SLA_WARN_DAYS) at the caller; ``settings``
    configure alert delivery (e-mail through ``ERASURE_SMTP_*``, else Airflow's e-mail backend).
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"reconcile steps: unknown step(s) {unknown} (known: {list(STEPS)})")
    now = now or _utcnow()
    if now.tzinfo is None:
        raise ValueError("reconcile now: must be timezone-aware (UTC)")
    if sla_warn_days < 0:
        raise ValueError(f"sla_warn_days: must be >= 0, got {sla_warn_days}")
    result = ReconcileResult()
    if "replay" in steps:
        replay_unacked(dsn, catalog, now, result, batch)
    if "retry" in steps:
        retry_or_escalate(dsn, catalog, now, result, batch)
    if "leases" in steps:
        check_leases(dsn, catalog, now, result, lease_minutes)
    if "recompute" in steps:
        recompute_requests(dsn, result)
    if "sla" in steps:
        check_sla(dsn, catalog, now, result, sla_warn_days, batch)
        check_target_sla(dsn, catalog, now, result, batch)
    if "deliver" in steps:
        merge_delivery(result, deliver_pending(dsn, settings=settings, notifiers=notifiers))
    log.info("reconcile: %s", {k: v for k, v in result.as_dict().items() if v})
    return result


def merge_delivery(result: ReconcileResult, delivery: DeliveryResult) -> ReconcileResult:
    result.alerts_sent += delivery.sent
    result.alerts_failed += delivery.failed
    result.errors.extend(delivery.errors)
    return result
