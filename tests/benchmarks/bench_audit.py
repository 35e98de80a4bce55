"""Benchmark (issue 17): receipt issuing for 10,000 completed requests and ``audit verify`` of 1,000,000 events.

Run (defaults: 10,000 requests, 1,000,000 events, 3 rounds; a few minutes on 2 cores)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_audit.py -q -s

Knobs: ``BENCH_AUDIT_REQUESTS``, ``BENCH_AUDIT_EVENTS``, ``BENCH_AUDIT_ROUNDS``.

In the session's tracking database (emptied through the documented maintenance path):

* **receipts**: N completed requests with two succeeded, verified tasks each (set-based SQL, so the
  triggers chain their events); ``erasure.evidence.receipts.issue_receipts`` builds, signs (Ed25519)
  and stores one receipt per request, in batches. Between rounds the receipts are removed (maintenance).
* **audit verify**: the event log is topped up to M events (one ``INSERT ... SELECT``, each row chained by
  the trigger); ``erasure.evidence.audit.verify_chain`` (server-side cursor, one sequential pass,
  every hash recomputed by the database from the tool's own SQL; the Python recomputation is measured
  too, for information) next to ``scan_rows``: the same query, cursor and batch size, rows fetched and
  dropped - one plain sequential scan of the same rows in the same run. Rounds alternate which goes first.

Medians go to ``.local/bench/audit.json`` (goal: verify <= 2x the scan). No assertion on time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import pytest

from erasure.evidence import audit, receipts
from erasure.evidence.keys import ReceiptKeys, init_keys
from tests.conftest import ROOT
from tests.helpers.db import query

pytestmark = pytest.mark.benchmark

N_REQUESTS = int(os.environ.get("BENCH_AUDIT_REQUESTS", "10000"))
N_EVENTS = int(os.environ.get("BENCH_AUDIT_EVENTS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_AUDIT_ROUNDS", "3"))
MAINT = "SET LOCAL erasure.audit_maintenance = 'truncate'; "
VERIFICATION = json.dumps(
    {"http_status": 204, "outcome": "deleted", "verification": {"outcome": "verified", "method": "lookup",
     "verified_at": "2026-11-24T10:00:00+00:00", "answer": "404"}}
)  # fmt: skip


def _seed_requests(dsn: str, n: int) -> None:
    query(dsn, MAINT + "TRUNCATE erasure.receipt, erasure.event_log, erasure.task, erasure.request CASCADE")
    query(
        dsn,
        """
        INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status, due_at)
        SELECT 'bench-' || g, 'customer', 'cus_bench_' || g, 'bench', 'api', 'in_progress', now() + interval '30 days'
          FROM generate_series(1, %s) g
        """,
        (n,),
    )
    query(
        dsn,
        """
        INSERT INTO erasure.task (request_id, target, kind)
        SELECT r.id, t.target, t.kind FROM erasure.request r
         CROSS JOIN (VALUES ('crm_contacts', 'sync_api'), ('marketing_events', 'kafka')) t(target, kind)
        """,
    )
    query(
        dsn,
        "UPDATE erasure.task SET status = 'succeeded', completed_at = now(), evidence = %s::jsonb",
        (VERIFICATION,),
    )
    query(
        dsn,
        "UPDATE erasure.request SET status = 'completed', completed_at = now(), status_reason = 'bench'",
    )


def _top_up_events(dsn: str, total: int) -> int:
    have = query(dsn, "SELECT count(*) AS n FROM erasure.event_log")[0]["n"]
    if have < total:
        query(
            dsn,
            """
            INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, attempt, details)
            SELECT 1 + g %% %s, g, 'crm_contacts', 'task_retried', 'pending', g %% 5,
                   jsonb_build_object('http_status', 503, 'error', 'bench event ' || g, 'attempt', g %% 5)
              FROM generate_series(1, %s) g
            """,
            (N_REQUESTS, total - have),
        )
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # VACUUM runs outside a transaction
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE erasure.event_log")
    conn.close()
    return int(query(dsn, "SELECT count(*) AS n FROM erasure.event_log")[0]["n"])


def test_bench_receipts_and_audit_verify(pg_dsn, catalog, tmp_path):
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir)
    keys = ReceiptKeys.from_files(keys_dir / "receipt-signing-key.pem", keys_dir / "identifier-hmac.key")
    owners = {t.name: t.owner for t in catalog.targets}

    t0 = time.perf_counter()
    _seed_requests(pg_dsn, N_REQUESTS)
    seed_s = time.perf_counter() - t0
    issue_s = []
    for r in range(ROUNDS):
        if r:
            query(pg_dsn, MAINT + "TRUNCATE erasure.receipt")
        rep = receipts.issue_receipts(pg_dsn, keys, owners=owners)
        assert rep.issued == N_REQUESTS and not rep.not_ready
        issue_s.append(rep.seconds)

    t0 = time.perf_counter()
    events = _top_up_events(pg_dsn, N_EVENTS)
    insert_s = time.perf_counter() - t0
    verify_s, scan_s, python_s = [], [], []
    for r in range(ROUNDS):
        order = ("verify", "scan", "python") if r % 2 == 0 else ("scan", "python", "verify")
        for side in order:
            if side in ("verify", "python"):
                mode = "database" if side == "verify" else "python"
                rep = audit.verify_chain(pg_dsn, recompute=mode)
                assert rep.ok and rep.events == events, rep.summary()
                (verify_s if side == "verify" else python_s).append(rep.seconds)
            else:
                n, s = audit.scan_rows(pg_dsn)
                assert n == events
                scan_s.append(s)
    med_v, med_s, med_i = statistics.median(verify_s), statistics.median(scan_s), statistics.median(issue_s)
    result = {
        "benchmark": "audit",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": ROUNDS,
        "receipts": {
            "requests": N_REQUESTS,
            "seconds": issue_s,
            "median_s": round(med_i, 3),
            "per_s": round(N_REQUESTS / med_i, 1),
            "seed_s": round(seed_s, 2),
        },
        "audit_verify": {
            "events": events,
            "insert_s": round(insert_s, 2),
            "verify_s": verify_s,
            "scan_s": scan_s,
            "median_verify_s": round(med_v, 3),
            "median_scan_s": round(med_s, 3),
            "ratio": round(med_v / med_s, 2),
            "goal": "verify <= 2x scan",
            "met": med_v <= 2 * med_s,
            "events_per_s": round(events / med_v),
            "python_recompute_s": python_s,
            "median_python_recompute_s": round(statistics.median(python_s), 3),
            "python_ratio": round(statistics.median(python_s) / med_s, 2),
        },
    }
    out = ROOT / ".local" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    Path(out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
