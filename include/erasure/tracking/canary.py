"""SQL on ``erasure.canary_subject`` and ``erasure.canary_check`` (and the canary flag of a request).
The caller's cursor and transaction; the canary's decisions live in :mod:`erasure.canary`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from erasure.vocab import CanaryResult, RequestStatus


def _ids(subject_ids: Iterable[str] | None) -> tuple[list[str] | None, list[str] | None]:
    ids = list(subject_ids) if subject_ids is not None else None
    return ids, ids


def unrequested_of_run(cur: Any, subject_type: str, run_id: str) -> list[str]:
    """Canaries a run created and has not requested yet (a retried seed task finishes these)."""
    cur.execute(
        """SELECT subject_id FROM erasure.canary_subject
            WHERE subject_type = %s AND details ->> 'run_id' = %s AND requested_at IS NULL
            ORDER BY created_at""",
        (subject_type, run_id),
    )
    return [r["subject_id"] for r in cur.fetchall()]


def create(
    cur: Any, subject_id: str, subject_type: str, now: datetime, delay: timedelta, run_id: str | None
) -> None:
    cur.execute(
        """INSERT INTO erasure.canary_subject (subject_id, subject_type, created_at, erase_after, details)
           VALUES (%s, %s, %s, %s, %s::jsonb)""",
        (
            subject_id,
            subject_type,
            now,
            now + delay,
            json.dumps({"run_id": run_id, "delay_s": delay.total_seconds()}),
        ),
    )


def subject_type_of(cur: Any, subject_id: str) -> str | None:
    cur.execute("SELECT subject_type FROM erasure.canary_subject WHERE subject_id=%s", (subject_id,))
    row = cur.fetchone()
    return None if row is None else str(row["subject_type"])


def checks_of(cur: Any, subject_id: str) -> dict[str, bool | None]:
    """Target -> ``passed`` (None: seeded, not decided yet) of one canary."""
    cur.execute("SELECT target, passed FROM erasure.canary_check WHERE subject_id=%s", (subject_id,))
    return {r["target"]: r["passed"] for r in cur.fetchall()}


def record_seed_errors(cur: Any, subject_id: str, errors: list[str]) -> None:
    cur.execute(
        """UPDATE erasure.canary_subject
              SET details = details || jsonb_build_object('seed_errors', %s::jsonb)
            WHERE subject_id=%s""",
        (json.dumps(errors), subject_id),
    )


def record_seeded(cur: Any, subject_id: str, target: str, detail: str) -> None:
    cur.execute(
        """INSERT INTO erasure.canary_check (subject_id, target, seeded_at, detail)
           VALUES (%s, %s, now(), %s)
           ON CONFLICT (subject_id, target) DO NOTHING""",
        (subject_id, target, f"seeded: {detail}"),
    )


def unrequested_with_done(cur: Any, subject_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Unrequested canaries (optionally only ``subject_ids``) with the targets already seeded (``done``)."""
    cur.execute(
        """SELECT s.subject_id, s.subject_type,
                  COALESCE(array_agg(c.target) FILTER (WHERE c.target IS NOT NULL), '{}') AS done
             FROM erasure.canary_subject s LEFT JOIN erasure.canary_check c USING (subject_id)
            WHERE s.requested_at IS NULL AND (%s::text[] IS NULL OR s.subject_id = ANY(%s::text[]))
            GROUP BY s.subject_id, s.subject_type""",
        _ids(subject_ids),
    )
    return [dict(r) for r in cur.fetchall()]


def due_for_request(cur: Any, now: datetime) -> list[dict[str, Any]]:
    cur.execute(
        """SELECT subject_id, subject_type FROM erasure.canary_subject
            WHERE requested_at IS NULL AND erase_after <= %s ORDER BY created_at""",
        (now,),
    )
    return [dict(r) for r in cur.fetchall()]


def mark_requested(cur: Any, subject_id: str, request_id: int, now: datetime) -> None:
    """The canary's request is flagged ``is_canary`` and the canary remembers it (once)."""
    cur.execute("UPDATE erasure.request SET is_canary = true WHERE id=%s AND NOT is_canary", (request_id,))
    cur.execute(
        """UPDATE erasure.canary_subject SET request_id=%s, requested_at=%s
            WHERE subject_id=%s AND requested_at IS NULL""",
        (request_id, now, subject_id),
    )


def requested_unverified(cur: Any, subject_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Requested canaries not verified yet, with their request's status."""
    cur.execute(
        """SELECT s.subject_id, s.subject_type, s.request_id, s.requested_at, s.details,
                  r.status AS request_status, r.status_reason
             FROM erasure.canary_subject s LEFT JOIN erasure.request r ON r.id = s.request_id
            WHERE s.requested_at IS NOT NULL AND s.verified_at IS NULL
              AND (%s::text[] IS NULL OR s.subject_id = ANY(%s::text[]))
            ORDER BY s.created_at""",
        _ids(subject_ids),
    )
    return [dict(r) for r in cur.fetchall()]


def record_check(
    cur: Any, subject_id: str, target: str, now: datetime, passed: bool | None, detail: str
) -> None:
    """A check's result; ``passed`` None = could not check (left open). A decided check is final."""
    cur.execute(
        """INSERT INTO erasure.canary_check (subject_id, target, seeded_at, verified_at, passed, detail)
           VALUES (%(s)s, %(t)s, %(now)s, %(v)s, %(p)s, %(d)s)
           ON CONFLICT (subject_id, target) DO UPDATE
              SET verified_at = EXCLUDED.verified_at, passed = EXCLUDED.passed, detail = EXCLUDED.detail
            WHERE erasure.canary_check.passed IS NULL""",
        {
            "s": subject_id,
            "t": target,
            "now": now,
            "v": None if passed is None else now,
            "p": passed,
            "d": detail[:2000],
        },
    )


def record_verdict(
    cur: Any, subject_id: str, now: datetime, result: CanaryResult, verification: dict[str, Any]
) -> None:
    cur.execute(
        """UPDATE erasure.canary_subject SET verified_at=%s, result=%s, details = details || %s::jsonb
            WHERE subject_id=%s AND verified_at IS NULL""",
        (now, result.value, json.dumps({"verification": verification}), subject_id),
    )


def latest(cur: Any, limit: int) -> list[dict[str, Any]]:
    """The newest canaries with their per-target checks."""
    cur.execute(
        """SELECT s.subject_id, s.subject_type, s.created_at, s.erase_after, s.request_id, s.requested_at,
                  s.verified_at, s.result,
                  COALESCE(jsonb_object_agg(c.target, jsonb_build_object('passed', c.passed, 'detail', c.detail))
                           FILTER (WHERE c.target IS NOT NULL), '{}'::jsonb) AS checks
             FROM erasure.canary_subject s LEFT JOIN erasure.canary_check c USING (subject_id)
            GROUP BY s.subject_id ORDER BY s.created_at DESC LIMIT %s""",
        (limit,),
    )
    return [dict(r) for r in cur.fetchall()]


def types_ready_to_verify(cur: Any, timeout: timedelta, now: datetime) -> list[str]:
    """Subject types of requested, unverified canaries whose request finished or timed out."""
    cur.execute(
        """SELECT DISTINCT s.subject_type
             FROM erasure.canary_subject s LEFT JOIN erasure.request r ON r.id = s.request_id
            WHERE s.requested_at IS NOT NULL AND s.verified_at IS NULL
              AND (r.status = ANY(%s) OR s.requested_at + %s <= %s)""",
        ([s.value for s in RequestStatus.finished()], timeout, now),
    )
    return [r["subject_type"] for r in cur.fetchall()]
