"""SQL on ``erasure.event_log`` for the audit chain and receipts (the caller's cursor and transaction).

The chain itself (``seq``, ``prev_hash``, ``hash``) is written by the trigger of migration 0003; the
logic that recomputes it lives in :mod:`erasure.evidence.audit`.
"""

from __future__ import annotations

from typing import Any

# Columns in the order erasure.evidence.audit.verify_rows expects; every value as text (or NULL), so
# the client does no type conversion. occurred_at in the canonical form (UTC, microseconds, "Z").
CHAIN_SELECT = """
SELECT e.seq::text, e.prev_hash, e.hash, e.event_id::text, e.request_id::text, e.task_id::text, e.target,
       e.event_type, e.status, e.attempt::text,
       to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), e.details::text
  FROM erasure.event_log e
 WHERE e.seq >= %(from_seq)s
 ORDER BY e.seq  -- the bigint column (an output column named seq would sort as text)
"""

HEAD_SQL = "SELECT seq, hash FROM erasure.audit_head WHERE id = 1"


def chain_rows(cur: Any, from_seq: int = 1) -> None:
    """Execute the chain query on ``cur`` (use a server-side cursor and iterate it)."""
    cur.execute(CHAIN_SELECT, {"from_seq": from_seq})


def head(cur: Any) -> tuple[int, str]:
    """The chain's head as the store records it: (last seq, its hash); (0, genesis) when empty."""
    cur.execute(HEAD_SQL)
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("erasure.audit_head has no row: is migration 0003 applied?")
    return (int(row["seq"]), str(row["hash"])) if isinstance(row, dict) else (int(row[0]), str(row[1]))


def previous_hash(cur: Any, seq: int) -> str | None:
    """The stored hash of event ``seq`` (the link a partial verification starts from)."""
    cur.execute("SELECT hash FROM erasure.event_log WHERE seq = %s", (seq,))
    row = cur.fetchone()
    if row is None:
        return None
    return str(row["hash"] if isinstance(row, dict) else row[0])


def request_last_event(cur: Any, request_id: int) -> dict[str, Any] | None:
    """The request's last event in chain order: seq, event id, hash (the receipt's audit anchor)."""
    cur.execute(
        """
        SELECT seq, event_id::text AS event_id, hash, event_type
          FROM erasure.event_log WHERE request_id = %s ORDER BY seq DESC LIMIT 1
        """,
        (request_id,),
    )
    row = cur.fetchone()
    return dict(row) if row is not None else None
