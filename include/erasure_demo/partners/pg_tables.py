"""The demo company's Postgres tables beyond the HR directory (in ``$ERASURE_HR_DSN``): systems keyed
by identifiers other than the customer id (docs/identity.md). Created idempotently by the partners'
start (``erasure_demo.partners.run``) and by the tests that use them."""

from __future__ import annotations

import psycopg2

DDL = """
CREATE SCHEMA IF NOT EXISTS identity;
CREATE TABLE IF NOT EXISTS identity.devices (
    device_id   text PRIMARY KEY,
    customer_id text NOT NULL,
    model       text,
    is_test     boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS devices_customer ON identity.devices (customer_id);
CREATE SCHEMA IF NOT EXISTS marketing;
CREATE TABLE IF NOT EXISTS marketing.newsletter (
    email         text PRIMARY KEY,
    name          text,
    subscribed_at timestamptz NOT NULL DEFAULT now(),
    is_test       boolean NOT NULL DEFAULT false
);
"""


def ensure_tables(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('erasure_demo.pg_tables'))")
            cur.execute("SET LOCAL client_min_messages = warning")
            cur.execute(DDL)
    finally:
        conn.close()
