"""Dispatch: claim due erasure tasks, cut them into batches per target, run a batch.

Task life cycle handled here (``erasure.task``; escalation after ``max_attempts`` is reconcile's job):

    pending ─┐
    failed (next_attempt_at <= now, attempts < max_attempts, not permanent) ─┼─> in_progress ─> succeeded | failed
    in_progress (lease expired: a killed worker) ─┘

* Only tasks whose request is ``in_progress`` are touched (held/received/closed requests never are).
* :func:`plan_batches` only *reads* due task ids (cheap, no locks); :func:`run_batch` claims them with
  one guarded ``UPDATE`` (a row another worker holds is skipped) stamped with a claim key, so a retry
  of the same batch re-claims its own rows at once while other runs must wait for the lease.
* Every subject's outcome is written with :func:`erasure.tracking.store.transition_task` (guarded by
  ``in_progress``) as it happens — flushed by a writer thread every ``flush_every_s`` — so a killed
  batch loses at most the last fraction of a second of results, which stay ``in_progress`` and are
  re-done (idempotently) after the lease; a re-run skips everything that succeeded.
* Evidence per subject: HTTP status, response id and snippet, idempotency key, times, attempt (sync
  APIs) or rows deleted and table (Postgres tables).

No Airflow here; the DAG ``erasure_dispatch`` is a thin wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from erasure.catalog import Catalog, Target
from erasure.db import connect
from erasure.sync_delete import DeleteResult, SyncDeleteClient
from erasure.tracking.store import transition_task

log = logging.getLogger(__name__)

DISPATCH_KINDS = ("sync_api", "postgres_table")
DEFAULT_LEASE_MINUTES = float(os.environ.get("ERASURE_DISPATCH_LEASE_MINUTES", "15"))
MAX_MAP_LENGTH = 1024
POSTGRES_BATCH_SIZE = 1000
MAX_BACKOFF = timedelta(days=1)

# Due = may be claimed now. %(lease)s is an interval in minutes, %(claim)s the claimer's key.
_DUE = """
    r.status = 'in_progress'
    AND t.target = %(target)s
    AND (
        t.status = 'pending'
        OR (t.status = 'failed' AND t.next_attempt_at <= now() AND t.attempts < %(max_attempts)s
            AND NOT COALESCE((t.evidence ->> 'permanent')::boolean, false))
        OR (t.status = 'in_progress'
            AND (t.updated_at < now() - make_interval(secs => %(lease)s * 60)
                 OR t.evidence ->> 'claim' = %(claim)s))
    )
