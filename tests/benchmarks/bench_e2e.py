"""Benchmark (issue 20): the whole pipeline end to end through the real Airflow scheduler, at N requests.

Run (``make bench-e2e``: the stack up, then this; N=1,000 by default, ~15-25 min on the 2-core machine)::

    .local/venv/bin/python -m pytest -m benchmark tests/benchmarks/bench_e2e.py -p no:cacheprovider -s

Both sizes of the issue (the 10k/1k wall-time ratio is computed when both are measured in one run)::

    BENCH_E2E_N=1000,10000 make bench-e2e

Knobs: ``BENCH_E2E_N`` (comma-separated sizes, ascending; default ``1000``), ``BENCH_E2E_ROUNDS``
(pipeline rounds per size, default 1: one round at N=1,000 is ~10 minutes of the shared machine),
``BENCH_E2E_BARE_ROUNDS`` (rounds of the baseline per size, default 3), ``BENCH_E2E_BACKGROUND``
(background people in every partner store and fact rows per warehouse table, default 20,000),
``BENCH_E2E_TIMEOUT_MIN`` (per round, default 90), ``BENCH_E2E_API_RETRY_S`` (how long one REST API call
is retried after a transport error, HTTP 404, 429 or 5xx, with back-off 1 s doubling to 30 s; default
300: a DAG the dag-processor marked stale answers 404 until its next good parse), ``BENCH_E2E_MERGE=1`` (keep the other sizes already in
the JSON file, measured by an earlier run; the file names them under ``merged_from_earlier_run``).

Needs the running stack of ``scripts/stack.sh up`` (Postgres, Kafka, Airflow with the LocalExecutor,
the demo partners) with the demo catalog; it works in the stack's own tracking database (the
scheduler's environment is fixed), with people of its own (``cus_e<tag>00000000`` ...).

One round at size N:

1. **seed** (not timed as the pipeline): every partner store (sync APIs and the Kafka partners' stores)
   gets ``BACKGROUND`` people ``cus_00000000`` ... once and the N people of the round; the device
   registry one device per person (``dev_e<tag>...``); every warehouse table is regenerated with
   ``BACKGROUND`` rows plus rows of the N people (3 orders, 5 page views, a customer row; the device
   click-stream keyed by their devices). The newsletter list (keyed by e-mail) has none of them: its
   tasks end ``not_found`` after identity resolution, as for a person the list never knew.
2. **submit**: N rows inserted into ``erasure.intake`` (the integration contract, docs/intake.md).
3. **drive**: the DAGs are unpaused (their own schedules run too) and triggered in rounds through the
   REST API until every request of the round is finished: ``erasure_intake_scheduled`` until no row
   is pending, then ``erasure_dispatch`` (it resolves identities first, then dispatches), then
   ``erasure_warehouse`` and ``erasure_acks`` at once (the warehouse works on requests whose identity
   is resolved), then ``erasure_reconcile`` (it completes requests).
4. **measure**: from the tracking store, each stage's window (intake: inserted -> last row processed;
   per target kind: first ``task_dispatched`` -> last ``completed_at``; completion: last request
   ``completed_at``); from the Airflow metadata database, the DAG runs and task instances (and tries)
   of every ``erasure_*`` run that started in the round; ``pg_database_size`` of the tracking and
   metadata databases before and after.
5. **baseline** (the same run, right after): the bare asyncio script of ``bench_sync_dispatch``
   (``_bare(verify=True)``: DELETE then the verifying GET, per target ``16 x 2`` in flight, no
   bookkeeping) against the same partner servers for N fresh people x the customer sync targets,
   ``BARE_ROUNDS`` rounds, median.

Figures to ``.local/bench/e2e.json`` (written after every size, so a timeout keeps what was measured):
wall time per stage, requests completed per hour, Airflow task instances per 1,000 requests, Postgres
bytes per request, the sync stage's throughput vs the baseline. Goals of the issue (reported, not
asserted): 10,000 requests complete; 10k/1k wall-time ratio <= 10; sync through Airflow >= 0.5x the
bare script. Asserted: every request of a round completes, none is left open, the audit chain holds.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import secrets
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from erasure.catalog import Catalog, load_catalog
from erasure.settings import get_settings
from erasure.targets.warehouse_delta import WarehouseDeltaSpec

pytestmark = [pytest.mark.benchmark, pytest.mark.integration, pytest.mark.timeout(4 * 3600)]
ROOT = Path(__file__).resolve().parents[2]

SIZES = [int(x) for x in os.environ.get("BENCH_E2E_N", "1000").replace("_", "").split(",") if x.strip()]
ROUNDS = int(os.environ.get("BENCH_E2E_ROUNDS", "1"))
BARE_ROUNDS = int(os.environ.get("BENCH_E2E_BARE_ROUNDS", "3"))
BACKGROUND = int(os.environ.get("BENCH_E2E_BACKGROUND", "20000"))
TIMEOUT_MIN = float(os.environ.get("BENCH_E2E_TIMEOUT_MIN", "90"))
API_RETRY_S = float(os.environ.get("BENCH_E2E_API_RETRY_S", "300"))
OUT = ROOT / ".local" / "bench" / "e2e.json"

INTAKE_DAG = "erasure_intake_scheduled"
DISPATCH_DAGS = ("erasure_dispatch",)
AFTER_DISPATCH_DAGS = ("erasure_warehouse", "erasure_acks")
SETTLE_DAGS = ("erasure_reconcile",)
OPEN = ("received", "resolving", "in_progress")


# ------------------------------------------------------------------------------------------- helpers
def _q(dsn: str, sql: str, args: tuple | list | None = None) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _airflow_dsn() -> str:
    """The stack's Airflow metadata database (tests/conftest.py points this session's Airflow settings
    at a private copy; the running scheduler keeps the stack's ``airflow`` database)."""
    base = os.environ["ERASURE_TRACKING_DSN"].rpartition("/")[0]
    return f"{base}/airflow"


