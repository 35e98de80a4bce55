"""Dispatch: claim due erasure tasks, cut them into batches per target, run a batch.

Task life cycle handled here (``erasure.task``; escalation after ``max_attempts`` is reconcile's job):

    pending ─┐
    failed (next_attempt_at <= now, attempts < max_attempts, not permanent) ─┼─> in_progress ─> succeeded | failed | awaiting_ack
    awaiting_ack (accepted by HTTP 202; next_attempt_at <= now, attempts left) ─┤
    in_progress (lease expired: a killed worker) ─┘

* **Verification**: a task succeeds only once its adapter looked the subject up after the erasure and
  found it gone (``evidence.verification.outcome = verified``) or the target cannot be asked
  (``not_verifiable``). A partner that answered success but still has the data fails the task with the
  lookup as evidence (``verification.outcome = failed``; retried, then escalated by reconcile). An HTTP
  202 ("accepted") whose subject is still there moves the task to ``awaiting_ack`` (not terminal, the
  request stays open) until a later run (after the retry backoff) finds it gone; at its last attempt it
  fails (reconcile escalates it).

* Only tasks whose request is ``in_progress`` are touched (held/received/closed requests never are).
* :func:`plan_batches` only *reads* due task ids (cheap, no locks); :func:`run_batch` claims them with
  one guarded ``UPDATE`` (a row another worker holds is skipped) stamped with a claim key, so a retry
  of the same batch re-claims its own rows at once while other runs must wait for the lease.
* **Recording in bulk.** Outcomes are buffered by a writer thread (:class:`OutcomeWriter`) and written in
  chunks — every ``flush_every_s`` (50 ms) or ``flush_max`` (500) outcomes, whichever comes first — with
  ONE guarded statement per chunk (:func:`erasure.tracking.store.transition_tasks`: ``UPDATE ... FROM
  (VALUES ...)``; a row moves only if it is still ``in_progress``, so a late or repeated write never
  moves a task backwards). The event log still gets one row per transition, written by the statement-
  level trigger (migration 0006) in the chunk's transaction and hash-chained (migration 0003).
* **A crash between a partner's answer and its chunk's commit** (worker killed, machine lost) loses the
  answers of at most the open chunk; nothing is half-written (the chunk's transaction rolls back) and
  nothing is counted twice:

  - those tasks stay ``in_progress`` under the dead batch's claim; a retry of the same task instance
    (same claim key) re-claims them at once, any other run after the lease (``dispatch_lease_minutes``);
  - erasing again is harmless: the same idempotency key per task (a partner replays its first answer,
    or answers 404/409 = already gone, both successes) and the lookup verifies the subject is gone;
  - the retry works on the same task row: one ``task_succeeded`` per task in the event log, and
    ``attempts`` counts recorded attempts (the lost one is not counted); a chunk committed before the
    crash is never re-done (its tasks left ``in_progress``, so the next claim skips them);
  - a batch whose task instance fails for good releases its claim at once (:func:`release_claim`).

  ``tests/integration/test_bulk_bookkeeping.py`` kills a batch between the answers and the commit.
* Evidence per subject: HTTP status, response id and snippet, idempotency key, times, attempt (sync
  APIs) or rows deleted and table (Postgres tables).

No Airflow here; the DAG ``erasure_dispatch`` is a thin wrapper.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2.extras

from erasure import fanout, privacy
from erasure.catalog import Catalog, Target
from erasure.db import connect, transaction
from erasure.identity import IdentityCodec
from erasure.settings import Settings
from erasure.targets import Claimed, Context, Outcome, TargetError, adapter_for
from erasure.tracking import task as task_sql
from erasure.tracking.store import Transition, transition_tasks
from erasure.vocab import AlertKind, DeleteOutcome, Runner, TaskStatus

log = logging.getLogger(__name__)

DEFAULT_LEASE_MINUTES = 15.0
"""Default of the ``dispatch_lease_minutes`` setting; callers pass the setting."""
MAX_MAP_LENGTH = 1024
DEFAULT_FLUSH_EVERY_S = 0.05
"""A batch's outcomes are written at least this often (seconds) ..."""
DEFAULT_FLUSH_MAX = 500
"""... or once this many are buffered: one transaction and one guarded UPDATE per chunk."""
_FROM_CLAIMED = (TaskStatus.IN_PROGRESS,)


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
    awaiting: int = 0
    """Accepted (HTTP 202) but not yet confirmed gone: waiting for a later run's lookup."""
    verification: dict[str, int] = field(default_factory=dict)
    """Tasks per ``evidence.verification.outcome`` (verified / not_verifiable / failed)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dispatch_target(catalog: Catalog, name: str) -> Target:
    t = catalog.target(name)
    if adapter_for(t).runner != Runner.DISPATCH:
        raise ValueError(f"target '{name}' is of kind '{t.kind}', which the dispatch stage does not erase")
    if not t.enabled:
        raise ValueError(f"target '{name}' is disabled in the catalog")
    return t


def dispatch_targets(catalog: Catalog) -> list[Target]:
    """Enabled targets whose kind the dispatch stage erases (mapped delete batches)."""
    return [t for t in catalog.targets if t.enabled and adapter_for(t).runner == Runner.DISPATCH]


def batch_size_of(target: Target) -> int:
    return adapter_for(target).batch_size(target)


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
    t = _dispatch_target(catalog, target)
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    size = batch_size or batch_size_of(t)
    with transaction(dsn) as cur:
        ids = task_sql.due_ids(cur, t.name, t.max_attempts, lease_minutes, size * max_batches)
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
        conn.autocommit = True  # one implicit transaction, committed by the server (see claim_due)
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            rows = task_sql.claim_due(
                cur, task_ids, target.name, target.max_attempts, lease_minutes, claim_key
            )
    finally:
        conn.close()
    return sorted((Claimed(**r) for r in rows), key=lambda c: c.task_id)


# -- recording outcomes --------------------------------------------------------------------------
class OutcomeWriter:
    """Writes outcomes to the tracking store from a background thread, one guarded UPDATE per chunk.

    ``add()`` never blocks on the database; the writer flushes at least every ``flush_every_s`` (or
    ``flush_max`` outcomes). ``close()`` flushes the rest and re-raises a write error.
    """

    def __init__(
        self,
        dsn: str,
        target: Target,
        flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
        flush_max: int = DEFAULT_FLUSH_MAX,
    ) -> None:
        self.dsn = dsn
        self.target = target
        self.flush_every_s = flush_every_s
        self.flush_max = flush_max
        self.written = 0
        self.moved = 0
        self.chunks = 0
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
            self._conn.autocommit = True
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
        """One transaction and one guarded ``UPDATE`` per chunk (:func:`transition_tasks`)."""
        now = datetime.now(UTC)
        changes: list[Transition] = []
        for o in items:
            attempts_after = o.item.attempts + 1
            if o.pending:  # accepted (202), not yet confirmed gone: wait and look again later
                changes.append(Transition(
                    o.item.task_id, TaskStatus.AWAITING_ACK, _FROM_CLAIMED,
                    evidence=o.evidence, last_error=(o.error or "accepted, not yet confirmed")[:2000],
                    increment_attempts=True, next_attempt_at=now + self.target.retry_delay(attempts_after),
                ))  # fmt: skip
            elif o.ok:
                changes.append(Transition(
                    o.item.task_id, TaskStatus.SUCCEEDED, _FROM_CLAIMED,
                    evidence=o.evidence, increment_attempts=True, stage=o.stage,
                ))  # fmt: skip
            else:
                changes.append(Transition(
                    o.item.task_id, TaskStatus.FAILED, _FROM_CLAIMED,
                    evidence={**o.evidence, "permanent": o.permanent},
                    last_error=(o.error or "unknown error")[:2000], increment_attempts=True,
                    next_attempt_at=now + self.target.retry_delay(attempts_after),
                ))  # fmt: skip
        # autocommit: the chunk is ONE statement, its own transaction committed by the server in the
        # same round trip (the audit chain's lock is never held while this thread waits for the GIL)
        with self._conn.cursor() as cur:
            moved = transition_tasks(cur, changes, chunk=max(len(changes), 1))
        self.moved += len(moved)
        self.written += len(items)
        self.chunks += 1

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
    settings: Settings,
    lease_minutes: float = DEFAULT_LEASE_MINUTES,
    flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
    flush_max: int = DEFAULT_FLUSH_MAX,
    codec: IdentityCodec | None = None,
) -> BatchSummary:
    """Claim ``task_ids`` of ``target`` and erase their subjects there through the target's adapter,
    recording the outcomes in chunks (``flush_every_s`` / ``flush_max``, see the module doc).

    With a catalog that declares ``identifier_types``, each task is erased by every identifier of the
    types the target is erased by (:mod:`erasure.fanout`; ``codec`` unseals them, default: the key
    files of ``settings``)."""
    t = _dispatch_target(catalog, target)
    t0 = time.monotonic()
    summary = BatchSummary(target=t.name, requested=len(task_ids))
    items = claim(dsn, t, task_ids, claim_key, lease_minutes=lease_minutes)
    summary.claimed = len(items)
    if not items:
        summary.elapsed_s = round(time.monotonic() - t0, 3)
        return summary
    if codec is None and catalog.has_identity:
        codec = IdentityCodec.from_settings(settings)
    with transaction(dsn) as cur:
        work, not_found = fanout.expand(cur, codec, t, items)
    writer = OutcomeWriter(dsn, t, flush_every_s=flush_every_s, flush_max=flush_max)
    outcomes: list[Outcome] = []
    config_error: TargetError | None = None

    # every value erased for a task, so its evidence and error never carry one in clear (erasure.privacy)
    values: dict[int, set[str]] = {}
    for c in [*items, *work]:
        values.setdefault(c.task_id, set()).add(c.subject_id)

    def record(o: Outcome) -> None:
        vs = values.get(o.item.task_id, ())
        o = dataclasses.replace(
            o,
            evidence=privacy.scrub(o.evidence, vs),
            error=privacy.scrub_text(o.error, vs) if o.error else o.error,
        )
        outcomes.append(o)
        writer.add(o)

    combiner = fanout.Combiner(work, record)
    try:
        for o in not_found:
            record(o)
        if work:
            adapter_for(t).erase_batch(
                Context(settings=settings, dsn=dsn, catalog=catalog), t, work, combiner
            )
    except TargetError as exc:  # the outcomes are recorded (retryable); the batch still fails visibly
        config_error = exc
    finally:
        writer.close()
    for o in outcomes:
        key = o.evidence.get("outcome", DeleteOutcome.DELETED if o.ok else "failed")
        summary.outcomes[key] = summary.outcomes.get(key, 0) + 1
        ver = (o.evidence.get("verification") or {}).get("outcome")
        if ver:
            summary.verification[ver] = summary.verification.get(ver, 0) + 1
        summary.succeeded += int(o.ok)
        summary.awaiting += int(o.pending)
        summary.failed += int(not o.ok and not o.pending)
        summary.permanent += int(o.permanent)
    summary.not_recorded = summary.claimed - writer.moved
    summary.elapsed_s = round(time.monotonic() - t0, 3)
    log.info("batch of %s: %s", t.name, summary.as_dict())
    if config_error is not None:
        raise config_error
    return summary


def release_claim(
    dsn: str,
    catalog: Catalog,
    target: str,
    claim_key: str,
    *,
    error: str,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """A batch's task instance failed for good (killed, timed out, crashed on its last try): its tasks
    still ``in_progress`` under ``claim_key`` become ``failed`` with the attempt counted and the next
    attempt due at once, so the next dispatch run takes them instead of waiting for the lease, and
    reconcile escalates a batch that keeps dying. One ``batch_failed`` alert to the target's owner names
    the target and the batch (deduplicated per claim). Returns the released tasks (ids only)."""
    from erasure.alerts import raise_and_deliver

    t = catalog.target(target)
    with transaction(dsn) as cur:
        released = task_sql.release_claim(cur, claim_key, error, now or datetime.now(UTC))
    if released:
        raise_and_deliver(
            dsn,
            catalog,
            team=t.owner,
            kind=AlertKind.BATCH_FAILED,
            dedupe_key=f"{AlertKind.BATCH_FAILED}:{claim_key}",
            message=(
                f"Erasure batch {claim_key} of target '{t.name}' failed ({error[:300]}); "
                f"{len(released)} task(s) released for the next dispatch run"
            ),
            settings=settings,
            target=t.name,
            details={
                "claim": claim_key,
                "tasks": [r["task_id"] for r in released][:100],
                "error": error[:1000],
            },
        )
        log.warning("released %d task(s) of failed batch %s", len(released), claim_key)
    return released


def pool_specs(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Airflow pools per enabled target, in ``airflow pools import`` format."""
    pools: dict[str, dict[str, Any]] = {}
    for t in catalog.targets:
        if not t.enabled:
            continue
        slots = adapter_for(t).pool_slots(t)
        pools[t.pool] = {
            "slots": slots,
            "description": f"erasure target {t.name} ({t.kind}, owner {t.owner}); from the catalog",
            "include_deferred": False,
        }
    return pools
