"""SQL on ``erasure.receipt`` and what a receipt is built from (the caller's cursor and transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2.extras


def completed_without_receipt(
    cur: Any, limit: int, request_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Completed requests that have no receipt yet (oldest completion first), optionally only ``request_ids``."""
    cur.execute(
        """
        SELECT r.id, r.external_id, r.subject_type, r.subject_id, r.jurisdiction, r.is_canary,
               r.received_at, r.due_at, r.completed_at
          FROM erasure.request r
         WHERE r.status = 'completed'
           AND NOT EXISTS (SELECT 1 FROM erasure.receipt x WHERE x.request_id = r.id)
           AND (%(ids)s::bigint[] IS NULL OR r.id = ANY(%(ids)s::bigint[]))
         ORDER BY r.completed_at, r.id
         LIMIT %(limit)s
        """,
        {"ids": list(request_ids) if request_ids is not None else None, "limit": limit},
    )
    return [dict(r) for r in cur.fetchall()]


def tasks_of(cur: Any, request_ids: Sequence[int]) -> list[dict[str, Any]]:
    cur.execute(
        """
        SELECT request_id, target, kind, status, attempts, evidence, completed_at
          FROM erasure.task WHERE request_id = ANY(%s) ORDER BY request_id, target
        """,
        (list(request_ids),),
    )
    return [dict(r) for r in cur.fetchall()]


def last_events_of(cur: Any, request_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per request its last event in chain order (seq, event id, hash)."""
    cur.execute(
        """
        SELECT DISTINCT ON (request_id) request_id, seq, event_id::text AS event_id, hash
          FROM erasure.event_log WHERE request_id = ANY(%s)
         ORDER BY request_id, seq DESC
        """,
        (list(request_ids),),
    )
    return [dict(r) for r in cur.fetchall()]


def insert(cur: Any, rows: Sequence[tuple[int, str, str, str, str]]) -> int:
    """Insert (request_id, receipt_id, key_id, audit_hash, document) rows; an existing receipt is kept."""
    if not rows:
        return 0
    inserted = psycopg2.extras.execute_values(
        cur,
        """
        INSERT INTO erasure.receipt (request_id, receipt_id, key_id, audit_hash, document)
        VALUES %s ON CONFLICT (request_id) DO NOTHING RETURNING request_id
        """,
        rows,
        page_size=1000,
        fetch=True,  # rowcount would count only the last page
    )
    return len(inserted)


def find(cur: Any, request: str) -> dict[str, Any] | None:
    """The stored receipt of a request given by id, external id or receipt id."""
    cur.execute(
        """
        SELECT x.request_id, x.receipt_id, x.key_id, x.issued_at, x.audit_hash, x.document
          FROM erasure.receipt x JOIN erasure.request r ON r.id = x.request_id
         WHERE r.external_id = %(q)s OR x.receipt_id = %(q)s OR r.id = %(id)s
         ORDER BY (r.id = %(id)s) DESC
         LIMIT 1
        """,
        {"q": request, "id": int(request) if request.isdigit() and len(request) < 19 else None},
    )
    row = cur.fetchone()
    return dict(row) if row is not None else None


def issued_since(cur: Any, since: Any) -> list[dict[str, Any]]:
    cur.execute(
        """
        SELECT request_id, receipt_id, key_id, issued_at, audit_hash, document
          FROM erasure.receipt WHERE %(since)s::timestamptz IS NULL OR issued_at >= %(since)s::timestamptz
         ORDER BY issued_at, request_id
        """,
        {"since": since},
    )
    return [dict(r) for r in cur.fetchall()]


def event_hash_at(cur: Any, seq: int) -> str | None:
    cur.execute("SELECT hash FROM erasure.event_log WHERE seq = %s", (seq,))
    row = cur.fetchone()
    return None if row is None else str(row["hash"])
