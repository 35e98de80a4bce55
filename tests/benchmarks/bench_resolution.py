"""Benchmark (issue 16): identity resolution of 10,000 requests through 3 resolvers.

Run (~2 min)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_resolution.py -q -s

Data, in a schema of its own in the partner database (``$ERASURE_HR_DSN``): N people (default 10,000)
plus as many background people, each with an e-mail address, a customer id, two device ids and a phone
number, in three indexed tables: ``crm (email, customer_id)``, ``devices (customer_id, device_id)``,
``phones (customer_id, phone)``. The catalog has three ``postgres_table`` resolvers over them:
e-mail -> customer id, customer id -> device ids, customer id -> phone. N requests give only an e-mail.

* **pipeline**: ``resolve_pending`` on the N ``resolving`` requests: the lookups, normalising and sealing
  what they find, the identity rows, the release (holds, duplicates, ``not_found`` tasks, the audit event);
* **baseline**, measured in the same run: the same three lookups called directly through the adapters
  (``adapter.resolve`` of the same values, e-mail first, then the customer ids it found), nothing stored.

Reported: resolved requests per second of both and their ratio (goal: pipeline >= 0.7x the baseline),
median of ``BENCH_RESOLUTION_ROUNDS`` (3) rounds, alternating which runs first, with where the pipeline
spent its time (``ResolutionResult.seconds``: load, lookups, prepare, store, release) and the machine's
load. ``store_floor_s``: what merely writing the same rows costs (:func:`_floor`), measured after each
pipeline run; ``ratio_bound_by_store_floor`` = baseline / (baseline + floor) is the best ratio a
pipeline that stores what it found can reach here, whatever its own code costs. Figures to ``$ERASURE_LOCAL/bench/resolution.json``; no assertion on time (the figures depend on
the machine).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from erasure.catalog import load_catalog
from erasure.evidence.audit import verify_chain
from erasure.identity import IdentityCodec
from erasure.intake import register_requests
from erasure.resolution import resolve_pending
from erasure.settings import get_settings
from erasure.targets import Context, adapter_for

pytestmark = [pytest.mark.benchmark, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("BENCH_RESOLUTION_REQUESTS", "10000"))
ROUNDS = int(os.environ.get("BENCH_RESOLUTION_ROUNDS", "3"))


def _world(schema: str, n: int) -> None:
    conn = psycopg2.connect(os.environ["ERASURE_HR_DSN"])
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.crm AS
              SELECT 'p' || i || '@example.org' AS email, 'cus_b' || lpad(i::text, 8, '0') AS customer_id
                FROM generate_series(1, {2 * n}) i;
            CREATE TABLE {schema}.devices AS
              SELECT 'cus_b' || lpad(i::text, 8, '0') AS customer_id, 'dev_b' || lpad(i::text, 8, '0') || d AS device_id
                FROM generate_series(1, {2 * n}) i, (VALUES ('a'), ('b')) v(d);
            CREATE TABLE {schema}.phones AS
              SELECT 'cus_b' || lpad(i::text, 8, '0') AS customer_id, '+4930' || lpad(i::text, 8, '0') AS phone
                FROM generate_series(1, {2 * n}) i;
            CREATE INDEX ON {schema}.crm (email);
            CREATE INDEX ON {schema}.devices (customer_id);
            CREATE INDEX ON {schema}.phones (customer_id);
            ANALYZE {schema}.crm; ANALYZE {schema}.devices; ANALYZE {schema}.phones;
            """
        )
    conn.close()


