"""The canary: synthetic subjects that prove, end to end, that erasure really removes data.

A run of the ``erasure_canary`` DAG does three idempotent steps:

1. **seed** (:func:`seed_subjects` + :func:`seed_warehouse`): create fresh synthetic subjects
   (``canary_<random>`` customers; employees get ``emp_99<8 digits>``, checked free everywhere
   first) and put data for them in *every* catalog target of their subject type, through the target's
   adapter (``seed_test_subjects``: a partner's test-data endpoint, an ``INSERT``, an appended Delta
   row...; kinds that need Spark are seeded by :func:`seed_warehouse` in a Spark task).

   Every subject is recorded in ``erasure.canary_subject`` (``erase_after`` = now + delay) and every
   seeded target in ``erasure.canary_check``. Canary subjects are never mixed with real ones: their
   ids are recognisable, their rows live in the canary tables and their requests carry
   ``is_canary = true`` / ``source = 'canary'``.
2. **request** (:func:`file_requests`): for subjects whose ``erase_after`` has passed, file an
   erasure request through the normal intake (``source='canary'``); the pipeline then erases them
   like any other request.
3. **verify** (:func:`verify_subjects`): once a canary's request is finished (or the verify timeout
   has passed), check every seeded target no longer has the data (the adapter's ``check_test_subject``:
   lookups return 404, warehouse queries return 0 rows / masked columns no longer hold the seeded
   values, Postgres rows are gone),
   record pass/fail per target in ``canary_check`` and per subject in ``canary_subject``, and alert
   the owning team of every failing target (and the pipeline owner when the request itself did
   not complete).

Core logic only: no Airflow imports. Spark is passed in by the caller (only the warehouse steps
need it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from erasure.catalog import Catalog, Target
from erasure.db import transaction
from erasure.settings import Settings
from erasure.targets import CheckResult, Context, TargetError, adapter_for
from erasure.targets.sync_api import test_payload
from erasure.tracking import canary as canary_sql
from erasure.vocab import AlertKind, CanaryResult, CheckOutcome, RequestStatus

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

CANARY_PREFIX = "canary_"
DEFAULT_DELAY = timedelta(minutes=60)
VERIFIED_EARLIER = "verified earlier"
DEFAULT_VERIFY_TIMEOUT = timedelta(days=3)  # the daily warehouse DAG needs up to two runs
REQUESTED_BY = "erasure-canary"
HTTP_TIMEOUT = 10.0


class CanaryError(RuntimeError):
    """A canary step could not do its work (e.g. a test-data endpoint refused); names the target."""


@dataclass
class SubjectResult:
    subject_id: str
    subject_type: str
    request_id: int | None
    request_status: str | None
    result: CanaryResult | None  # None: not decided yet
    checks: list[CheckResult] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ ids
def is_canary_id(subject_id: str) -> bool:
    return subject_id.startswith(CANARY_PREFIX)


def new_subject_id(catalog: Catalog, subject_type: str = "customer") -> str:
    """A fresh id that matches the subject type's ``id_pattern``: ``canary_<hex>`` where allowed."""
    st = catalog.subject_type(subject_type)
    if st is None:
        raise CanaryError(f"subject_type: unknown subject type '{subject_type}'")
    candidates = [
        f"{CANARY_PREFIX}{secrets.token_hex(8)}",
        # e.g. employees: numbers only; the 99 prefix and the emptiness check before seeding keep
        # the canary from ever touching a real subject
        f"{subject_type[:3]}_99{secrets.randbelow(10**8):08d}",
    ]
    for c in candidates:
        if st.id_regex.fullmatch(c):
            return c
    raise CanaryError(
        f"subject_type '{subject_type}': id_pattern {st.id_pattern!r} admits no canary id "
        f"(add '{CANARY_PREFIX}' to the pattern or a '<abc>_99...' numeric form)"
    )


def canary_targets(catalog: Catalog, subject_type: str) -> list[Target]:
    """The targets a synthetic subject is seeded into and checked at: those erased by the subject's own
    id (a catalog with ``identifier_types``: targets whose ``identity_key`` includes the subject type's
    ``id_type``; a target keyed by e-mail or device id never holds a canary id)."""
    id_type = catalog.id_type_of(subject_type)
    return [t for t in catalog.targets_for(subject_type) if id_type is None or id_type in t.identity_keys]


