"""One way for tests to read and poke the real tracking store (no ORM, no mocks)."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extras


def query(dsn: str, sql: str, args: Any = None) -> list[dict[str, Any]]:
    """Run one statement in its own transaction; rows as dicts ([] for statements without rows)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, args)
            return [dict(r) for r in cur.fetchall()] if cur.description else []
    finally:
        conn.close()