def _db_sizes(dsn: str) -> dict[str, int]:
    rows = _q(
        dsn,
        "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname IN ('erasure_tracking', 'airflow')",
    )
    return {name: int(size) for name, size in rows}


def _secs(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else round((b - a).total_seconds(), 1)


def _http_targets(catalog: Catalog) -> list[tuple[Any, str]]:
    from erasure_demo.partners import partner_url

    return [(t, url) for t in catalog.targets if t.enabled and (url := partner_url(t))]


# --------------------------------------------------------------------------------------------- seed
def _seed(catalog: Catalog, tag: str, n: int, hr_dsn: str) -> dict[str, float]:
    """Partners, device registry, warehouse tables: background + the round's N people."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with httpx.Client(timeout=600) as http:
        for t, base in _http_targets(catalog):
            if "customer" not in t.subject_types:
                continue
            stats = http.get(base + "/admin/stats")
            if stats.status_code == 200 and stats.json().get("subjects", 0) < BACKGROUND:
                body = {
                    "prefix": "cus_",
                    "count": BACKGROUND,
                    "start": 0,
                    "data": {"source": "bench background"},
                }
                http.post(base + "/admin/seed", json=body).raise_for_status()
            body = {"prefix": f"cus_e{tag}", "count": n, "start": 0, "data": {"source": "bench e2e"}}
            http.post(base + "/admin/seed", json=body).raise_for_status()
            http.delete(base + "/admin/faults")  # an interrupted earlier run may have left one on
    times["partners_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    from erasure.targets.postgres_table import PostgresTableSpec

    for t in catalog.of_kind("postgres_table"):
        if t.spec_as(PostgresTableSpec).table == "identity.devices":
            _q(
                hr_dsn,
                "INSERT INTO identity.devices (device_id, customer_id, model) "
                "SELECT 'dev_e' || %s || lpad(i::text, 8, '0'), 'cus_e' || %s || lpad(i::text, 8, '0'), 'phone' "
                "FROM generate_series(0, %s - 1) i ON CONFLICT DO NOTHING",
                (tag, tag, n),
            )
    times["postgres_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    wh = catalog.of_kind("warehouse_delta")
    if wh:
        from erasure.spark import get_spark
        from erasure_demo import warehouse_gen

        settings = get_settings()
        spark = get_spark("bench-e2e-seed", settings=settings)
        spark.sparkContext.setLogLevel("ERROR")
        try:
            people = [f"cus_e{tag}{i:08d}" for i in range(n)]
            devices = [f"dev_e{tag}{i:08d}" for i in range(n)]
            for t in wh:
                spec = t.spec_as(WarehouseDeltaSpec)
                subjects = devices if spec.key_column == "device_id" else people
                warehouse_gen.generate_table(spark, t, BACKGROUND, subjects)
        finally:
            spark.stop()
    times["warehouse_s"] = round(time.perf_counter() - t0, 1)
    return times


def _submit(dsn: str, tag: str, n: int) -> None:
    """N rows into the intake table with one COPY (what an upstream system's bulk insert does)."""
    buf = io.StringIO()
    for i in range(n):
        buf.write(f"e2e-{tag}-{i:08d}\tcustomer\tcus_e{tag}{i:08d}\tbench-e2e\taccount closed\tGDPR\n")
    buf.seek(0)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.copy_expert(
                "COPY erasure.intake (external_id, subject_type, subject_id, requested_by, reason, jurisdiction) "
                "FROM STDIN",
                buf,
            )
    finally:
        conn.close()


# -------------------------------------------------------------------------------------------- drive
RETRY_STATUS = frozenset({404, 429, 500, 502, 503, 504})


def patient_api(retry_s: float = API_RETRY_S) -> Any:
    """The demo's REST client, retrying a call that failed transiently (see :class:`_PatientApi`)."""
    from erasure_demo.airflow_client import AirflowApi

    class _PatientApi(AirflowApi):
        """Retries a call after a transport error or HTTP 404/429/5xx, back-off 1 s doubling to 30 s, for
        at most ``retry_s`` seconds; then the last answer is returned (or the error raised) as before.
        A 404 is retried because a DAG the dag-processor marked stale (one slow parse under load) answers
        "Dag ... not found" until its next good parse. ``retries`` counts them per ``METHOD status``."""

        retry_s: float = 300.0
        retries: dict[str, int]

        def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
            deadline = time.monotonic() + self.retry_s
            delay = 1.0
            while True:
                try:
                    r = super().request(method, path, **kw)
                    if r.status_code not in RETRY_STATUS:
                        return r
                    why = f"HTTP {r.status_code}"
                except httpx.TransportError as exc:
                    if time.monotonic() + delay > deadline:
                        raise
                    why = type(exc).__name__
                else:
                    if time.monotonic() + delay > deadline:
                        return r
                key = f"{method} {why}"
                self.retries[key] = self.retries.get(key, 0) + 1
                print(
                    f"  [{datetime.now(UTC):%H:%M:%S}] REST API {method} {path}: {why}; again in {delay:.0f}s",
                    flush=True,
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    base = AirflowApi.from_env()
    api = _PatientApi(base.base_url, base.username, base.password)
    api.retry_s = retry_s
    api.retries = {}
    return api


class Driver:
    def __init__(self, api: Any, dsn: str, tag: str) -> None:
        self.api = api
        self.dsn = dsn
        self.tag = tag
        self.runs: list[dict[str, Any]] = []

    def trigger_and_wait(self, dag_ids: tuple[str, ...] | list[str], timeout: float) -> None:
        started = {}
        for d in dag_ids:
            run_id = f"bench_e2e_{self.tag}_{d}_{secrets.token_hex(3)}"
            r = self.api.trigger(d, run_id=run_id)
            if r.status_code == 409:  # a retried POST whose first attempt created the run
                self.api.get_run(d, run_id)
            elif r.status_code >= 300:
                raise RuntimeError(f"triggering {d} failed: HTTP {r.status_code} {r.text[:300]}")
            started[d] = run_id
        for d, run_id in started.items():
            t0 = time.monotonic()
            run = self.api.wait_for_run(d, run_id, timeout=timeout, poll=3)
            self.runs.append(
                {
                    "dag": d,
                    "run_id": run_id,
                    "state": run["state"],
                    "seconds": round(time.monotonic() - t0, 1),
                }
            )
            if run["state"] != "success":
                failed = [
                    ti["task_id"] for ti in self.api.task_instances(d, run_id) if ti["state"] == "failed"
                ]
                print(
                    f"  {d} {run_id}: {run['state']} (failed tasks: {', '.join(failed) or '-'})", flush=True
                )

    def pending_intake(self) -> int:
        return _q(
            self.dsn,
            "SELECT count(*) FROM erasure.intake WHERE status = 'pending' AND external_id LIKE %s",
            (f"e2e-{self.tag}-%",),
        )[0][0]

    def open_requests(self) -> dict[str, int]:
        rows = _q(
            self.dsn,
            "SELECT status, count(*) FROM erasure.request WHERE external_id LIKE %s GROUP BY 1",
            (f"e2e-{self.tag}-%",),
        )
        return dict(rows)

    def open_tasks(self) -> dict[str, int]:
        rows = _q(
            self.dsn,
            "SELECT t.target || ' ' || t.status, count(*) FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id "
            "WHERE r.external_id LIKE %s AND t.status <> 'succeeded' GROUP BY 1 ORDER BY 1",
            (f"e2e-{self.tag}-%",),
        )
        return dict(rows)

    def next_retry_in(self) -> float | None:
        rows = _q(
            self.dsn,
            "SELECT min(t.next_attempt_at) - now() FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id "
            "WHERE r.external_id LIKE %s AND t.status IN ('failed', 'pending') AND t.next_attempt_at > now()",
            (f"e2e-{self.tag}-%",),
        )
        return rows[0][0].total_seconds() if rows and rows[0][0] is not None else None

    def drive(self, n: int, timeout_min: float) -> int:
        deadline = time.monotonic() + timeout_min * 60
        per_run = max(900.0, timeout_min * 60 / 3)
        rnd = 0
        while True:
            rnd += 1
            failures = 0
            while pending := self.pending_intake():
                self.trigger_and_wait((INTAKE_DAG,), per_run)
                if self.runs[-1]["state"] != "success" and self.pending_intake() == pending:
                    failures += 1
                    if failures >= 3:
                        raise RuntimeError(f"{INTAKE_DAG} failed 3 times without progress; see its task logs")
            self.trigger_and_wait(DISPATCH_DAGS, per_run)
            self.trigger_and_wait(AFTER_DISPATCH_DAGS, per_run)
            self.trigger_and_wait(SETTLE_DAGS, per_run)
            status = self.open_requests()
            open_n = sum(v for k, v in status.items() if k in OPEN)
            print(
                f"  [{datetime.now(UTC):%H:%M:%S}] round {rnd}: requests {status}; "
                f"open tasks {self.open_tasks() or 'none'}",
                flush=True,
            )
            if open_n == 0 and sum(status.values()) >= n:
                return rnd
            if time.monotonic() > deadline:
                return rnd
            wait = self.next_retry_in()
            if wait and wait > 0:
                time.sleep(min(wait + 2, 60))


# ------------------------------------------------------------------------------------------ measure
def _stages(dsn: str, tag: str, t_submit: datetime) -> dict[str, Any]:
    like = f"e2e-{tag}-%"
    (last_intake,) = _q(
        dsn, "SELECT max(processed_at) FROM erasure.intake WHERE external_id LIKE %s", (like,)
    )[0]
    stages: dict[str, Any] = {
        "intake": {"rows": None, "from_submit_s": _secs(t_submit, last_intake)},
    }
    stages["intake"]["rows"] = dict(
        _q(dsn, "SELECT status, count(*) FROM erasure.intake WHERE external_id LIKE %s GROUP BY 1", (like,))
    )
    resolved = _q(
        dsn,
        "SELECT min(e.occurred_at), max(e.occurred_at), count(*) FROM erasure.event_log e "
        "JOIN erasure.request r ON r.id = e.request_id WHERE r.external_id LIKE %s AND e.event_type = 'identity_resolved'",
        (like,),
    )[0]
    stages["identity_resolution"] = {
        "events": resolved[2],
        "first_from_submit_s": _secs(t_submit, resolved[0]),
        "last_from_submit_s": _secs(t_submit, resolved[1]),
        "window_s": _secs(resolved[0], resolved[1]),
    }
    rows = _q(
        dsn,
        """SELECT t.kind, count(*), count(*) FILTER (WHERE t.status = 'succeeded'),
                  min(d.first), max(t.completed_at),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t.completed_at - r.received_at))
             FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
             LEFT JOIN (SELECT e.task_id, min(e.occurred_at) AS first FROM erasure.event_log e
                          WHERE e.event_type = 'task_dispatched' AND e.request_id IN
                                (SELECT id FROM erasure.request WHERE external_id LIKE %s)
                          GROUP BY e.task_id) d ON d.task_id = t.id
            WHERE r.external_id LIKE %s GROUP BY t.kind ORDER BY t.kind""",
        (like, like),
    )
    for kind, total, ok, first, last, p50 in rows:
        window = _secs(first, last)
        stages[kind] = {
            "tasks": total,
            "succeeded": ok,
            "first_dispatch_from_submit_s": _secs(t_submit, first),
            "last_completed_from_submit_s": _secs(t_submit, last),
            "window_s": window,
            "tasks_per_s_in_window": round(total / window, 1) if window else None,
            "median_task_latency_from_registration_s": round(float(p50), 1) if p50 is not None else None,
        }
    req = _q(
        dsn,
        """SELECT count(*) FILTER (WHERE status = 'completed'), max(completed_at), min(received_at),
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - received_at)),
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - received_at))
             FROM erasure.request WHERE external_id LIKE %s""",
        (like,),
    )[0]
    stages["completion"] = {
        "completed": req[0],
        "last_completed_from_submit_s": _secs(t_submit, req[1]),
        "first_registered_from_submit_s": _secs(t_submit, req[2]),
        "median_request_latency_s": round(float(req[3]), 1) if req[3] is not None else None,
        "p95_request_latency_s": round(float(req[4]), 1) if req[4] is not None else None,
    }
    return stages


def _airflow_cost(adsn: str, since: datetime, sync_targets: list[str]) -> dict[str, Any]:
    runs = _q(
        adsn,
        "SELECT dag_id, count(*), count(*) FILTER (WHERE state = 'success'), "
        "sum(extract(epoch FROM end_date - start_date)) FROM dag_run "
        "WHERE dag_id LIKE 'erasure%%' AND start_date >= %s GROUP BY 1 ORDER BY 1",
        (since,),
    )
    tis = _q(
        adsn,
        "SELECT ti.dag_id, count(*), coalesce(sum(ti.try_number), 0), "
        "sum(extract(epoch FROM ti.end_date - ti.start_date)) FROM task_instance ti "
        "JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
        "WHERE ti.dag_id LIKE 'erasure%%' AND r.start_date >= %s GROUP BY 1 ORDER BY 1",
        (since,),
    )
    sync_start = _q(
        adsn,
        "SELECT min(ti.start_date) FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id "
        "AND r.run_id = ti.run_id WHERE ti.dag_id = 'erasure_dispatch' AND r.start_date >= %s "
        "AND ti.task_id = ANY(%s) AND ti.map_index >= 0",
        (since, [f"delete_{t}" for t in sync_targets]),
    )[0][0]
    return {
        "dag_runs": {
            d: {"runs": n, "success": ok, "seconds": round(float(s or 0), 1)} for d, n, ok, s in runs
        },
        "task_instances": {
            d: {"instances": n, "tries": int(tr), "seconds": round(float(s or 0), 1)} for d, n, tr, s in tis
        },
        "task_instances_total": sum(n for _, n, _, _ in tis),
        "tries_total": int(sum(tr for _, _, tr, _ in tis)),
        "first_sync_delete_ti_start": sync_start,
    }


def _bare_baseline(catalog: Catalog, n: int, rounds: int) -> dict[str, Any]:
    """``bench_sync_dispatch._bare(verify=True)`` against the stack's sync partners, N fresh people."""
    from tests.benchmarks.bench_sync_dispatch import CONCURRENCY, POOL_SLOTS, _bare

    urls = {
        t.name: url
        for t, url in _http_targets(catalog)
        if t.kind == "sync_api" and "customer" in t.subject_types
    }
    secs: list[float] = []
    with httpx.Client(timeout=600) as http:
        for rnd in range(rounds):
            tag = secrets.token_hex(2)
            for url in urls.values():
                body = {"prefix": f"cus_b{tag}", "count": n, "start": 0, "data": {"source": "bench bare"}}
                http.post(url + "/admin/seed", json=body).raise_for_status()
            subjects = [f"cus_b{tag}{i:08d}" for i in range(n)]
            t0 = time.perf_counter()
            status = asyncio.run(_bare(urls, subjects, True, f"e2e{tag}{rnd}"))
            secs.append(time.perf_counter() - t0)
            calls = n * len(urls)
            assert status.get(200) == calls and status.get(404, 0) == calls, status
    med = statistics.median(secs)
    return {
        "script": "tests/benchmarks/bench_sync_dispatch.py::_bare (verify=True: DELETE + verifying GET)",
        "targets": sorted(urls),
        "in_flight_per_target": CONCURRENCY * POOL_SLOTS,
        "rounds": rounds,
        "seconds": [round(s, 2) for s in secs],
        "median_s": round(med, 2),
        "median_subject_targets_per_s": round(n * len(urls) / med, 1),
    }


# --------------------------------------------------------------------------------------------- test
def test_bench_e2e() -> None:
    from erasure.evidence.audit import verify_chain

    settings = get_settings()
    dsn = settings.require_tracking_dsn()
    adsn = _airflow_dsn()
    hr_dsn = os.environ["ERASURE_HR_DSN"]
    catalog = load_catalog(settings.catalog_path)
    api = patient_api()
    if not api.healthy():
        pytest.fail(
            f"Airflow at {api.base_url} is not healthy: run scripts/stack.sh up (make bench-e2e does)"
        )
    dags = [INTAKE_DAG, *DISPATCH_DAGS, *AFTER_DISPATCH_DAGS, *SETTLE_DAGS]
    for d in dags:
        api.wait_for_dag(d, timeout=300)
        api.unpause(d)
    sync_targets = [t.name for t in catalog.of_kind("sync_api") if "customer" in t.subject_types]
    targets_per_customer = [t.name for t in catalog.targets if t.enabled and "customer" in t.subject_types]

    result: dict[str, Any] = {
        "benchmark": "e2e",
        "command": "make bench-e2e (BENCH_E2E_N=" + ",".join(map(str, SIZES)) + ")",
        "topology": "local: LocalExecutor (parallelism "
        + os.environ.get("AIRFLOW__CORE__PARALLELISM", "?")
        + "), Spark "
        + settings.spark_master
        + ", one Kafka broker",
        "catalog_targets_per_customer": targets_per_customer,
        "background": BACKGROUND,
        "rounds_per_size": ROUNDS,
        "sizes": {},
        "goals": {
            "complete_10000": "10,000 requests complete",
            "wall_ratio_10k_1k_max": 10,
            "sync_vs_bare_min": 0.5,
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    if os.environ.get("BENCH_E2E_MERGE") == "1" and OUT.exists():
        # keep the sizes an earlier run measured (each round says when: measured_at)
        earlier = json.loads(OUT.read_text()).get("sizes", {})
        result["sizes"] = {k: v for k, v in earlier.items() if int(k) not in SIZES}
        result["merged_from_earlier_run"] = sorted(result["sizes"], key=int)
    for n in SIZES:
        per_round: list[dict[str, Any]] = []
        for rnd in range(ROUNDS):
            tag = secrets.token_hex(2)
            print(f"\n=== N={n:,} round {rnd + 1}/{ROUNDS} (tag {tag}) ===", flush=True)
            seed = _seed(catalog, tag, n, hr_dsn)
            print(f"  seeded: {seed}", flush=True)
            others = _q(
                dsn,
                "SELECT (SELECT count(*) FROM erasure.request WHERE status IN ('received', 'resolving', "
                "'in_progress')), (SELECT count(*) FROM erasure.intake WHERE status = 'pending')",
            )[0]
            size0 = _db_sizes(dsn)
            load0 = os.getloadavg()[0]
            api.retries.clear()
            t_submit = _q(dsn, "SELECT now()")[0][0]
            t0 = time.perf_counter()
            _submit(dsn, tag, n)
            driver = Driver(api, dsn, tag)
            rounds = driver.drive(n, TIMEOUT_MIN)
            wall = time.perf_counter() - t0
            size1 = _db_sizes(dsn)
            stages = _stages(dsn, tag, t_submit)
            cost = _airflow_cost(adsn, t_submit, sync_targets)
            status = driver.open_requests()
            completed = status.get("completed", 0)
            sync = stages.get("sync_api", {})
            sync_start = cost.pop("first_sync_delete_ti_start")
            last_sync = _q(
                dsn,
                "SELECT max(t.completed_at) FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id "
                "WHERE r.external_id LIKE %s AND t.kind = 'sync_api'",
                (f"e2e-{tag}-%",),
            )[0][0]
            sync_window = _secs(sync_start, last_sync)
            bare = _bare_baseline(catalog, n, BARE_ROUNDS)
            sync_tasks = sync.get("tasks") or 0
            sync_rate = round(sync_tasks / sync_window, 1) if sync_window else None
            r: dict[str, Any] = {
                "tag": tag,
                "requests": n,
                "completed": completed,
                "request_status": status,
                "driver_rounds": rounds,
                "other_work_at_start": {"open_requests": others[0], "pending_intake_rows": others[1]},
                "wall_s": round(wall, 1),
                "requests_completed_per_hour": round(completed / wall * 3600, 0),
                "seed_s": seed,
                "stages": stages,
                "airflow": cost,
                "task_instances_per_1000_requests": round(cost["task_instances_total"] / n * 1000, 1),
                "tries_per_1000_requests": round(cost["tries_total"] / n * 1000, 1),
                "db_bytes": {"before": size0, "after": size1},
                "tracking_bytes_per_request": round(
                    (size1["erasure_tracking"] - size0["erasure_tracking"]) / n
                ),
                "airflow_bytes_per_request": round((size1["airflow"] - size0["airflow"]) / n),
                "sync_stage": {
                    "tasks": sync_tasks,
                    "window": "first delete_<sync target> task instance start -> last sync task completed_at",
                    "window_s": sync_window,
                    "tasks_per_s": sync_rate,
                    "bare_median_per_s": bare["median_subject_targets_per_s"],
                    "ratio_vs_bare": round(sync_rate / bare["median_subject_targets_per_s"], 3)
                    if sync_rate
                    else None,
                },
                "baseline": bare,
                "dag_runs_driven": driver.runs,
                "rest_api_retries": dict(api.retries),
                "load_average_1m": {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)},
                "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            per_round.append(r)
            print(
                f"  N={n:,}: {completed:,} completed in {wall:,.0f}s ({r['requests_completed_per_hour']:,.0f}/h), "
                f"{r['task_instances_per_1000_requests']} TIs per 1,000, {r['tracking_bytes_per_request']:,} B/request "
                f"tracking + {r['airflow_bytes_per_request']:,} B/request Airflow; sync {sync_rate}/s vs bare "
                f"{bare['median_subject_targets_per_s']}/s",
                flush=True,
            )
            result["sizes"][str(n)] = _summary(per_round)
            _write(result)
            assert completed == n, f"N={n}: {completed} of {n} requests completed; open: {status}"
    audit = verify_chain(dsn)
    result["audit_verify"] = audit.summary()
    walls = {int(k): v["median_wall_s"] for k, v in result["sizes"].items()}
    if 1000 in walls and 10000 in walls:
        result["wall_ratio_10k_1k"] = round(walls[10000] / walls[1000], 2)
    _write(result)
    assert audit.ok, audit.summary()


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 1)

    ratios = [
        r["sync_stage"]["ratio_vs_bare"] for r in rounds if r["sync_stage"]["ratio_vs_bare"] is not None
    ]
    return {
        "rounds": len(rounds),
        "median_wall_s": med("wall_s"),
        "median_requests_completed_per_hour": med("requests_completed_per_hour"),
        "median_task_instances_per_1000_requests": med("task_instances_per_1000_requests"),
        "median_tracking_bytes_per_request": med("tracking_bytes_per_request"),
        "median_airflow_bytes_per_request": med("airflow_bytes_per_request"),
        "median_sync_ratio_vs_bare": round(statistics.median(ratios), 3) if ratios else None,
        "per_round": rounds,
    }


def _write(result: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=str) + "\n")
