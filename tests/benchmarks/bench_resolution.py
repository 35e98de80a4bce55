"""Benchmark (issue 16): identity resolution of 10,000 requests through 3 resolvers, in two configurations.

Run (~3 min)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_resolution.py -q -s -p no:cacheprovider

Both configurations register N requests (default 10,000) that give only an e-mail address, and measure in
the same run, over ``BENCH_RESOLUTION_ROUNDS`` (3) rounds, alternating which runs first:

* **pipeline**: ``resolve_pending`` on the N ``resolving`` requests: the lookups, normalising and sealing
  what they find, the identity rows and resolver states, the release (holds, duplicates, ``not_found``
  tasks, the ``identity_resolved`` audit event per request);
* **baseline**: the same three lookups called directly through the same adapters and HTTP client, with
  the same batch sizes, one after the other as the pipeline's rounds ask them (e-mail first, then the
  customer ids it found), nothing stored.

Configurations:

* ``postgres_tables`` (the worst case for the goal): three ``postgres_table`` resolvers over indexed
  tables in a schema of its own in the partner database (``$ERASURE_HR_DSN``): ``crm (email,
  customer_id)``, ``devices (customer_id, device_id)``, ``phones (customer_id, phone)``; e-mail ->
  customer id, customer id -> two device ids, customer id -> phone. The cheapest lookup there is (~30 µs
  per request), so what the pipeline writes per request weighs most. ``store_floor_s``: what merely
  writing the same rows costs (:func:`_floor`); ``ratio_bound_by_store_floor`` = baseline / (baseline +
  floor);
* ``demo_resolvers``: the demo catalog's own three resolvers (``include/catalog``: ``crm_by_email`` and
  ``crm_by_customer`` = the CRM's ``POST /identities/lookup``, ``devices_by_customer`` = the device
  registry table ``identity.devices``), the CRM served by the project's partner simulator process
  (``python -m erasure_demo.partners.run``, as ``scripts/stack.sh up partners`` starts it) on a free
  port, seeded with 2N people (N requested, N more); the device registry seeded with two devices each.

Reported per configuration: resolved requests per second of both and their ratio (goal: pipeline >=
0.7x the baseline), medians, where the pipeline spent its time (``ResolutionResult.seconds``: load,
lookups, prepare, store (on the writer's connection, overlapping the next round), store_wait, release)
and the machine's load. Figures to ``$ERASURE_LOCAL/bench/resolution.json`` (one entry per configuration;
a run of one test keeps the other's entry); no assertion on time (the figures depend on the machine).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
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
from erasure.targets.sync_api import SyncApiSpec
from erasure_demo.partners.pg_tables import ensure_tables
from erasure_demo.partners.store import PartnerStore

pytestmark = [pytest.mark.benchmark, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("BENCH_RESOLUTION_REQUESTS", "10000"))
ROUNDS = int(os.environ.get("BENCH_RESOLUTION_ROUNDS", "3"))
GOAL = 0.7


# -- configuration 1: three postgres_table resolvers ----------------------------------------------


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


# -- configuration 2: the demo catalog's own resolvers, the CRM served by the partner simulator -----

DEMO_RESOLVERS = ("crm_by_email", "crm_by_customer", "devices_by_customer")
DEMO_TARGETS = ("crm_contacts", "device_registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_catalog(tmp_path: Path) -> Path:
    """The demo catalog (``include/catalog``) cut down to its three resolvers and the two targets they
    ask, each entry as the demo declares it (the CRM's URL from ``ERASURE_PARTNER_CRM_URL``)."""
    demo = yaml.safe_load((ROOT / "include/catalog/demo.yaml").read_text())
    targets = yaml.safe_load((ROOT / "include/catalog/targets.yaml").read_text())["targets"]
    picked = [t for t in targets if t["name"] in DEMO_TARGETS]
    owners = {t["owner"] for t in picked} | {demo["pipeline_owner"]}
    data = {
        "version": 1,
        "pipeline_owner": demo["pipeline_owner"],
        "subject_types": demo["subject_types"],
        "identifier_types": demo["identifier_types"],
        "resolvers": [r for r in demo["resolvers"] if r["name"] in DEMO_RESOLVERS],
        "teams": [{"name": t["name"], "channel": "log:"} for t in demo["teams"] if t["name"] in owners],
        "targets": picked,
    }
    assert [r["name"] for r in data["resolvers"]] == list(DEMO_RESOLVERS) and len(picked) == 2
    path = tmp_path / "demo-catalog" / "catalog.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _demo_people(i: int) -> tuple[str, str, str, list[str]]:
    """Person ``i`` of the demo configuration: e-mail, customer id, phone, device ids."""
    return (
        f"pd{i}@example.org",
        f"cus_bd{i:08d}",
        f"+4931{i:08d}",
        [f"dev_bd{i:08d}a", f"dev_bd{i:08d}b"],
    )


def _seed_demo(store_path: Path, hr_dsn: str, n: int) -> None:
    people = [_demo_people(i) for i in range(1, 2 * n + 1)]
    store = PartnerStore(store_path)
    try:
        store.put_many(
            [
                (cus, {"name": "Bench Person", "email": email, "phone": phone})
                for email, cus, phone, _ in people
            ]
        )
    finally:
        store.close()
    ensure_tables(hr_dsn)
    conn = psycopg2.connect(hr_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM identity.devices WHERE device_id LIKE 'dev\\_bd%%'")
        cur.execute(
            """INSERT INTO identity.devices (device_id, customer_id, model)
               SELECT d, c, 'bench' FROM unnest(%s::text[], %s::text[]) AS u(d, c)""",
            ([d for *_, ds in people for d in ds], [cus for _, cus, _, ds in people for _ in ds]),
        )
        cur.execute("ANALYZE identity.devices")
    conn.close()


def _unseed_demo(hr_dsn: str) -> None:
    conn = psycopg2.connect(hr_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM identity.devices WHERE device_id LIKE 'dev\\_bd%%'")
    conn.close()


def _start_simulator(catalog_path: Path, data_dir: Path, log_path: Path, crm_url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "erasure_demo.partners.run", "--catalog", str(catalog_path),
           "--data-dir", str(data_dir), "--index-port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log_path.open("a"), stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"partner simulator exited early: {log_path.read_text()[-2000:]}"
        try:
            if httpx.get(f"{crm_url}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"partner simulator not up at {crm_url}")


# -- the measurement --------------------------------------------------------------------------------


def _baseline(catalog: Any, emails: list[str], first: str, then: tuple[str, ...]) -> float:
    """The lookups called directly through the adapters, nothing stored: ``first`` over the e-mails,
    then each of ``then`` over the customer ids it found."""
    ctx = Context(settings=get_settings())
    t0 = time.perf_counter()
    r1 = catalog.resolver(first)
    t1 = catalog.target(r1.target)
    found = adapter_for(t1).resolve(ctx, t1, r1, emails)
    customers = sorted({c for v in found.values() for c in v.get("customer_id", [])})
    assert len(customers) == len(emails)
    for name in then:
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


def _before() -> Callable[..., Any] | None:
    """``resolve_pending`` of the commit ``BENCH_RESOLUTION_BEFORE`` names (the stage before a change),
    measured in the same rounds when set."""
    rev = os.environ.get("BENCH_RESOLUTION_BEFORE")
    if not rev:
        return None
    src = subprocess.run(
        ["git", "show", f"{rev}:include/erasure/resolution.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mod = types.ModuleType("erasure._resolution_before")
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"resolution.py@{rev}", "exec"), mod.__dict__)  # noqa: S102 - the project's own code
    return mod.resolve_pending


def _truncate(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SET LOCAL erasure.audit_maintenance = 'truncate'")
        cur.execute(
            "TRUNCATE erasure.identity, erasure.resolution, erasure.task, erasure.event_log,"
            " erasure.request RESTART IDENTITY CASCADE"
        )
    conn.close()


def _register(dsn: str, catalog: Any, codec: IdentityCodec, emails: list[str]) -> None:
    for i in range(0, len(emails), 1000):
        batch = [
            {"subject_type": "customer", "requested_by": "bench", "identifiers": {"email": e}}
            for e in emails[i : i + 1000]
        ]
        res = register_requests(dsn, catalog, batch, "api", codec=codec)
        assert res.registered == len(batch)


def _measure(
    dsn: str,
    catalog: Any,
    codec: IdentityCodec,
    emails: list[str],
    baseline: Callable[[], float],
    expect_found: dict[str, int],
) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    before = _before()
    for r in range(ROUNDS):
        _truncate(dsn)
        _register(dsn, catalog, codec, emails)
        order = ["baseline", "pipeline"] if r % 2 == 0 else ["pipeline", "baseline"]
        got: dict[str, Any] = {"load_avg_1m_before": round(os.getloadavg()[0], 2)}
        for what in order:
            if what == "baseline":
                got["baseline_s"] = baseline()
            else:
                t0 = time.perf_counter()
                res = resolve_pending(dsn, catalog, get_settings(), codec)
                got["pipeline_s"] = time.perf_counter() - t0
                assert res.released == len(emails) and res.still_resolving == 0, res.as_dict()
                assert res.found == expect_found, res.as_dict()
                got["pipeline_phases_s"] = {k: round(v, 3) for k, v in res.seconds.items()}
                got["store_floor_s"] = _floor(dsn)
                chain = verify_chain(dsn)  # the audit chain holds after bulk appends
                assert chain.ok, chain.summary()
        if before is not None:
            _truncate(dsn)
            _register(dsn, catalog, codec, emails)
            t0 = time.perf_counter()
            old = before(dsn, catalog, get_settings(), codec)
            got["before_s"] = time.perf_counter() - t0
            assert old.released == len(emails)
        got["load_avg_1m"] = round(os.getloadavg()[0], 2)
        rounds.append(got)
        print(f"round {r + 1}: {got}")
    pipeline = statistics.median(x["pipeline_s"] for x in rounds)
    base = statistics.median(x["baseline_s"] for x in rounds)
    floor = statistics.median(x["store_floor_s"] for x in rounds)
    ratio = base / pipeline
    out: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": len(emails),
        "rounds": rounds,
        "median": {
            "pipeline_s": round(pipeline, 3),
            "baseline_s": round(base, 3),
            "pipeline_requests_per_s": round(len(emails) / pipeline, 1),
            "baseline_requests_per_s": round(len(emails) / base, 1),
            "ratio": round(ratio, 3),
            "store_floor_s": round(floor, 3),
            "ratio_bound_by_store_floor": round(base / (base + floor), 3),
            "pipeline_phases_s": {
                k: round(statistics.median(x["pipeline_phases_s"].get(k, 0.0) for x in rounds), 3)
                for k in rounds[0]["pipeline_phases_s"]
            },
        },
        "goal_met": ratio >= GOAL,
    }
    if before is not None:
        b = statistics.median(x["before_s"] for x in rounds)
        out["before"] = {
            "commit": os.environ["BENCH_RESOLUTION_BEFORE"],
            "pipeline_s": round(b, 3),
            "ratio": round(base / b, 3),
        }
    return out


def _report(name: str, entry: dict[str, Any]) -> None:
    """Write ``entry`` as configuration ``name`` of resolution.json (the other configuration kept)."""
    path = Path(os.environ.get("ERASURE_LOCAL") or ROOT / ".local") / "bench" / "resolution.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        out = {}
    if "configurations" not in out:
        out = {"configurations": {}}
    out.update(
        {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "resolvers": 3,
            "goal": f"pipeline >= {GOAL}x baseline (requests per second), per configuration",
        }
    )
    out["configurations"][name] = entry
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(name, json.dumps(entry["median"], indent=2), "goal met:", entry["goal_met"])


def test_resolution_throughput_postgres_tables(tracking_db, tmp_path):
    schema = f"bench_res_{uuid.uuid4().hex[:6]}"
    _world(schema, N)
    catalog = _catalog(tmp_path, schema)
    codec = IdentityCodec.from_settings(get_settings())
    emails = [f"p{i}@example.org" for i in range(1, N + 1)]
    try:
        entry = _measure(
            tracking_db,
            catalog,
            codec,
            emails,
            lambda: _baseline(catalog, emails, "by_email", ("devices", "phones")),
            {"by_email": N, "devices": 2 * N, "phones": N},
        )
    finally:
        conn = psycopg2.connect(os.environ["ERASURE_HR_DSN"])
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
    entry["resolvers"] = "by_email, devices, phones: postgres_table, indexed, batch_size 1000"
    _report("postgres_tables", entry)


def test_resolution_throughput_demo_resolvers(tracking_db, tmp_path, monkeypatch):
    crm_url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("ERASURE_PARTNER_CRM_URL", crm_url)
    catalog_path = _demo_catalog(tmp_path)
    catalog = load_catalog(catalog_path)
    assert catalog.target("crm_contacts").spec_as(SyncApiSpec).base_url == crm_url
    hr_dsn = os.environ["ERASURE_HR_DSN"]
    data_dir = tmp_path / "partners"
    _seed_demo(data_dir / "crm_contacts.db", hr_dsn, N)
    codec = IdentityCodec.from_settings(get_settings())
    emails = [_demo_people(i)[0] for i in range(1, N + 1)]
    proc = _start_simulator(catalog_path, data_dir, tmp_path / "partners.log", crm_url)
    try:
        entry = _measure(
            tracking_db,
            catalog,
            codec,
            emails,
            lambda: _baseline(catalog, emails, "crm_by_email", ("crm_by_customer", "devices_by_customer")),
            # e-mail -> customer id and phone; customer id -> device ids (and back to the e-mail and
            # phone: a cycle, nothing new)
            {"crm_by_email": 2 * N, "devices_by_customer": 2 * N},
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        _unseed_demo(hr_dsn)
    entry["resolvers"] = (
        "crm_by_email, crm_by_customer: sync_api POST /identities/lookup of the partner simulator process "
        "(SQLite store, 2N people); devices_by_customer: postgres_table identity.devices (2 devices each); "
        "batch_size 500 (the demo's default)"
    )
    _report("demo_resolvers", entry)