def spark_seeded(target: Target) -> bool:
    """Whether the target's kind is seeded and checked in the Spark task (:func:`seed_warehouse`)."""
    return adapter_for(target).needs_spark


def partner_payload(target: Target, subject_id: str, subject_type: str) -> dict[str, Any]:
    """The test record a partner stores for a canary: one recognisable value per personal field."""
    return test_payload(target, subject_id, subject_type)


def _http(client: httpx.Client | None) -> httpx.Client:
    return client or httpx.Client(timeout=HTTP_TIMEOUT)


# ------------------------------------------------------------------------------------ seeding
def seed_subjects(
    dsn: str,
    catalog: Catalog,
    *,
    subject_types: Iterable[str] = ("customer",),
    count: int = 1,
    delay: timedelta = DEFAULT_DELAY,
    settings: Settings,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Create ``count`` canaries per subject type and seed all their non-Spark targets.

    Returns one dict per subject: id, type, the seeded targets, the warehouse targets still to be
    seeded (:func:`seed_warehouse`) and the errors. A target that fails to seed is recorded in the
    subject's ``details.seed_errors`` (verification then reports it as failed) and the others are
    still seeded; the function raises :class:`CanaryError` at the end if any target failed, so the
    Airflow task fails visibly. Idempotent per ``run_id``: a retry of the same run re-seeds only the
    missing targets of that run's canaries (:func:`reseed`) instead of creating new ones.
    """
    now = now or datetime.now(UTC)
    if count < 1:
        raise CanaryError(f"count: must be >= 1, got {count}")
    if delay < timedelta(0):
        raise CanaryError(f"delay: must not be negative, got {delay}")
    out: list[dict[str, Any]] = []
    for st in subject_types:
        if not canary_targets(catalog, st):
            raise CanaryError(f"subject_types: no enabled catalog target holds subject type '{st}'")
        existing: list[str] = []
        if run_id is not None:  # a retried task: finish this run's canaries instead of making new ones
            with transaction(dsn) as cur:
                existing = canary_sql.unrequested_of_run(cur, st, run_id)
        for sid in existing[:count]:
            out.append(reseed(dsn, catalog, sid, settings=settings, client=client, raise_on_error=False))
        for _ in range(count - len(existing[:count])):
            sid = new_subject_id(catalog, st)
            with transaction(dsn) as cur:
                canary_sql.create(cur, sid, st, now, delay, run_id)
            out.append(reseed(dsn, catalog, sid, settings=settings, client=client, raise_on_error=False))
    errors = [e for s in out for e in s["errors"]]
    if errors:
        raise CanaryError("canary seeding failed for: " + "; ".join(errors))
    return out


def reseed(
    dsn: str,
    catalog: Catalog,
    subject_id: str,
    *,
    settings: Settings,
    client: httpx.Client | None = None,
    raise_on_error: bool = True,
) -> dict[str, Any]:
    """Seed the non-Spark targets of one canary that have no ``canary_check`` row yet (idempotent)."""
    with transaction(dsn) as cur:
        st = canary_sql.subject_type_of(cur, subject_id)
        if st is None:
            raise CanaryError(f"subject_id: {subject_id} is not a canary subject")
        done = set(canary_sql.checks_of(cur, subject_id))
    http = _http(client)
    ctx = Context(settings=settings, dsn=dsn, catalog=catalog, http=http)
    seeded: list[str] = []
    pending_wh: list[str] = []
    errors: list[str] = []
    try:
        for t in canary_targets(catalog, st):
            if t.name in done:
                seeded.append(t.name)
                continue
            if spark_seeded(t):
                pending_wh.append(t.name)
                continue
            try:
                detail = adapter_for(t).seed_test_subjects(ctx, t, [(subject_id, st)])[subject_id]
            except TargetError as exc:
                errors.append(str(exc))
                continue
            _record_seeded(dsn, subject_id, [t.name], detail)
            seeded.append(t.name)
    finally:
        if client is None:
            http.close()
    if errors:
        with transaction(dsn) as cur:
            canary_sql.record_seed_errors(cur, subject_id, errors)
        if raise_on_error:
            raise CanaryError("canary seeding failed for: " + "; ".join(errors))
    return {
        "subject_id": subject_id,
        "subject_type": st,
        "seeded": seeded,
        "warehouse_pending": pending_wh,
        "errors": errors,
    }


def _record_seeded(dsn: str, subject_id: str, targets: list[str], detail: str) -> None:
    with transaction(dsn) as cur:
        for t in targets:
            canary_sql.record_seeded(cur, subject_id, t, detail)


def seed_warehouse(
    spark: SparkSession,
    dsn: str,
    catalog: Catalog,
    subject_ids: Iterable[str] | None = None,
    *,
    settings: Settings,
) -> dict[str, int]:
    """Seed every Spark-seeded target (warehouse tables) of each canary's subject type not yet seeded.

    ``subject_ids`` defaults to every unrequested canary missing such a check. Returns subjects
    seeded per target; the adapter seeds a target's subjects at once (one Delta commit per table).
    """
    with transaction(dsn) as cur:
        subjects = canary_sql.unrequested_with_done(cur, subject_ids)
    todo: dict[str, list[tuple[str, str]]] = {}
    for s in subjects:
        for t in canary_targets(catalog, s["subject_type"]):
            if spark_seeded(t) and t.name not in s["done"]:
                todo.setdefault(t.name, []).append((s["subject_id"], s["subject_type"]))
    ctx = Context(settings=settings, dsn=dsn, catalog=catalog, spark=spark)
    appended: dict[str, int] = {}
    errors = []
    for name, subjects_of_target in todo.items():
        t = catalog.target(name)
        try:
            details = adapter_for(t).seed_test_subjects(ctx, t, subjects_of_target)
        except TargetError as exc:
            errors.append(str(exc))
            continue
        appended[name] = len(details)
        for sid, detail in details.items():
            _record_seeded(dsn, sid, [name], detail)
    if errors:
        raise CanaryError("canary warehouse seeding failed: " + "; ".join(errors))
    return appended


# ----------------------------------------------------------------------------------- requests
def _register_via_intake(dsn: str, catalog: Catalog, payload: dict[str, Any], run_id: str | None) -> int:
    """File one canary request through the normal intake; returns the request id (new or existing)."""
    from erasure.intake import register_requests

    res = register_requests(dsn, catalog, [payload], "canary", run_id, is_canary=True)
    o = res.outcomes[0]
    if o.status not in ("registered", "duplicate") or o.request_id is None:
        raise CanaryError(f"intake {o.status} the canary request {payload['external_id']}: {o.message}")
    return int(o.request_id)


def file_requests(
    dsn: str,
    catalog: Catalog,
    *,
    now: datetime | None = None,
    register: Callable[[str, Catalog, dict[str, Any], str | None], int] | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """File an erasure request through the normal intake for every canary past its ``erase_after``.

    Idempotent: the external id is ``canary:<subject id>`` (the intake dedupes on it) and a subject
    with ``requested_at`` set is skipped. Returns one dict per subject filed.
    """
    now = now or datetime.now(UTC)
    with transaction(dsn) as cur:
        due = canary_sql.due_for_request(cur, now)
    reg = register or _register_via_intake
    filed = []
    for s in due:
        payload = {
            "external_id": f"canary:{s['subject_id']}",
            "subject_type": s["subject_type"],
            "subject_id": s["subject_id"],
            "requested_by": REQUESTED_BY,
            "reason": "canary: synthetic subject, verifies erasure end to end",
        }
        request_id = reg(dsn, catalog, payload, run_id)
        with transaction(dsn) as cur:
            canary_sql.mark_requested(cur, s["subject_id"], request_id, now)
        filed.append({"subject_id": s["subject_id"], "request_id": request_id})
    return filed


# ------------------------------------------------------------------------------- verification
def verify_subjects(
    dsn: str,
    catalog: Catalog,
    *,
    settings: Settings,
    spark: SparkSession | None = None,
    now: datetime | None = None,
    timeout: timedelta = DEFAULT_VERIFY_TIMEOUT,
    client: httpx.Client | None = None,
    subject_ids: Iterable[str] | None = None,
    alert: bool = True,
) -> list[SubjectResult]:
    """Check every requested, unverified canary whose request is finished (or timed out).

    Per target: ``pass`` (data gone), ``fail`` (still there: alert to the owning team) or
    ``error`` (could not check: left open, retried next run, failed at the timeout). Targets whose
    kind needs Spark (warehouse tables) need ``spark``; without it they stay open.
    """
    now = now or datetime.now(UTC)
    with transaction(dsn) as cur:
        subjects = canary_sql.requested_unverified(cur, subject_ids)
    http = _http(client)
    ctx = Context(settings=settings, dsn=dsn, catalog=catalog, http=http, spark=spark)
    results = []
    try:
        for s in subjects:
            finished = s["request_status"] in RequestStatus.finished()
            timed_out = s["requested_at"] + timeout <= now
            if not (finished or timed_out):
                results.append(
                    SubjectResult(
                        s["subject_id"], s["subject_type"], s["request_id"], s["request_status"], None
                    )
                )
                continue
            results.append(_verify_one(dsn, catalog, s, ctx, now, timed_out, alert))
    finally:
        if client is None:
            http.close()
    return results


def verdict(checks: list[CheckResult], request_status: str | None) -> CanaryResult | None:
    """A canary passes when every target's data is gone and its request completed; it fails when a
    target still holds it or the request did not complete; ``None`` while a target could not be
    checked (left open for the next run, failed at the verify timeout by the caller)."""
    if any(c.outcome == CheckOutcome.ERROR for c in checks):
        return None
    ok = request_status == RequestStatus.COMPLETED and all(c.outcome == CheckOutcome.PASS for c in checks)
    return CanaryResult.PASS if ok else CanaryResult.FAIL


def _verify_one(
    dsn: str,
    catalog: Catalog,
    s: dict[str, Any],
    ctx: Context,
    now: datetime,
    timed_out: bool,
    alert: bool,
) -> SubjectResult:
    sid = s["subject_id"]
    with transaction(dsn) as cur:
        checks = canary_sql.checks_of(cur, sid)
    res = SubjectResult(sid, s["subject_type"], s["request_id"], s["request_status"], None)
    seed_errors = (s["details"] or {}).get("seed_errors", [])
    for t in canary_targets(catalog, s["subject_type"]):
        if t.name not in checks:
            err = next((e for e in seed_errors if f"'{t.name}'" in e), "no seed record")
            res.checks.append(
                CheckResult(t.name, t.kind, CheckOutcome.FAIL, f"never seeded ({err}); nothing to verify")
            )
            continue
        if checks[t.name] is not None:  # decided by an earlier (partial) run
            outcome = CheckOutcome.PASS if checks[t.name] else CheckOutcome.FAIL
            res.checks.append(CheckResult(t.name, t.kind, outcome, VERIFIED_EARLIER))
            continue
        if spark_seeded(t) and ctx.spark is None:
            c = CheckResult(t.name, t.kind, CheckOutcome.ERROR, "no Spark session given: not checked")
        else:
            c = adapter_for(t).check_test_subject(ctx, t, sid)
        if c.outcome == CheckOutcome.ERROR and timed_out:
            c = CheckResult(
                c.target, c.kind, CheckOutcome.FAIL, f"could not verify before the timeout: {c.detail}"
            )
        res.checks.append(c)
    request_ok = s["request_status"] == RequestStatus.COMPLETED
    failed = [c for c in res.checks if c.outcome == CheckOutcome.FAIL]
    with transaction(dsn) as cur:
        for c in res.checks:
            if c.detail != VERIFIED_EARLIER:
                canary_sql.record_check(cur, sid, c.target, now, c.passed, c.detail)
        res.result = verdict(res.checks, s["request_status"])
        if res.result is None:
            return res  # decided next run (or at the timeout)
        summary = {
            "request_status": s["request_status"],
            "failed_targets": [c.target for c in failed],
            "checks": {c.target: {"outcome": c.outcome, "detail": c.detail} for c in res.checks},
        }
        canary_sql.record_verdict(cur, sid, now, res.result, summary)
    if alert and res.result == CanaryResult.FAIL:
        for c in failed:
            t = catalog.target(c.target)
            res.alerts.append(
                raise_alert(
                    dsn,
                    catalog,
                    settings=ctx.settings,
                    team=t.owner,
                    kind=AlertKind.CANARY_FAILED,
                    dedupe_key=f"canary:{sid}:{c.target}",
                    message=f"Canary {sid}: target '{c.target}' still holds the subject's data after erasure: {c.detail}",
                    request_id=s["request_id"],
                    target=c.target,
                    details={"subject_id": sid, "detail": c.detail, "request_status": s["request_status"]},
                )
            )
        if not request_ok:
            res.alerts.append(
                raise_alert(
                    dsn,
                    catalog,
                    settings=ctx.settings,
                    team=catalog.pipeline_owner,
                    kind=AlertKind.CANARY_REQUEST_INCOMPLETE,
                    dedupe_key=f"canary:{sid}:request",
                    message=(
                        f"Canary {sid}: erasure request {s['request_id']} is '{s['request_status']}'"
                        + (" after the verify timeout" if timed_out else "")
                        + (f" ({s['status_reason']})" if s.get("status_reason") else "")
                    ),
                    request_id=s["request_id"],
                    target=None,
                    details={"subject_id": sid, "request_status": s["request_status"]},
                )
            )
    return res


# ------------------------------------------------------------------------------------- alerts
def raise_alert(
    dsn: str,
    catalog: Catalog,
    *,
    team: str,
    kind: str,
    dedupe_key: str,
    message: str,
    request_id: int | None,
    target: str | None,
    details: dict[str, Any],
    settings: Settings | None = None,
) -> str:
    """Alert ``team`` on its catalog channel: recorded in ``erasure.alert`` (deduplicated on
    ``dedupe_key``: a re-run never alerts twice for the same canary and target), then delivered at
    once through ``erasure.alerts`` (an undelivered alert is retried by the reconcile DAG)."""
    from erasure.alerts import raise_and_deliver

    raise_and_deliver(
        dsn,
        catalog,
        team=team,
        kind=AlertKind(kind),
        dedupe_key=dedupe_key,
        message=message,
        settings=settings,
        request_id=request_id,
        target=target,
        details=details,
    )
    return dedupe_key


# ------------------------------------------------------------------------------------ summary
def summary(dsn: str, limit: int = 50) -> list[dict[str, Any]]:
    """Latest canaries with their per-target checks (for reports and the demo)."""
    with transaction(dsn) as cur:
        return canary_sql.latest(cur, limit)


def describe_failure(r: SubjectResult) -> str:
    bad = [f"{c.target} ({c.detail})" for c in r.checks if c.outcome == CheckOutcome.FAIL]
    return f"{r.subject_id}: " + (", ".join(bad) if bad else f"request {r.request_id} is {r.request_status}")


def warehouse_seeding_pending(dsn: str, catalog: Catalog) -> bool:
    """Whether some unrequested canary still lacks a row in one of its warehouse tables."""
    with transaction(dsn) as cur:
        rows = canary_sql.unrequested_with_done(cur)
    return any(
        spark_seeded(t) and t.name not in r["done"]
        for r in rows
        for t in canary_targets(catalog, r["subject_type"])
    )


def ready_to_verify(
    dsn: str,
    catalog: Catalog,
    *,
    timeout: timedelta = DEFAULT_VERIFY_TIMEOUT,
    now: datetime | None = None,
    needs_spark: bool = False,
) -> bool:
    """Whether a verification run has work (with ``needs_spark``: work on a warehouse target)."""
    now = now or datetime.now(UTC)
    with transaction(dsn) as cur:
        types = canary_sql.types_ready_to_verify(cur, timeout, now)
    if not needs_spark:
        return bool(types)
    return any(spark_seeded(t) for st in types for t in canary_targets(catalog, st))
