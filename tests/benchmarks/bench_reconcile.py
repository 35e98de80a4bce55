"""Benchmark (issue 15): one ``reconcile()`` run over 25,000, 50,000 and 100,000 open tasks — time and
SQL statements per run; goal: linear in open tasks (or better: every step is bounded by ``batch``).

Run (~3 min)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_reconcile.py -q -s

Knobs: ``BENCH_RECONCILE_SIZES`` (open tasks, comma-separated; default ``25000,50000,100000``),
``BENCH_RECONCILE_ROUNDS`` (3: each size is rebuilt and reconciled that many times, sizes alternating
in order and reverse order; the median is reported).

Data (5 tasks per request, written straight into the store as intake and dispatch write them; requests
all ``in_progress``; every task of a request in the same status): per 20 requests, 8 ``pending``, 4 ``in_progress`` (lease not expired), 2 ``failed`` and
due for a retry, 1 ``failed`` with its backoff running (pushed), 1 ``failed`` after ``max_attempts``
(escalated, one alert), 2 ``awaiting_ack`` (of the Kafka target: an event published two hours ago, past
its ack timeout, replayed), 2 ``succeeded``; 1 request in 50 past its due date and 1 in 50 within the warning window
(one SLA alert each, naming the blocking targets). Alerts go to ``log:`` channels (delivered in the
run). The first run does the work (bounded by ``batch``, default 5,000 per step), the second does what
the first left over (beyond ``batch``) or nothing; both are measured. Statements are counted on the run's own connections.

Figures to ``.local/bench/reconcile.json``; no assertion on time (the figures depend on the machine).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from erasure import alerts, reconcile
from erasure.catalog import load_catalog
from tests.helpers.db import query

pytestmark = [pytest.mark.benchmark, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

SIZES = [int(x) for x in os.environ.get("BENCH_RECONCILE_SIZES", "25000,50000,100000").split(",")]
ROUNDS = int(os.environ.get("BENCH_RECONCILE_ROUNDS", "3"))
TARGETS = ("crm", "billing", "support", "recs", "events")

CATALOG = """
version: 1
sla_days: 30
pipeline_owner: privacy
subject_types: [{name: customer}]
teams: [{name: privacy, channel: 'log:'}, {name: crm, channel: 'log:'}]
targets:
"""


def _catalog(tmp_path: Path) -> Any:
    text = CATALOG
    for name in TARGETS[:-1]:
        text += (
            f"  - {{name: {name}, kind: sync_api, owner: crm, subject_types: [customer], "
            f"identity_key: customer_id, max_attempts: 3, sync_api: {{base_url: 'http://127.0.0.1:9'}}}}\n"
        )
    text += (
        "  - {name: events, kind: kafka, owner: crm, subject_types: [customer], identity_key: customer_id, "
        "max_attempts: 5, kafka: {topic: bench.events, ack_topic: bench.acks, ack_timeout_minutes: 5}}\n"
    )
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return load_catalog(path)


_STATUS_OF = """
CASE (t.n % 20)
    WHEN 0 THEN 'pending' WHEN 1 THEN 'pending' WHEN 2 THEN 'pending' WHEN 3 THEN 'pending'
    WHEN 4 THEN 'pending' WHEN 5 THEN 'pending' WHEN 6 THEN 'pending' WHEN 7 THEN 'pending'
    WHEN 8 THEN 'in_progress' WHEN 9 THEN 'in_progress' WHEN 10 THEN 'in_progress' WHEN 11 THEN 'in_progress'
    WHEN 12 THEN 'failed' WHEN 13 THEN 'failed' WHEN 14 THEN 'failed' WHEN 15 THEN 'failed'
    WHEN 16 THEN 'awaiting_ack' WHEN 17 THEN 'awaiting_ack'
    ELSE 'succeeded' END
