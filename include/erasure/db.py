"""Connections to the tracking store (psycopg2). Callers own transactions: ``with transaction(dsn) as cur``.

The DSN is always an argument: the edge (CLI, Airflow glue, Spark entry points) gets it from
``erasure.settings`` or the ``erasure_tracking`` Airflow connection and passes it on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras

psycopg2.extras.register_uuid()


def _require(dsn: str) -> str:
    # psycopg2 would treat "" as "use libpq's PG* environment variables": a silent fallback we refuse
    if not dsn or not isinstance(dsn, str):
        raise ValueError(
            "dsn: the tracking store's DSN is required (ERASURE_TRACKING_DSN or the erasure_tracking "
            f"connection, passed by the caller), got {dsn!r}"
        )
    return dsn


def connect(dsn: str) -> psycopg2.extensions.connection:
    """Open a connection to ``dsn``. Sessions use UTC."""
    conn = psycopg2.connect(_require(dsn), application_name="erasure-pipeline")
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


@contextmanager
def transaction(dsn: str) -> Iterator[psycopg2.extras.RealDictCursor]:
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
