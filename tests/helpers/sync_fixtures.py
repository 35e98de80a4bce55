"""Helpers for the sync-dispatch tests and benchmark (issue 4): a test catalog pointing at partner
servers started by the test, and bulk creation of requests/tasks in a tracking database."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import yaml

from erasure.catalog import Catalog, load_catalog


def write_catalog(
    directory: Path,
    partners: dict[str, str],
    *,
    sync: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    postgres: dict[str, Any] | None = None,
) -> tuple[Path, Catalog]:
    """A catalog with one ``sync_api`` target per ``{name: base_url}`` (+ an optional postgres target).

    ``sync`` overrides ``sync_api`` fields, ``target`` target fields (e.g. retry_backoff_minutes).
    """
    targets: list[dict[str, Any]] = []
    for name, url in partners.items():
        targets.append(
            {
                "name": name,
                "kind": "sync_api",
                "owner": "crm",
                "subject_types": ["customer"],
                "identity_key": "customer_id",
                "max_attempts": 5,
                "retry_backoff_minutes": 0.0005,  # 30 ms: tests re-run failed work without waiting
                **(target or {}),
                "sync_api": {
                    "base_url": url,
                    "batch_size": 100,
                    "concurrency": 8,
                    "timeout_s": 2,
                    "max_retries": 2,
                    "pool_slots": 2,
                    **(sync or {}),
                },
            }
        )
    if postgres:
        targets.append(
            {
                "name": postgres.get("name", "hr_directory"),
                "kind": "postgres_table",
                "owner": "crm",
                "subject_types": ["customer"],
                "identity_key": "customer_id",
                "retry_backoff_minutes": 0.0005,
                "postgres_table": {k: v for k, v in postgres.items() if k != "name"},
            }
        )
    data = {
        "version": 1,
        "pipeline_owner": "crm",
        "subject_types": [{"name": "customer", "id_pattern": "^[A-Za-z0-9_.:-]{1,64}$"}],
        "teams": [{"name": "crm", "channel": "log:"}],
        "targets": targets,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_catalog(path)


def create_requests(
    dsn: str,
    subject_ids: list[str],
    targets: list[tuple[str, str]],
    *,
    status: str = "in_progress",
) -> dict[str, int]:
    """One request per subject (``status``) and one pending task per ``(target, kind)``; subject -> request id."""
    tag = uuid.uuid4().hex[:8]
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            rows = psycopg2.extras.execute_values(
                cur,
                "INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status, due_at)"
                " VALUES %s RETURNING id, subject_id",
                [(f"t-{tag}-{s}", "customer", s, "tests", "cli", status) for s in subject_ids],
                template="(%s, %s, %s, %s, %s, %s, now() + interval '30 days')",
                page_size=2000,
                fetch=True,
            )
            ids = {sid: rid for rid, sid in rows}
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO erasure.task (request_id, target, kind) VALUES %s",
                [(rid, t, k) for rid in ids.values() for t, k in targets],
                page_size=5000,
            )
    finally:
        conn.close()
    return ids


def tasks(dsn: str, target: str | None = None) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "SELECT t.*, r.subject_id, r.status AS request_status FROM erasure.task t"
                " JOIN erasure.request r ON r.id = t.request_id"
                " WHERE %(t)s::text IS NULL OR t.target = %(t)s ORDER BY t.id",
                {"t": target},
            )
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def query(dsn: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(q, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def task_ids(dsn: str, target: str) -> list[int]:
    return [r[0] for r in query(dsn, "SELECT id FROM erasure.task WHERE target = %s ORDER BY id", (target,))]
