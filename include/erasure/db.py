"""Connections to the tracking store (psycopg2). Callers own transactions: ``with transaction(dsn) as cur``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras

from erasure.config import tracking_dsn

psycopg2.extras.register_uuid()


def connect(dsn: str | None = None) -> psycopg2.extensions.connection:
    """Open a connection; ``dsn`` defaults to ERASURE_TRACKING_DSN. Sessions use UTC."""
    conn = psycopg2.connect(dsn or tracking_dsn(), application_name="erasure-pipeline")
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


@contextmanager
def transaction(dsn: str | None = None) -> Iterator[psycopg2.extras.RealDictCursor]:
    """One transaction: commit on success, roll back on any exception (nothing half-written)."""
    conn = connect(dsn)
    try:
        with conn:  # commits or rolls back
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
    finally:
        conn.close()


def sqlalchemy_url(dsn: str) -> str:
    """psycopg2 DSN URI -> SQLAlchemy URL (for Alembic)."""
    if dsn.startswith("postgresql://"):
        return "postgresql+psycopg2://" + dsn[len("postgresql://") :]
    return dsn
