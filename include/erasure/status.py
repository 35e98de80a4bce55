"""Status of erasure requests: every target's state, attempts, last error and evidence.

``request_status(ref, dsn)`` takes a request id or external id; ``subject_status(subject_type, subject_id,
dsn)`` returns every request of a subject (newest first). ``format_status`` renders them for the CLI
(``python -m erasure.cli status --request ID | --subject TYPE:ID [--json]``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from erasure.db import transaction
from erasure.vocab import TaskStatus

_RETRYABLE = (TaskStatus.PENDING, TaskStatus.FAILED)
"""Task statuses whose ``next_attempt_at`` is meaningful (shown as ``next=``)."""

_REQUEST_COLS = (
    "id, external_id, subject_type, subject_id, jurisdiction, source, is_canary, status, status_reason, "
    "received_at, due_at, completed_at, updated_at"
)


class StatusError(LookupError):
    """Nothing matches the reference given to the status query; the message names it."""


def _tasks(cur: Any, request_id: int) -> list[dict[str, Any]]:
    cur.execute(
        """
        SELECT t.id, t.target, t.kind, t.status, t.stage, t.attempts, t.last_error, t.next_attempt_at,
               t.evidence, t.updated_at, t.completed_at,
               o.event_id, o.attempt AS event_attempt, o.published_at, o.publish_count, o.acked_at,
               o.ack ->> 'outcome' AS ack_outcome
          FROM erasure.task t
          LEFT JOIN LATERAL (SELECT * FROM erasure.outbox ob WHERE ob.task_id = t.id
                              ORDER BY ob.created_at DESC LIMIT 1) o ON true
         WHERE t.request_id = %s
         ORDER BY t.target
        """,
        (request_id,),
    )
    out = []
    for r in cur.fetchall():
        task = {k: r[k] for k in ("id", "target", "kind", "status", "stage", "attempts", "last_error")}
        task.update(
            next_attempt_at=r["next_attempt_at"],
            updated_at=r["updated_at"],
            completed_at=r["completed_at"],
            evidence=r["evidence"] or {},
        )
        if r["event_id"] is not None:
            task["event"] = {
                "event_id": str(r["event_id"]),
                "attempt": r["event_attempt"],
                "published_at": r["published_at"],
                "publish_count": r["publish_count"],
                "acked_at": r["acked_at"],
                "ack_outcome": r["ack_outcome"],
            }
        out.append(task)
    return out


def _alerts(cur: Any, request_id: int) -> list[dict[str, Any]]:
    cur.execute(
        """
        SELECT kind, team, target, created_at, sent_at, send_attempts, left(send_error, 200) AS send_error
          FROM erasure.alert WHERE request_id = %s ORDER BY id
        """,
        (request_id,),
    )
    return [dict(r) for r in cur.fetchall()]


def _with_details(cur: Any, req: dict[str, Any]) -> dict[str, Any]:
    req = dict(req)
    req["tasks"] = _tasks(cur, req["id"])
    req["alerts"] = _alerts(cur, req["id"])
    return req


def request_status(ref: str | int, dsn: str) -> dict[str, Any]:
    """One request by numeric id or external id (an id that is also someone's external id: id wins)."""
    ref_s = str(ref).strip()
    if not ref_s:
        raise StatusError("request: an id or external id is required")
    with transaction(dsn) as cur:
        row = None
        if ref_s.isdigit():
            cur.execute(f"SELECT {_REQUEST_COLS} FROM erasure.request WHERE id = %s", (int(ref_s),))  # noqa: S608
            row = cur.fetchone()
        if row is None:
            cur.execute(f"SELECT {_REQUEST_COLS} FROM erasure.request WHERE external_id = %s", (ref_s,))  # noqa: S608
            row = cur.fetchone()
        if row is None:
            raise StatusError(f"request: no request with id or external id '{ref_s}'")
        return _with_details(cur, row)


def parse_subject(value: str) -> tuple[str, str]:
    """``'customer:cus_123'`` -> ``('customer', 'cus_123')``; a clear error otherwise."""
    stype, sep, sid = value.partition(":")
    if not sep or not stype.strip() or not sid.strip():
        raise ValueError(f"subject: expected TYPE:ID (e.g. customer:cus_123), got '{value}'")
    return stype.strip(), sid.strip()


def subject_status(
    subject_type: str, subject_id: str, dsn: str, digest: str | None = None
) -> list[dict[str, Any]]:
    """Every request of a subject, newest first (an empty list is an error: nothing is known).
    ``digest``: the subject id's keyed hash, which a minimised request holds instead of the id
    (erasure.retention.subject_digest), so a person's erasure is still found after the retention."""
    with transaction(dsn) as cur:
        cur.execute(
            f"SELECT {_REQUEST_COLS} FROM erasure.request "  # noqa: S608
            "WHERE subject_type = %s AND subject_id = ANY(%s) ORDER BY received_at DESC, id DESC",
            (subject_type, [subject_id, *([digest] if digest else [])]),
        )
        rows = cur.fetchall()
        if not rows:
            raise StatusError(f"subject: no request for {subject_type}:{subject_id}")
        return [_with_details(cur, r) for r in rows]


def _fmt_ts(v: Any) -> str:
    return v.strftime("%Y-%m-%d %H:%M:%SZ") if hasattr(v, "strftime") else ("-" if v is None else str(v))


def format_status(requests: list[dict[str, Any]], *, lease_minutes: float = 15.0) -> str:
    """Human-readable rendering: one block per request, one line per target plus its evidence. A task in
    progress under a dispatch batch's claim shows the batch and when its lease (``lease_minutes``, the
    ``dispatch_lease_minutes`` setting) ends: until then no other run takes it."""
    lines: list[str] = []
    for req in requests:
        lines.append(
            f"request {req['id']} ({req['external_id']}) {req['subject_type']}:{req['subject_id']}  "
            f"status={req['status']}" + (f" ({req['status_reason']})" if req.get("status_reason") else "")
        )
        lines.append(
            f"  jurisdiction={req['jurisdiction']} received={_fmt_ts(req['received_at'])} "
            f"due={_fmt_ts(req['due_at'])} completed={_fmt_ts(req['completed_at'])}"
        )
        if not req["tasks"]:
            lines.append("  (no tasks)")
        width = max([len(t["target"]) for t in req["tasks"]] + [6])
        for t in req["tasks"]:
            stage = f" stage={t['stage']}" if t.get("stage") else ""
            lines.append(
                f"  {t['target']:<{width}}  {t['kind']:<15} {t['status']:<12} attempts={t['attempts']}{stage}"
                f"  next={_fmt_ts(t['next_attempt_at']) if t['status'] in _RETRYABLE else '-'}"
            )
            claim = t["evidence"].get("claim")
            if t["status"] == TaskStatus.IN_PROGRESS and claim and t.get("updated_at"):
                until = t["updated_at"] + timedelta(minutes=lease_minutes)
                state = "expired" if until <= datetime.now(UTC) else "held"
                lines.append(f"  {'':<{width}}  lease: batch {claim} {state} until {_fmt_ts(until)}")
            if t.get("last_error"):
                lines.append(f"  {'':<{width}}  last_error: {t['last_error'][:300]}")
            if t.get("event"):
                ev = t["event"]
                lines.append(
                    f"  {'':<{width}}  event {ev['event_id']} attempt={ev['attempt']} "
                    f"published={_fmt_ts(ev['published_at'])} acked={_fmt_ts(ev['acked_at'])}"
                    + (f" outcome={ev['ack_outcome']}" if ev.get("ack_outcome") else "")
                )
            if t["evidence"]:
                lines.append(
                    f"  {'':<{width}}  evidence: {json.dumps(t['evidence'], default=str, sort_keys=True)}"
                )
        for a in req.get("alerts", []):
            lines.append(
                f"  alert {a['kind']} -> {a['team']}"
                + (f" [{a['target']}]" if a.get("target") else "")
                + f" sent={_fmt_ts(a['sent_at'])}"
                + (f" error={a['send_error']}" if a.get("send_error") else "")
            )
    return "\n".join(lines)


def to_json(requests: list[dict[str, Any]]) -> str:
    return json.dumps(requests, default=str, indent=2, sort_keys=True)