def _catalog(tmp_path: Path, schema: str) -> Any:
    def table(name: str, key: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "postgres_table",
            "owner": "privacy",
            "subject_types": ["customer"],
            "identity_key": key,
            "postgres_table": {"dsn_env": "ERASURE_HR_DSN", "table": f"{schema}.{name}", "key_column": key},
        }

    data = {
        "version": 1,
        "pipeline_owner": "privacy",
        "teams": [{"name": "privacy", "channel": "log:"}],
        "subject_types": [{"name": "customer", "id_type": "customer_id", "request_identifiers": ["email"]}],
        "identifier_types": [
            {"name": "customer_id", "pattern": "^cus_[a-z0-9]{4,20}$"},
            {"name": "email", "pattern": "^[^@ ]+@[^@ ]+$", "normalize": "email"},
            {"name": "phone", "pattern": "^\\+[1-9][0-9]{6,14}$", "normalize": "e164"},
            {"name": "device_id", "pattern": "^dev_[a-z0-9]{4,20}$"},
        ],
        "resolvers": [
            {"name": "by_email", "target": "crm", "from": "email", "to": ["customer_id"], "batch_size": 1000},
            {
                "name": "devices",
                "target": "devices",
                "from": "customer_id",
                "to": ["device_id"],
                "batch_size": 1000,
            },
            {
                "name": "phones",
                "target": "phones",
                "from": "customer_id",
                "to": ["phone"],
                "batch_size": 1000,
            },
        ],
        "targets": [table("crm", "email"), table("devices", "device_id"), table("phones", "phone")],
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_catalog(path)


def _baseline(catalog: Any, emails: list[str]) -> float:
    ctx = Context(settings=get_settings())
    t0 = time.perf_counter()
    r1 = catalog.resolver("by_email")
    found = adapter_for(catalog.target("crm")).resolve(ctx, catalog.target("crm"), r1, emails)
    customers = sorted({c for v in found.values() for c in v.get("customer_id", [])})
    for name in ("devices", "phones"):
        r = catalog.resolver(name)
        t = catalog.target(r.target)
        adapter_for(t).resolve(ctx, t, r, customers)
    return time.perf_counter() - t0


def _floor(dsn: str) -> float:
    """What the store must write for what the pipeline just wrote, with no logic at all: as many
    identity rows, resolver states, request updates and ``identity_resolved`` audit events (through the
    same tables, indexes, foreign keys and triggers, the audit chain included), each one plain set
    statement copying the pipeline's own rows; timed, then rolled back."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            cur.execute(
                """INSERT INTO erasure.identity (request_id, id_type, digest, sealed, source, parent_id, depth)
                   SELECT request_id, id_type, digest || '#', sealed, source, parent_id, depth
                     FROM erasure.identity WHERE source <> 'request'"""
            )
            cur.execute(
                """INSERT INTO erasure.resolution (request_id, resolver, status, lookup_cursor, looked_up, found)
                   SELECT request_id, resolver || '#', status, lookup_cursor, looked_up, found
                     FROM erasure.resolution"""
            )
            cur.execute(
                """UPDATE erasure.request SET status_reason = status_reason, updated_at = now()
                    WHERE status = 'in_progress'"""
            )
            cur.execute(
                """INSERT INTO erasure.event_log (request_id, event_type, status, details)
                   SELECT request_id, event_type, status, details FROM erasure.event_log
                    WHERE event_type = 'identity_resolved' ORDER BY seq"""
            )
            elapsed = time.perf_counter() - t0
        conn.rollback()
    finally:
        conn.close()
    return elapsed


def _register(dsn: str, catalog: Any, codec: IdentityCodec, emails: list[str]) -> None:
    for i in range(0, len(emails), 1000):
        batch = [
            {"subject_type": "customer", "requested_by": "bench", "identifiers": {"email": e}}
            for e in emails[i : i + 1000]
        ]
        res = register_requests(dsn, catalog, batch, "api", codec=codec)
        assert res.registered == len(batch)


def test_resolution_throughput(tracking_db, tmp_path):
    schema = f"bench_res_{uuid.uuid4().hex[:6]}"
    _world(schema, N)
    catalog = _catalog(tmp_path, schema)
    codec = IdentityCodec.from_settings(get_settings())
    emails = [f"p{i}@example.org" for i in range(1, N + 1)]
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(ROUNDS):
            conn = psycopg2.connect(tracking_db)
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL erasure.audit_maintenance = 'truncate'")
                cur.execute(
                    "TRUNCATE erasure.identity, erasure.resolution, erasure.task, erasure.event_log,"
                    " erasure.request RESTART IDENTITY CASCADE"
                )
            conn.close()
            _register(tracking_db, catalog, codec, emails)
            order = ["baseline", "pipeline"] if r % 2 == 0 else ["pipeline", "baseline"]
            got: dict[str, Any] = {}
            for what in order:
                if what == "baseline":
                    got["baseline_s"] = _baseline(catalog, emails)
                else:
                    t0 = time.perf_counter()
                    res = resolve_pending(tracking_db, catalog, get_settings(), codec)
                    got["pipeline_s"] = time.perf_counter() - t0
                    assert res.released == N and res.still_resolving == 0, res.as_dict()
                    assert res.found == {"by_email": N, "devices": 2 * N, "phones": N}
                    got["pipeline_phases_s"] = {k: round(v, 3) for k, v in res.seconds.items()}
                    got["store_floor_s"] = _floor(tracking_db)
                    chain = verify_chain(tracking_db)  # the audit chain holds after bulk appends
                    assert chain.ok, chain.summary()
            got["load_avg_1m"] = round(os.getloadavg()[0], 2)
            rounds.append(got)
            print(f"round {r + 1}: {got}")
    finally:
        conn = psycopg2.connect(os.environ["ERASURE_HR_DSN"])
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
    pipeline = statistics.median(x["pipeline_s"] for x in rounds)
    baseline = statistics.median(x["baseline_s"] for x in rounds)
    floor = statistics.median(x["store_floor_s"] for x in rounds)
    out = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "requests": N,
        "resolvers": 3,
        "rounds": rounds,
        "median": {
            "pipeline_s": round(pipeline, 3),
            "baseline_s": round(baseline, 3),
            "pipeline_requests_per_s": round(N / pipeline, 1),
            "baseline_requests_per_s": round(N / baseline, 1),
            "ratio": round(baseline / pipeline, 3),
            "store_floor_s": round(floor, 3),
            "ratio_bound_by_store_floor": round(baseline / (baseline + floor), 3),
            "pipeline_phases_s": {
                k: round(statistics.median(x["pipeline_phases_s"].get(k, 0.0) for x in rounds), 3)
                for k in rounds[0]["pipeline_phases_s"]
            },
        },
        "goal": "pipeline >= 0.7x baseline (requests per second)",
    }
    path = Path(os.environ.get("ERASURE_LOCAL") or ROOT / ".local") / "bench" / "resolution.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["median"], indent=2))
