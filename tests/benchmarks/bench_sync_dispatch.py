"""Benchmark (issues 4 and 15): N subjects x T sync targets through the pipeline's dispatch path vs a
bare asyncio script making the same HTTP calls against the same partner servers, same concurrency.

Run (default N=2000, T=5, 3 rounds, ~3 min)::

    .local/venv/bin/python -m pytest tests/benchmarks/bench_sync_dispatch.py -q -s

Full size (the goal: pipeline >= 0.7x the bare script at N=10,000, T=5)::

    BENCH_SYNC_N=10000 .local/venv/bin/python -m pytest tests/benchmarks/bench_sync_dispatch.py -q -s

Knobs: ``BENCH_SYNC_N``, ``BENCH_SYNC_T``, ``BENCH_SYNC_CONCURRENCY`` (per batch, default 16),
``BENCH_SYNC_POOL_SLOTS`` (batches per target at once, default 2), ``BENCH_SYNC_BATCH`` (500),
``BENCH_SYNC_ROUNDS`` (3; rounds alternate which side goes first; the median of each side is the
figure, the best is kept too), ``BENCH_SYNC_PORT_BASE`` (28400: partners on 28400+i, index on +99).

Setup: the T partners run in ONE separate process (``python -m erasure_demo.partners.run``, as the stack
runs them), seeded with the N subjects before each side.

* **pipeline_processes** / **pipeline_threads**: for every target, ``plan_batches`` then ``run_batch``
  per batch — claim in Postgres, async deletes with the catalog's retry policy, a verifying lookup per
  subject, outcomes written to ``erasure.task`` in chunks (one guarded UPDATE per chunk, the hash-chained
  event log by the statement-level trigger) — with ``pool_slots`` lanes per target running its batches
  one after the other (what the Airflow pool allows), all targets at once. ``processes``: each lane a
  process of its own, as Airflow's LocalExecutor runs each mapped task instance (its start-up and
  scheduling cost not included); ``threads``: the lanes as threads of one process (one GIL: the
  conservative figure, the only one issue 15's first measurement had).
* **bare_verified** (the baseline of the goal): one asyncio loop, per target ``concurrency x
  pool_slots`` workers over one aiohttp session, each making the same calls as the pipeline —
  ``DELETE`` then the verifying ``GET`` — with no retries and no bookkeeping.
* **bare_delete** (for information; the baseline of issue 15's first measurement, before every delete
  was verified): the same loop with the ``DELETE`` only.

Throughputs (subjects x targets erased per second; the pipeline and bare_verified make 2 HTTP calls per
subject, bare_delete 1), their ratios, every round and the CPU seconds of each side (client and partner
processes: a figure that depends less on what else the machine runs) go to
``.local/bench/sync_dispatch.json``; no assertion on time (the figures depend on the machine).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import aiohttp
import httpx
import pytest
import yaml

from erasure.catalog import load_catalog
from erasure.dispatch import plan_batches, run_batch
from erasure.settings import get_settings
from tests.helpers.sync_fixtures import create_requests, query

pytestmark = [pytest.mark.benchmark, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

N = int(os.environ.get("BENCH_SYNC_N", "2000"))
T = int(os.environ.get("BENCH_SYNC_T", "5"))
CONCURRENCY = int(os.environ.get("BENCH_SYNC_CONCURRENCY", "16"))
POOL_SLOTS = int(os.environ.get("BENCH_SYNC_POOL_SLOTS", "2"))
BATCH = int(os.environ.get("BENCH_SYNC_BATCH", "500"))
ROUNDS = int(os.environ.get("BENCH_SYNC_ROUNDS", "3"))
PORT_BASE = int(os.environ.get("BENCH_SYNC_PORT_BASE", "28400"))


def _port(offset: int) -> int:
    """A fixed port below the ephemeral range (README: a port inside it can be taken by a client)."""
    port = PORT_BASE + offset
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.fail(f"port {port} is taken: set BENCH_SYNC_PORT_BASE to a free range")
    return port


def _write_catalog(path: Path, urls: dict[str, str]) -> None:
    targets = [
        {
            "name": name,
            "kind": "sync_api",
            "owner": "bench",
            "subject_types": ["customer"],
            "identity_key": "customer_id",
            "sync_api": {
                "base_url": url,
                "batch_size": BATCH,
                "concurrency": CONCURRENCY,
                "pool_slots": POOL_SLOTS,
                "timeout_s": 30,
            },
        }
        for name, url in urls.items()
    ]
    data = {
        "version": 1,
        "pipeline_owner": "bench",
        "subject_types": [{"name": "customer"}],
        "teams": [{"name": "bench"}],
        "targets": targets,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _seed(urls: dict[str, str], subjects: list[str]) -> None:
    for url in urls.values():
        httpx.post(f"{url}/admin/seed", json={"subject_ids": subjects}, timeout=120).raise_for_status()


async def _bare(urls: dict[str, str], subjects: list[str], verify: bool, tag: str) -> dict[int, int]:
    """The baseline: per target ``CONCURRENCY * POOL_SLOTS`` workers, each ``DELETE`` (then, with
    ``verify``, the ``GET`` that checks the subject is gone), nothing else. ``tag`` makes the
    idempotency keys new (a partner replays its first answer to a key it has seen, without deleting)."""
    statuses: dict[int, int] = {}
    per_target = CONCURRENCY * POOL_SLOTS

    async def target(url: str) -> None:
        conn = aiohttp.TCPConnector(limit=per_target, limit_per_host=per_target)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
            it = iter(subjects)

            async def worker() -> None:
                for sid in it:
                    async with s.delete(
                        f"{url}/subjects/{sid}", headers={"Idempotency-Key": f"bare-{tag}-{sid}"}
                    ) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                    if verify:
                        async with s.get(f"{url}/subjects/{sid}") as r:
                            await r.read()
                            statuses[r.status] = statuses.get(r.status, 0) + 1

            await asyncio.gather(*(worker() for _ in range(per_target)))

    await asyncio.gather(*(target(u) for u in urls.values()))
    return statuses


def _lane(dsn: str, catalog_path: str, name: str, batches: list[dict], run_id: str) -> dict[str, int]:
    """One pool slot of one target: its batches one after the other (what the Airflow pool allows)."""
    catalog = load_catalog(Path(catalog_path))
    totals = {"succeeded": 0, "failed": 0, "claimed": 0}
    for batch in batches:
        s = run_batch(
            dsn,
            catalog,
            name,
            batch["task_ids"],
            claim_key=f"{run_id}/{name}/{batch['batch']}",
            settings=get_settings(),
        )
        for k in totals:
            totals[k] += getattr(s, k)
    return totals


def _pipeline(dsn: str, catalog_path: Path, names: list[str], run_id: str, mode: str) -> dict[str, int]:
    """The dispatch path: plan, then per target ``pool_slots`` lanes running its batches (``run_batch``),
    every target at once; lanes are threads of this process, or processes (``mode="processes"``: as
    Airflow's LocalExecutor runs each mapped task instance, without its start-up cost)."""
    catalog = load_catalog(catalog_path)
    plans = {n: plan_batches(dsn, catalog, n) for n in names}
    lanes = [(n, plans[n][slot::POOL_SLOTS]) for n in names for slot in range(POOL_SLOTS)]
    pool: Executor
    if mode == "processes":
        pool = ProcessPoolExecutor(max_workers=len(lanes), mp_context=multiprocessing.get_context("fork"))
    else:
        pool = ThreadPoolExecutor(max_workers=len(lanes))
    totals: dict[str, int] = {"succeeded": 0, "failed": 0, "claimed": 0}
    with pool as ex:
        for f in [ex.submit(_lane, dsn, str(catalog_path), n, b, run_id) for n, b in lanes if b]:
            for k, v in f.result().items():
                totals[k] += v
    return totals


def _postgres_cpu() -> float:
    """CPU seconds of the stack's PostgreSQL backends that ended (the postmaster's reaped children: every
    database, so an upper bound of the benchmark's share; the pipeline's connections end with each step)."""
    pidfile = ROOT / ".local" / "pg" / "data" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process and its finished children, or of process ``pid``."""
    if pid is None:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_bench_sync_dispatch(pg_dsn, tmp_path):
    names = [f"bench_{i}" for i in range(T)]
    urls = {n: f"http://127.0.0.1:{_port(i)}" for i, n in enumerate(names)}
    cat_path = tmp_path / "catalog.yaml"
    _write_catalog(cat_path, urls)
    index = _port(99)
    log = (tmp_path / "partners.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "erasure_demo.partners.run", "--catalog", str(cat_path),
         "--data-dir", str(tmp_path / "partners"), "--index-port", str(index)],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )  # fmt: skip
    sides = ("bare_verified", "pipeline_processes", "pipeline_threads", "bare_delete")
    times: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    rounds: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{index}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "partners did not start"
            time.sleep(0.2)

        subjects = [f"cus_{i:08d}" for i in range(N)]
        calls = N * T
        pipe_totals: dict[str, int] = {}
        for rnd in range(ROUNDS):
            # alternate which side goes first, so neither always meets a fresher partner store
            order = sides if rnd % 2 == 0 else tuple(reversed(sides))
            for side in order:
                _seed(urls, subjects)
                if side.startswith("bare"):
                    verify = side == "bare_verified"
                    c0, p0, g0 = _cpu(), _cpu(proc.pid), _postgres_cpu()
                    t0 = time.perf_counter()
                    # fresh idempotency keys per side and round: a key seen before is answered from the
                    # partner's store without deleting anything
                    status = asyncio.run(_bare(urls, subjects, verify, f"{side}{rnd}"))
                    times[side].append(time.perf_counter() - t0)
                    cpu[side].append(
                        {
                            "client": _cpu() - c0,
                            "partners": _cpu(proc.pid) - p0,
                            "postgres": _postgres_cpu() - g0,
                        }
                    )
                    assert status.get(200) == calls, status
                    assert status.get(404, 0) == (calls if verify else 0), status
                    continue
                query(
                    pg_dsn,
                    "SET LOCAL erasure.audit_maintenance = 'truncate'; TRUNCATE erasure.request, erasure.task, erasure.event_log CASCADE",
                )
                create_requests(pg_dsn, subjects, [(n, "sync_api") for n in names])
                query(pg_dsn, "ANALYZE erasure.task")
                c0, p0, g0 = _cpu(), _cpu(proc.pid), _postgres_cpu()
                t0 = time.perf_counter()
                pipe_totals = _pipeline(pg_dsn, cat_path, names, f"bench{rnd}{side}", side.split("_")[1])
                times[side].append(time.perf_counter() - t0)
                cpu[side].append(
                    {"client": _cpu() - c0, "partners": _cpu(proc.pid) - p0, "postgres": _postgres_cpu() - g0}
                )
                assert pipe_totals["succeeded"] == calls, pipe_totals
                done = query(pg_dsn, "SELECT count(*) FROM erasure.task WHERE status = 'succeeded'")[0][0]
                assert done == calls
                # one event per transition: claimed (task_dispatched) and succeeded, per task
                events = dict(
                    query(
                        pg_dsn,
                        "SELECT event_type, count(*) FROM erasure.event_log"
                        " WHERE event_type IN ('task_dispatched', 'task_succeeded') GROUP BY 1",
                    )
                )
                assert events == {"task_dispatched": calls, "task_succeeded": calls}, events
            rounds.append({k: round(calls / v[-1], 1) for k, v in times.items()})
            print(
                f"round {rnd + 1} ({'/'.join(order)}): "
                + ", ".join(f"{k} {v:,.0f}/s" for k, v in rounds[-1].items())
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()

    from erasure.evidence.audit import verify_chain

    audit = verify_chain(pg_dsn)  # python -m erasure.cli audit verify, on the last pipeline round's log
    assert audit.ok, audit.summary()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    result = {
        "benchmark": "sync_dispatch",
        "subjects": N,
        "targets": T,
        "subjects_x_targets": calls,
        "concurrency_per_batch": CONCURRENCY,
        "pool_slots": POOL_SLOTS,
        "in_flight_per_target": CONCURRENCY * POOL_SLOTS,
        "batch_size": BATCH,
        "rounds": ROUNDS,
        "per_round_per_s": rounds,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_per_s": {k: round(calls / v, 1) for k, v in med.items()},
        "best_per_s": {k: round(calls / v, 1) for k, v in best.items()},
        "ratio_vs_bare_verified_median": {
            k: round(med["bare_verified"] / med[k], 3) for k in ("pipeline_processes", "pipeline_threads")
        },
        "ratio_vs_bare_delete_median": {
            k: round(med["bare_delete"] / med[k], 3) for k in ("pipeline_processes", "pipeline_threads")
        },
        "ratio_vs_bare_verified_best": {
            k: round(best["bare_verified"] / best[k], 3) for k in ("pipeline_processes", "pipeline_threads")
        },
        "cpu_seconds_median": {
            k: {
                part: round(statistics.median(c[part] for c in v), 2)
                for part in ("client", "partners", "postgres")
            }
            for k, v in cpu.items()
        },
        "cpu_note": (
            "client = the benchmark process and its finished children (the pipeline's lanes); partners = "
            "the partner servers' process; postgres = the stack's ended backends, every database (an upper "
            "bound: other sessions' work on the shared server is included)"
        ),
        "goal_ratio": 0.7,
        "goal_size": "N=10000, T=5",
        "pipeline_totals": pipe_totals,
        "audit_verify_after_last_pipeline_round": audit.summary(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = ROOT / ".local" / "bench" / "sync_dispatch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
