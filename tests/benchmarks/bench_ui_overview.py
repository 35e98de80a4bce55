"""Benchmark (issue 19): the Erasure view's overview page with 100,000 requests in the tracking store.

Run (default 100,000 requests x 5 tasks, 5 rounds; about a minute on 2 cores)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_ui_overview.py -q -s

Knobs: ``BENCH_UI_REQUESTS``, ``BENCH_UI_ROUNDS``.

The session's tracking database is filled set-based (statuses, jurisdictions and receipt dates spread
over 30 days, 5 tasks per request with some escalated, alerts), with the audit triggers off for the fill
only (``session_replication_role = replica``: the event log is not what the overview reads). Then, in
alternating order per round:

* **page**: ``GET /erasure/ui/`` of the real FastAPI app (``erasure.airflow.ui.app.create_app``) in
  process (Starlette's test client): auth dependency, every query, the SVG charts, the HTML;
* **queries**: the same queries (``erasure.tracking.views``) run directly on one connection.

Medians go to ``.local/bench/ui_overview.json``; the goal is the page within 1 s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers.db import query

pytestmark = pytest.mark.benchmark

N = int(os.environ.get("BENCH_UI_REQUESTS", "100000"))
ROUNDS = int(os.environ.get("BENCH_UI_ROUNDS", "5"))
GOAL_S = 1.0


def _fill(dsn: str, n: int) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SET LOCAL session_replication_role = replica")  # no event-log triggers for the fill
        cur.execute(
            """
            INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status,
                                         jurisdiction, received_at, due_at, completed_at)
            SELECT 'bench-' || g, 'customer', 'cus_bench' || g, 'bench', 'api',
                   (ARRAY['completed','completed','completed','in_progress','in_progress','failed','held',
                          'received','rejected','in_review'])[1 + mod(g, 10)],
                   (ARRAY['GDPR','GDPR','CCPA','UK-GDPR'])[1 + mod(g, 4)],
                   now() - make_interval(mins => mod(g, 43200)),
                   now() - make_interval(mins => mod(g, 43200)) + interval '30 days',
                   CASE WHEN mod(g, 10) < 3 THEN now() - make_interval(mins => mod(g, 43200)) + interval '2 days' END
              FROM generate_series(1, %s) g
            """,
            (n,),
        )
        cur.execute(
            """
            INSERT INTO erasure.task (request_id, target, kind, status, attempts, last_error, created_at, completed_at)
            SELECT r.id, t.name, t.kind,
                   CASE WHEN r.status = 'completed' THEN 'succeeded'
                        WHEN r.status = 'failed' AND t.name = 'crm_contacts' THEN 'escalated'
                        WHEN r.status = 'failed' THEN 'succeeded' ELSE 'pending' END,
                   1 + mod(r.id, 3)::int, CASE WHEN r.status = 'failed' THEN 'HTTP 500' END, r.received_at,
                   CASE WHEN r.status IN ('completed', 'failed') THEN r.received_at + interval '1 hour' END
              FROM erasure.request r
             CROSS JOIN (VALUES ('crm_contacts','sync_api'), ('billing_profiles','sync_api'),
                                ('support_desk','sync_api'), ('marketing_events','kafka'),
                                ('wh_orders','warehouse_delta')) AS t(name, kind)
            """
        )
        cur.execute(
            """
            INSERT INTO erasure.alert (dedupe_key, kind, team, channel, request_id, message, created_at)
            SELECT 'bench:' || r.id, 'task_escalated', 'crm', 'log:', r.id, 'bench', r.received_at
              FROM erasure.request r WHERE r.status = 'failed'
            """
        )
        cur.execute("ANALYZE erasure.request; ANALYZE erasure.task; ANALYZE erasure.alert")
    conn.close()


def test_overview_page_with_many_requests(tracking_db, catalog, monkeypatch):
    from fastapi.testclient import TestClient

    from erasure.airflow.ui import app as ui_app
    from erasure.airflow.ui import auth, model
    from erasure.db import transaction
    from erasure.tracking import views

    t0 = time.perf_counter()
    _fill(tracking_db, N)
    fill_s = time.perf_counter() - t0
    assert query(tracking_db, "SELECT count(*) AS n FROM erasure.request")[0]["n"] == N

    class User:
        def get_name(self) -> str:
            return "bench"

    monkeypatch.setattr(ui_app, "tracking_dsn", lambda: tracking_db)
    monkeypatch.setattr(ui_app, "catalog", lambda: catalog)
    monkeypatch.setattr(ui_app, "can_write", lambda user: False)
    app = ui_app.create_app()
    app.dependency_overrides[auth.reader] = User
    client = TestClient(app)

    def page() -> float:
        t = time.perf_counter()
        r = client.get("/ui/")
        assert r.status_code == 200 and 'id="kpi-total">' + str(N) in r.text.replace("\n", "")
        return time.perf_counter() - t

    def queries() -> float:
        now = datetime.now(UTC)
        t = time.perf_counter()
        with transaction(tracking_db) as cur:
            views.requests_by_status(cur)
            views.sla_by_jurisdiction(cur, now, now + timedelta(days=model.SOON_DAYS))
            views.throughput_per_day(cur, now - timedelta(days=model.THROUGHPUT_DAYS))
            views.escalated_per_target(cur)
            views.open_alerts(cur, now - timedelta(days=model.ALERT_DAYS))
            views.due_soonest(cur, 10)
        return time.perf_counter() - t

    page()  # warm-up: templates compiled, connections' first use
    pages, direct = [], []
    for i in range(ROUNDS):
        if i % 2:
            direct.append(queries())
            pages.append(page())
        else:
            pages.append(page())
            direct.append(queries())
    result = {
        "benchmark": "ui_overview",
        "requests": N,
        "tasks": N * 5,
        "rounds": ROUNDS,
        "fill_s": round(fill_s, 1),
        "page_median_s": round(statistics.median(pages), 3),
        "page_max_s": round(max(pages), 3),
        "queries_median_s": round(statistics.median(direct), 3),
        "ratio": round(statistics.median(pages) / statistics.median(direct), 2),
        "goal_s": GOAL_S,
        "goal_met": statistics.median(pages) <= GOAL_S,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = Path(os.environ.get("ERASURE_LOCAL", ROOT / ".local")) / "bench" / "ui_overview.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
