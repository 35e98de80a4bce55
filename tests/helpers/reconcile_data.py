"""Rows and catalogs for reconcile/alert tests: requests and tasks written straight into the tracking store
(the same rows intake and dispatch write), and a small catalog whose teams alert a local webhook."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras

from erasure.catalog import Catalog, load_catalog

psycopg2.extras.register_uuid()


def build_catalog(
    tmp_path: Path,
    webhook_url: str,
    *,
    partner_url: str = "http://127.0.0.1:9",
    topic: str = "erasure.events",
    ack_topic: str = "erasure.acks",
    ack_timeout_minutes: int = 5,
    max_attempts: int = 3,
    crm_sla_days: int | None = None,
) -> Catalog:
    """privacy (pipeline owner), crm and marketing alert ``webhook_url``/<team>; billing logs."""
    text = f"""
version: 1
sla_days: 30
pipeline_owner: privacy
subject_types:
  - name: customer
    id_pattern: '^cus_[A-Za-z0-9]{{4,40}}$'
teams:
  - {{name: privacy, channel: 'webhook:{webhook_url}/privacy'}}
  - {{name: crm, channel: 'webhook:{webhook_url}/crm'}}
  - {{name: marketing, channel: 'webhook:{webhook_url}/marketing'}}
  - {{name: billing, channel: 'log:'}}
targets:
  - name: crm_contacts
    kind: sync_api
    owner: crm
    subject_types: [customer]
    identity_key: customer_id
    max_attempts: {max_attempts}
    retry_backoff_minutes: 1{f"{chr(10)}    sla_days: {crm_sla_days}" if crm_sla_days else ""}
    sync_api: {{base_url: '{partner_url}', timeout_s: 2, max_retries: 0}}
  - name: billing_profiles
    kind: sync_api
    owner: billing
    subject_types: [customer]
    identity_key: customer_id
    sync_api: {{base_url: '{partner_url}'}}
  - name: marketing_events
    kind: kafka
    owner: marketing
    subject_types: [customer]
    identity_key: customer_id
    max_attempts: {max_attempts}
    kafka: {{topic: '{topic}', ack_topic: '{ack_topic}', ack_timeout_minutes: {ack_timeout_minutes}}}
"""
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return load_catalog(path)


def cursor(dsn: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def make_request(
    dsn: str,
    targets: dict[str, dict[str, Any]],
    *,
    status: str = "in_progress",
    due_in: timedelta = timedelta(days=30),
    subject_id: str | None = None,
    kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Insert a request with one task per target; ``targets[name]`` holds task column overrides."""
    kinds = {
        "crm_contacts": "sync_api",
        "billing_profiles": "sync_api",
        "marketing_events": "kafka",
        **(kinds or {}),
    }
    conn, cur = cursor(dsn)
    try:
        ext = f"ext-{uuid.uuid4().hex[:12]}"
        cur.execute(
            """
            INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status, due_at)
            VALUES (%s, 'customer', %s, 'tests', 'cli', %s, %s) RETURNING id, external_id, due_at
            """,
            (ext, subject_id or f"cus_{uuid.uuid4().hex[:10]}", status, datetime.now(UTC) + due_in),
        )
        req = dict(cur.fetchone())
        req["tasks"] = {}
        for name, cols in targets.items():
            cols = dict(cols)
            if "evidence" in cols:
                cols["evidence"] = json.dumps(cols["evidence"])
            names = ["request_id", "target", "kind", *cols]
            cur.execute(
                f"INSERT INTO erasure.task ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) RETURNING id",  # noqa: S608
                [req["id"], name, kinds[name], *cols.values()],
            )
            req["tasks"][name] = cur.fetchone()["id"]
        return req
    finally:
        conn.close()


def fetch(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    conn, cur = cursor(dsn)
    try:
        cur.execute(sql, params)
        return [dict(r) for r in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def snapshot(dsn: str) -> dict[str, Any]:
    """Everything reconcile may change, for before/after comparisons."""
    return {
        "request": fetch(dsn, "SELECT * FROM erasure.request ORDER BY id"),
        "task": fetch(dsn, "SELECT * FROM erasure.task ORDER BY id"),
        "outbox": fetch(dsn, "SELECT * FROM erasure.outbox ORDER BY event_id"),
        "alert": fetch(dsn, "SELECT * FROM erasure.alert ORDER BY id"),
        "event_log": fetch(
            dsn, "SELECT event_id, event_type FROM erasure.event_log ORDER BY occurred_at, event_id"
        ),
    }