"""


@dataclass(frozen=True)
class Claimed:
    task_id: int
    request_id: int
    subject_id: str
    attempts: int

    @property
    def attempt(self) -> int:
        """The number of this attempt (1-based)."""
        return self.attempts + 1

    @property
    def idempotency_key(self) -> str:
        """Stable per erasure task: every retry and replay of this erasure carries the same key."""
        return f"erasure-{self.request_id}-{self.task_id}"


@dataclass
class BatchSummary:
    target: str
    requested: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    permanent: int = 0
    not_recorded: int = 0
    elapsed_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync_targets(catalog: Catalog, name: str) -> Target:
    t = catalog.target(name)
    if t.kind not in DISPATCH_KINDS:
        raise ValueError(f"target '{name}' is of kind '{t.kind}'; dispatch handles {DISPATCH_KINDS}")
    if not t.enabled:
        raise ValueError(f"target '{name}' is disabled in the catalog")
    return t


def batch_size_of(target: Target) -> int:
    return target.sync_api.batch_size if target.sync_api is not None else POSTGRES_BATCH_SIZE


def backoff_for(target: Target, attempts_after: int) -> timedelta:
    """Delay before the next attempt: ``retry_backoff_minutes * 2^(attempts_after - 1)``, capped at a day."""
    minutes = target.retry_backoff_minutes * (2 ** max(0, min(attempts_after - 1, 20)))
    return min(timedelta(minutes=minutes), MAX_BACKOFF)


def plan_batches(
    dsn: str,
    catalog: Catalog,
    target: str,
    *,
    max_batches: int = MAX_MAP_LENGTH,
    batch_size: int | None = None,
    lease_minutes: float = DEFAULT_LEASE_MINUTES,
) -> list[dict[str, Any]]:
    """Due task ids of ``target`` cut into at most ``max_batches`` batches (earliest ``due_at`` first).

    Returns ``[{"target", "batch", "of", "task_ids"}]`` — ids only, no subject identifiers. What does
    not fit waits for the next run.
    """
    t = _sync_targets(catalog, target)
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    size = batch_size or batch_size_of(t)
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                f"""
                SELECT t.id FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
                 WHERE {_DUE}
                 ORDER BY r.due_at, t.id
                 LIMIT %(limit)s
                """,  # noqa: S608 - constant SQL fragment, values are parameters
                {
                    "target": t.name,
                    "max_attempts": t.max_attempts,
                    "lease": lease_minutes,
                    "claim": "",
                    "limit": size * max_batches,
                },
            )
            ids = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    return [{"target": t.name, "batch": i, "of": len(chunks), "task_ids": c} for i, c in enumerate(chunks)]


def claim(
    dsn: str,
    target: Target,
    task_ids: Sequence[int],
    claim_key: str,
    *,
    lease_minutes: float = DEFAULT_LEASE_MINUTES,
) -> list[Claimed]:
    """Move the due ones of ``task_ids`` to ``in_progress`` under ``claim_key``; returns what was claimed.

    One guarded UPDATE: rows locked by another claimer are skipped (``SKIP LOCKED``), rows no longer due
    (succeeded, claimed elsewhere, request held) are left alone.
    """
    if not task_ids:
        return []
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                f"""
                WITH due AS (
                    SELECT t.id FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
                     WHERE t.id = ANY(%(ids)s) AND {_DUE}
                     ORDER BY t.id
                     FOR UPDATE OF t SKIP LOCKED
                )
                UPDATE erasure.task t
                   SET status = 'in_progress', updated_at = now(),
                       evidence = t.evidence || jsonb_build_object('claim', %(claim)s::text,
                                                                   'claimed_at', now())
                  FROM due, erasure.request r
                 WHERE t.id = due.id AND r.id = t.request_id
                RETURNING t.id, t.request_id, r.subject_id, t.attempts
                """,  # noqa: S608 - constant SQL fragment, values are parameters
                {
                    "ids": list(task_ids),
                    "target": target.name,
                    "max_attempts": target.max_attempts,
                    "lease": lease_minutes,
                    "claim": claim_key,
                },
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    return sorted((Claimed(*r) for r in rows), key=lambda c: c.task_id)


# -- recording outcomes --------------------------------------------------------------------------
@dataclass
class Outcome:
    item: Claimed
    ok: bool
    evidence: dict[str, Any]
    error: str | None = None
    permanent: bool = False
    stage: str | None = None


class OutcomeWriter:
    """Writes outcomes to the tracking store from a background thread, in small transactions.

    ``add()`` never blocks on the database; the writer flushes at least every ``flush_every_s`` (or
    ``flush_max`` outcomes). ``close()`` flushes the rest and re-raises a write error.
    """

    def __init__(self, dsn: str, target: Target, flush_every_s: float = 0.2, flush_max: int = 200) -> None:
        self.dsn = dsn
        self.target = target
        self.flush_every_s = flush_every_s
        self.flush_max = flush_max
        self.written = 0
        self.moved = 0
        self._q: queue.Queue[Outcome | None] = queue.Queue()
        self._error: BaseException | None = None
        self._conn: Any = None
        self._thread = threading.Thread(target=self._run, name=f"outcomes-{target.name}", daemon=True)
        self._thread.start()

    def add(self, outcome: Outcome) -> None:
        if self._error is not None:
            raise RuntimeError(f"recording outcomes failed: {self._error}") from self._error
        self._q.put(outcome)

    def _drain(self) -> Iterator[list[Outcome]]:
        done = False
        while not done:
            first = self._q.get()
            if first is None:
                return
            items = [first]
            deadline = time.monotonic() + self.flush_every_s
            while len(items) < self.flush_max:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=max(0.0, remaining)) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    done = True
                    break
                items.append(nxt)
            yield items

    def _run(self) -> None:
        try:
            self._conn = connect(self.dsn)
            for items in self._drain():
                self._write(items)
        except BaseException as exc:  # noqa: BLE001 - surfaced by add()/close()
            self._error = exc
            log.exception("recording outcomes for %s failed", self.target.name)
            while True:  # keep draining so producers never block
                try:
                    if self._q.get(timeout=1) is None:
                        break
                except queue.Empty:
                    continue
        finally:
            if self._conn is not None:
                self._conn.close()

    def _write(self, items: list[Outcome]) -> None:
        now = datetime.now(UTC)
        with self._conn, self._conn.cursor() as cur:
            for o in items:
                attempts_after = o.item.attempts + 1
                if o.ok:
                    moved = transition_task(
                        cur, o.item.task_id, "succeeded", ("in_progress",),
                        evidence=o.evidence, increment_attempts=True, stage=o.stage,
                    )  # fmt: skip
                else:
                    moved = transition_task(
                        cur, o.item.task_id, "failed", ("in_progress",),
                        evidence={**o.evidence, "permanent": o.permanent},
                        last_error=(o.error or "unknown error")[:2000],
                        increment_attempts=True,
                        next_attempt_at=now + backoff_for(self.target, attempts_after),
                    )  # fmt: skip
                self.moved += int(moved)
        self.written += len(items)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"recording outcomes failed: {self._error}") from self._error


# -- running a batch -----------------------------------------------------------------------------
def run_batch(
    dsn: str,
    catalog: Catalog,
    target: str,
    task_ids: Sequence[int],
    *,
    claim_key: str,
    lease_minutes: float = DEFAULT_LEASE_MINUTES,
    flush_every_s: float = 0.2,
) -> BatchSummary:
    """Claim ``task_ids`` of ``target`` and erase their subjects there, recording each outcome."""
    t = _sync_targets(catalog, target)
    t0 = time.monotonic()
    summary = BatchSummary(target=t.name, requested=len(task_ids))
    items = claim(dsn, t, task_ids, claim_key, lease_minutes=lease_minutes)
    summary.claimed = len(items)
    if not items:
        summary.elapsed_s = round(time.monotonic() - t0, 3)
        return summary
    writer = OutcomeWriter(dsn, t, flush_every_s=flush_every_s)
    config_error: Exception | None = None
    try:
        if t.kind == "sync_api":
            outcomes = asyncio.run(_run_sync(t, items, writer))
        else:
            outcomes, config_error = _run_postgres(t, items, writer)
    finally:
        writer.close()
    for o in outcomes:
        key = o.evidence.get("outcome", "deleted" if o.ok else "failed")
        summary.outcomes[key] = summary.outcomes.get(key, 0) + 1
        summary.succeeded += int(o.ok)
        summary.failed += int(not o.ok)
        summary.permanent += int(o.permanent)
    summary.not_recorded = summary.claimed - writer.moved
    summary.elapsed_s = round(time.monotonic() - t0, 3)
    log.info("batch of %s: %s", t.name, summary.as_dict())
    if config_error is not None:
        raise config_error
    return summary


def _resolve_token(t: Target) -> str | None:
    env = t.sync_api.token_env if t.sync_api else None
    if not env:
        return None
    token = os.environ.get(env)
    if not token:
        raise RuntimeError(f"target '{t.name}': sync_api.token_env names {env}, which is not set")
    return token


async def _run_sync(t: Target, items: list[Claimed], writer: OutcomeWriter) -> list[Outcome]:
    outcomes: list[Outcome] = []
    by_task = {c.task_id: c for c in items}

    def record(r: DeleteResult) -> None:
        c = by_task[r.key]
        ev = {"kind": "sync_api", "attempt": c.attempt, **r.evidence()}
        o = Outcome(c, r.ok, ev, error=r.error, permanent=r.permanent)
        outcomes.append(o)
        writer.add(o)

    async with SyncDeleteClient.for_target(t, token=_resolve_token(t)) as client:
        await client.delete_many(((c.task_id, c.subject_id, c.idempotency_key) for c in items), record)
    return outcomes


def _run_postgres(
    t: Target, items: list[Claimed], writer: OutcomeWriter
) -> tuple[list[Outcome], Exception | None]:
    """``DELETE FROM <table> WHERE <key> = ANY(...)`` in one transaction; per-subject row counts."""
    spec = t.postgres_table
    assert spec is not None
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    base_ev = {"kind": "postgres_table", "table": spec.table, "key_column": spec.key_column, "at": at}
    error: Exception | None = None
    counts: dict[str, int] = {}
    permanent = False
    dsn = os.environ.get(spec.dsn_env)
    if not dsn:
        error = RuntimeError(
            f"target '{t.name}': postgres_table.dsn_env names {spec.dsn_env}, which is not set"
        )
        permanent = False
    else:
        table = sql.Identifier(*spec.table.split("."))
        stmt = sql.SQL("DELETE FROM {} WHERE {} = ANY(%s) RETURNING {}").format(
            table, sql.Identifier(spec.key_column), sql.Identifier(spec.key_column)
        )
        try:
            conn = psycopg2.connect(dsn, application_name="erasure-dispatch")
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(stmt, ([c.subject_id for c in items],))
                    for (key,) in cur.fetchall():
                        counts[str(key)] = counts.get(str(key), 0) + 1
            finally:
                conn.close()
        except psycopg2.Error as exc:
            error = exc
            permanent = isinstance(exc, psycopg2.ProgrammingError | psycopg2.DataError)
    outcomes = []
    for c in items:
        if error is None:
            n = counts.get(c.subject_id, 0)
            ev = {
                **base_ev,
                "attempt": c.attempt,
                "rows_deleted": n,
                "outcome": "deleted" if n else "already_gone",
            }
            o = Outcome(c, True, ev, stage="deleted")
        else:
            msg = f"{type(error).__name__}: {str(error).strip()}"
            ev = {
                **base_ev,
                "attempt": c.attempt,
                "outcome": "permanent_failure" if permanent else "retryable_failure",
            }
            o = Outcome(c, False, ev, error=msg, permanent=permanent)
        outcomes.append(o)
        writer.add(o)
    if error is not None and not isinstance(error, psycopg2.Error):
        return outcomes, error
    return outcomes, None


def pool_specs(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Airflow pools per enabled target, in ``airflow pools import`` format."""
    pools: dict[str, dict[str, Any]] = {}
    for t in catalog.targets:
        if not t.enabled:
            continue
        slots = t.sync_api.pool_slots if t.sync_api is not None else 1
        pools[t.pool] = {
            "slots": slots,
            "description": f"erasure target {t.name} ({t.kind}, owner {t.owner}); from the catalog",
            "include_deferred": False,
        }
    return pools