"""


def _build(dsn: str, open_tasks: int) -> None:
    """Empty the store and write ``open_tasks`` tasks (5 per request) in the mix of the module doc."""
    requests = open_tasks // len(TARGETS)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL erasure.audit_maintenance = 'truncate'")
            cur.execute(
                "TRUNCATE erasure.alert, erasure.outbox, erasure.event_log, erasure.task, erasure.request"
                " RESTART IDENTITY CASCADE"
            )
            cur.execute(
                """
                INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status,
                                             received_at, due_at)
                SELECT 'bench-' || g, 'customer', 'cus_' || lpad(g::text, 8, '0'), 'bench', 'cli', 'in_progress',
                       now() - interval '20 days',
                       CASE WHEN g %% 50 = 0 THEN now() - interval '1 day'
                            WHEN g %% 50 = 1 THEN now() + interval '2 days'
                            ELSE now() + interval '25 days' END
                  FROM generate_series(1, %s) g
                """,
                (requests,),
            )
            cur.execute(
                f"""
                INSERT INTO erasure.task (request_id, target, kind, status, attempts, next_attempt_at, updated_at,
                                          evidence, last_error)
                SELECT t.request_id, t.target, t.kind, t.status,
                       CASE WHEN t.status = 'failed' AND t.n % 20 = 15 THEN 3
                            WHEN t.status IN ('failed', 'awaiting_ack') THEN 1 ELSE 0 END,
                       CASE WHEN t.status = 'failed' AND t.n % 20 = 14 THEN now() ELSE now() - interval '1 hour' END,
                       CASE WHEN t.status = 'failed' AND t.n % 20 = 14 THEN now()
                            WHEN t.status = 'in_progress' THEN now() ELSE now() - interval '1 hour' END,
                       CASE WHEN t.status = 'succeeded' THEN '{{"verification": {{"outcome": "verified"}}}}'::jsonb
                            WHEN t.status = 'in_progress' THEN '{{"claim": "bench"}}'::jsonb
                            ELSE '{{}}'::jsonb END,
                       CASE WHEN t.status = 'failed' THEN 'HTTP 503' END
                  FROM (SELECT r.id AS request_id, x.target, x.kind,
                               r.id AS n, {_STATUS_OF.replace("t.n", "r.id")} AS status
                          FROM erasure.request r
                         CROSS JOIN (VALUES (0, 'crm', 'sync_api'), (1, 'billing', 'sync_api'),
                                            (2, 'support', 'sync_api'), (3, 'recs', 'sync_api'),
                                            (4, 'events', 'kafka')) AS x(i, target, kind)) t
                """  # noqa: S608 - constant SQL
            )
            cur.execute(
                """
                INSERT INTO erasure.outbox (event_id, task_id, topic, message_key, payload, attempt, created_at,
                                            published_at, publish_count)
                SELECT gen_random_uuid(), t.id, 'bench.events', 'k', '{}'::jsonb, 1, now() - interval '3 hours',
                       now() - interval '2 hours', 1
                  FROM erasure.task t WHERE t.status = 'awaiting_ack' AND t.target = 'events'
                """
            )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE erasure.task")
            cur.execute("VACUUM ANALYZE erasure.request")
            cur.execute("VACUUM ANALYZE erasure.outbox")
    finally:
        conn.close()


class _Counting(psycopg2.extras.RealDictCursor):
    statements = 0

    def execute(self, query: Any, vars: Any = None) -> Any:  # noqa: A002 - psycopg2's name
        _Counting.statements += 1
        return super().execute(query, vars)


@contextmanager
def _counted_transaction(dsn: str) -> Iterator[Any]:
    """``erasure.db.transaction`` with a cursor that counts the statements it sends."""
    from erasure.db import connect

    conn = connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=_Counting) as cur:
            yield cur
    finally:
        conn.close()


def _run(dsn: str, catalog: Any) -> tuple[float, int, dict[str, int]]:
    _Counting.statements = 0
    t0 = time.perf_counter()
    res = reconcile.reconcile(dsn, catalog, now=datetime.now(UTC))
    return time.perf_counter() - t0, _Counting.statements, {k: v for k, v in res.as_dict().items() if v}


def test_reconcile_time_and_statements_per_run(tracking_db, tmp_path, monkeypatch):
    dsn = tracking_db
    catalog = _catalog(tmp_path)
    monkeypatch.setattr(reconcile, "transaction", _counted_transaction)
    monkeypatch.setattr(alerts, "transaction", _counted_transaction)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in SIZES}
    for rnd in range(ROUNDS):
        for n in SIZES if rnd % 2 == 0 else list(reversed(SIZES)):
            _build(dsn, n)
            open_tasks = query(
                dsn,
                "SELECT count(*)::int AS n FROM erasure.task WHERE status <> ALL('{succeeded,escalated}')",
            )[0]["n"]
            first_s, first_q, first = _run(dsn, catalog)
            second_s, second_q, second = _run(dsn, catalog)
            runs[n].append(
                {
                    "open_tasks": open_tasks,
                    "first_run_s": round(first_s, 3),
                    "first_run_statements": first_q,
                    "first_run_did": first,
                    "second_run_s": round(second_s, 3),
                    "second_run_statements": second_q,
                    "second_run_did": second,
                }
            )
            print(f"round {rnd + 1}, {n} tasks: {runs[n][-1]}")
            assert first.get("retried") and first.get("replayed") and first.get("escalated"), first

    summary = {}
    for n, rs in runs.items():
        summary[n] = {
            "open_tasks": rs[0]["open_tasks"],
            "first_run_s_median": round(statistics.median(r["first_run_s"] for r in rs), 3),
            "second_run_s_median": round(statistics.median(r["second_run_s"] for r in rs), 3),
            "first_run_statements": sorted({r["first_run_statements"] for r in rs}),
            "second_run_statements": sorted({r["second_run_statements"] for r in rs}),
        }
    small, big = min(SIZES), max(SIZES)
    result = {
        "benchmark": "reconcile: one run over many open tasks",
        "sizes": SIZES,
        "rounds": ROUNDS,
        "batch": reconcile.DEFAULT_BATCH,
        "summary": summary,
        "growth_first_run": round(
            summary[big]["first_run_s_median"] / summary[small]["first_run_s_median"], 2
        ),
        "growth_second_run": round(
            summary[big]["second_run_s_median"] / summary[small]["second_run_s_median"], 2
        ),
        "growth_open_tasks": round(big / small, 2),
        "goal": "time linear (or better) in open tasks",
        "runs": {str(k): v for k, v in runs.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = ROOT / ".local" / "bench" / "reconcile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
