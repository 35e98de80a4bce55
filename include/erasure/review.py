"""The review gate (core; no Airflow): requests the catalog marks for review (``review:`` rules, status
``in_review``) wait for a person before anything is erased.

* :func:`claim` - the requests in review nobody has claimed yet, each bound to one Airflow run and map
  index (the human-in-the-loop task it waits in); what the reviewer sees holds no identifier in clear;
* :func:`decide` - the reviewer's answer: approve -> ``in_progress`` (dispatch takes it), reject ->
  ``rejected`` with the reason; audited with the reviewer (``erasure.operator_action`` and an
  ``operator_action`` event in the hash-chained event log).

While a request waits its SLA clock runs: reconcile's SLA alerts cover ``in_review``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from erasure.db import transaction
from erasure.identifiers import mask
from erasure.tracking import views
from erasure.vocab import OperatorAction, RequestStatus, ReviewDecision

MAX_CLAIM = 100


class ReviewError(ValueError):
    """The decision cannot be applied (unknown request, not in review, already decided)."""


@dataclass(frozen=True)
class Claimed:
    request_id: int
    map_index: int
    subject: str
    body: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "map_index": self.map_index,
            "subject": self.subject,
            "body": self.body,
        }


def claim(dsn: str, dag_run_id: str, limit: int = MAX_CLAIM) -> list[Claimed]:
    """Bind the unclaimed requests in review (oldest first, at most ``limit``) to ``dag_run_id``; map
    index = position in the returned list. Concurrent runs never claim the same request."""
    with transaction(dsn) as cur:
        cur.execute(
            """
            SELECT r.id, r.external_id, r.subject_type, r.subject_id, r.jurisdiction, r.due_at, r.received_at,
                   r.status_reason, (SELECT count(*) FROM erasure.task t WHERE t.request_id = r.id) AS targets
              FROM erasure.request r
             WHERE r.status = 'in_review'
               AND NOT EXISTS (SELECT 1 FROM erasure.review v WHERE v.request_id = r.id)
             ORDER BY r.id
             LIMIT %s
             FOR UPDATE OF r SKIP LOCKED
            """,
            (limit,),
        )
        rows = cur.fetchall()
        out = []
        for i, r in enumerate(rows):
            rule = (r["status_reason"] or "review").removeprefix("review: ")
            cur.execute(
                """INSERT INTO erasure.review (request_id, rule, dag_run_id, map_index) VALUES (%s, %s, %s, %s)""",
                (r["id"], rule, dag_run_id, i),
            )
            subject = f"Erasure request {r['id']} ({r['external_id']}): review ({rule})"
            body = (
                f"**Request {r['id']}** · external id `{r['external_id']}`\n\n"
                f"* subject: {r['subject_type']} `{mask(r['subject_id'])}`\n"
                f"* jurisdiction: {r['jurisdiction']} · received {r['received_at']:%Y-%m-%d %H:%M}Z · "
                f"**due {r['due_at']:%Y-%m-%d %H:%M}Z**\n"
                f"* targets to erase: {r['targets']}\n"
                f"* why review: {rule}\n\n"
                "Approve to erase it now; Reject closes the request (give the reason)."
            )
            out.append(Claimed(int(r["id"]), i, subject, body))
    return out


def decide(dsn: str, request_id: int, approved: bool, reviewer: str, reason: str | None) -> str:
    """Apply a reviewer's decision; returns the request's new status."""
    decision = ReviewDecision.APPROVED if approved else ReviewDecision.REJECTED
    reason = (reason or "").strip() or ("approved" if approved else "rejected without a reason")
    reason = reason[:1000]
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT r.id, r.status, v.decision FROM erasure.request r
                 JOIN erasure.review v ON v.request_id = r.id
                WHERE r.id = %s FOR UPDATE OF r, v""",
            (request_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise ReviewError(f"request {request_id}: no review claimed for it")
        if row["decision"] is not None:
            raise ReviewError(f"request {request_id}: already {row['decision']}")
        if row["status"] != RequestStatus.IN_REVIEW:
            # withdrawn (rejected) or otherwise closed meanwhile: record the decision, change nothing
            new_status = str(row["status"])
        else:
            new_status = RequestStatus.IN_PROGRESS if approved else RequestStatus.REJECTED
            cur.execute(
                """UPDATE erasure.request SET status = %s, updated_at = now(), status_reason = %s
                    WHERE id = %s AND status = 'in_review'""",
                (
                    new_status,
                    f"review {decision} by {reviewer}" + ("" if approved else f": {reason}"),
                    request_id,
                ),
            )
        cur.execute(
            """UPDATE erasure.review SET decision = %s, decided_by = %s, decided_at = now(), reason = %s
                WHERE request_id = %s""",
            (decision.value, reviewer, reason, request_id),
        )
        views.record_action(
            cur,
            actor=reviewer,
            action=OperatorAction.REVIEW_APPROVED if approved else OperatorAction.REVIEW_REJECTED,
            reason=reason,
            request_ids=[request_id],
            details={"status": str(new_status)},
        )
    return str(new_status)


def review_of(cur: Any, request_id: int) -> dict[str, Any] | None:
    cur.execute(
        """SELECT request_id, rule, dag_run_id, map_index, claimed_at, decision, decided_by, decided_at, reason
             FROM erasure.review WHERE request_id = %s""",
        (request_id,),
    )
    row = cur.fetchone()
    return dict(row) if row is not None else None
