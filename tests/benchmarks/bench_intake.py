"""Benchmark (issue 15): 10,000 requests registered through ``erasure.intake.register_requests`` vs a plain
``COPY`` of the same rows into the same tables; goal: intake >= 0.3x the COPY.

Run (~2 min)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_intake.py -q -s

Knobs: ``BENCH_INTAKE_N`` (requests, 10,000), ``BENCH_INTAKE_ROUNDS`` (3; rounds alternate which side goes
first, the median is the figure).

* **intake**: ``register_requests`` in calls of ``MAX_BATCH`` (1,000, the most one call accepts, as a
  DAG run's batch) with the repository's catalog: validation of every field, the subjects' advisory
  locks, legal holds, dedupe by external id and open subject (``ON CONFLICT``), one request row and one
  task row per catalog target for the subject type — in chunks of ``REGISTER_CHUNK`` per transaction.
* **copy**: the same request rows (same values, statuses and due dates) with ``COPY ... FROM STDIN``
  into ``erasure.request``, their ids read back, and the same task rows with ``COPY`` into
  ``erasure.task``, in one transaction — no validation, no locks, no dedupe.

Both sides write into the same tables with the same triggers (the event log, hash-chained), emptied
between sides. Figures to ``.local/bench/intake.json``; no assertion on time.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from erasure.catalog import Catalog
from erasure.evidence.audit import verify_chain
from erasure.intake import MAX_BATCH, REGISTER_CHUNK, register_requests
from tests.helpers.db import query

pytestmark = [pytest.mark.benchmark, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

N = int(os.environ.get("BENCH_INTAKE_N", "10000"))
ROUNDS = int(os.environ.get("BENCH_INTAKE_ROUNDS", "3"))


def _empty(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL erasure.audit_maintenance = 'truncate'")
            cur.execute(
                "TRUNCATE erasure.rejected_request, erasure.event_log, erasure.task, erasure.request CASCADE"
            )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE erasure.request")
            cur.execute("VACUUM ANALYZE erasure.task")
    finally:
        conn.close()


def _payloads(tag: str) -> list[dict[str, Any]]:
    return [
        {
            "external_id": f"bench-{tag}-{i}",
            "subject_type": "customer",
            "subject_id": f"cus_{tag}{i:08d}",
            "requested_by": "bench@example.com",
            "reason": "benchmark",
            "jurisdiction": "GDPR",
        }
        for i in range(N)
    ]


def _intake(dsn: str, catalog: Catalog, payloads: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    registered = 0
    for i in range(0, len(payloads), MAX_BATCH):
        res = register_requests(dsn, catalog, payloads[i : i + MAX_BATCH], "api", run_id="bench")
        registered += res.registered
    secs = time.perf_counter() - t0
    assert registered == N
    return secs


def _copy_text(rows: list[tuple[Any, ...]]) -> io.StringIO:
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join("\\N" if v is None else str(v) for v in r) + "\n")
    buf.seek(0)
    return buf


def _copy(dsn: str, catalog: Catalog, payloads: list[dict[str, Any]]) -> float:
    targets = [(t.name, t.kind) for t in catalog.targets_for("customer")]
    sla = catalog.sla_for("GDPR")
    conn = psycopg2.connect(dsn)
    try:
        t0 = time.perf_counter()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT now(), now() + make_interval(days => %s)", (sla,))
            received, due = cur.fetchone()
            rows = [
                (p["external_id"], p["subject_type"], p["subject_id"], p["requested_by"], p["reason"],
                 p["jurisdiction"], "api", "false", "in_progress", received.isoformat(), due.isoformat(), "bench")
                for p in payloads
            ]  # fmt: skip
            cur.copy_expert(
                "COPY erasure.request (external_id, subject_type, subject_id, requested_by, reason, jurisdiction,"
                " source, is_canary, status, received_at, due_at, airflow_run_id) FROM STDIN",
                _copy_text(rows),
            )
            cur.execute("SELECT id FROM erasure.request WHERE airflow_run_id = 'bench' ORDER BY id")
            ids = [r[0] for r in cur.fetchall()]
            cur.copy_expert(
                "COPY erasure.task (request_id, target, kind) FROM STDIN",
                _copy_text([(rid, name, kind) for rid in ids for name, kind in targets]),
            )
        secs = time.perf_counter() - t0
    finally:
        conn.close()
    assert len(ids) == N
    return secs


def test_intake_vs_copy(tracking_db, catalog):
    dsn = tracking_db
    tasks_per_request = len(catalog.targets_for("customer"))
    times: dict[str, list[float]] = {"intake": [], "copy": []}
    for rnd in range(ROUNDS):
        for side in ("intake", "copy") if rnd % 2 == 0 else ("copy", "intake"):
            _empty(dsn)
            payloads = _payloads(f"{rnd}{side[0]}")
            if side == "intake":
                times[side].append(_intake(dsn, catalog, payloads))
            else:
                times[side].append(_copy(dsn, catalog, payloads))
            counts = query(
                dsn,
                "SELECT (SELECT count(*) FROM erasure.request)::int AS requests,"
                " (SELECT count(*) FROM erasure.task)::int AS tasks,"
                " (SELECT count(*) FROM erasure.event_log)::int AS events",
            )[0]
            assert counts["requests"] == N and counts["tasks"] == N * tasks_per_request, counts
            assert counts["events"] == N * (1 + tasks_per_request), counts  # received + task_created each
            assert verify_chain(dsn).ok
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {N / v[-1]:,.0f} requests/s" for k, v in times.items()))

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "intake register_requests vs plain COPY into the same tables",
        "requests": N,
        "tasks_per_request": tasks_per_request,
        "rounds": ROUNDS,
        "call_size": MAX_BATCH,
        "register_chunk": REGISTER_CHUNK,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_requests_per_s": {k: round(N / v) for k, v in med.items()},
        "ratio_intake_vs_copy_median": round(med["copy"] / med["intake"], 3),
        "goal": ">= 0.3x",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = ROOT / ".local" / "bench" / "intake.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
