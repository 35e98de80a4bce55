"""The canary: synthetic subjects that prove, end to end, that erasure really removes data.

A run of the ``erasure_canary`` DAG does three idempotent steps:

1. **seed** (:func:`seed_subjects` + :func:`seed_warehouse`): create fresh synthetic subjects
   (``canary_<random>`` customers; employees get ``emp_99<8 digits>``, checked free everywhere
   first) and put data for them in *every* catalog target of their subject type:

   * ``sync_api`` partners: ``POST <base_url><create_path>`` (the partner's test-data endpoint);
   * ``kafka`` partners: ``POST <lookup_url>/test-subjects`` (the consumer service's test-data endpoint);
   * ``warehouse_delta`` tables: one appended test row per subject (Spark);
   * ``postgres_table``: an ``INSERT`` of a test row.

   Every subject is recorded in ``erasure.canary_subject`` (``erase_after`` = now + delay) and every
   seeded target in ``erasure.canary_check``. Canary subjects are never mixed with real ones: their
   ids are recognisable, their rows live in the canary tables and their requests carry
   ``is_canary = true`` / ``source = 'canary'``.
2. **request** (:func:`file_requests`): for subjects whose ``erase_after`` has passed, file an
   erasure request through the normal intake (``source='canary'``); the pipeline then erases them
   like any other request.
3. **verify** (:func:`verify_subjects`): once a canary's request is finished (or the verify timeout
   has passed), check every seeded target no longer has the data (lookups return 404, warehouse
   queries return 0 rows / masked columns no longer hold the seeded values, Postgres rows are gone),
   record pass/fail per target in ``canary_check`` and per subject in ``canary_subject``, and alert
   the owning team of every failing target (and the pipeline owner when the request itself did
   not complete).

Core logic only: no Airflow imports. Spark is passed in by the caller (only the warehouse steps
need it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from erasure.catalog import Catalog, Target
from erasure.db import transaction

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

CANARY_PREFIX = "canary_"
KAFKA_TEST_PATH = "/test-subjects"
KAFKA_LOOKUP_PATH = "/subjects/{subject_id}"
DEFAULT_DELAY = timedelta(minutes=60)
DEFAULT_VERIFY_TIMEOUT = timedelta(days=3)  # the daily warehouse DAG needs up to two runs
REQUESTED_BY = "erasure-canary"
HTTP_TIMEOUT = 10.0


class CanaryError(RuntimeError):
    """A canary step could not do its work (e.g. a test-data endpoint refused); names the target."""


@dataclass
class CheckResult:
    target: str
    kind: str
    outcome: str  # 'pass' | 'fail' | 'error' (could not check: retried next run until the timeout)
    detail: str

    @property
    def passed(self) -> bool | None:
        return {"pass": True, "fail": False}.get(self.outcome)


@dataclass
class SubjectResult:
    subject_id: str
    subject_type: str
    request_id: int | None
    request_status: str | None
    result: str | None  # 'pass' | 'fail' | None (not decided yet)
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
    return catalog.targets_for(subject_type)


# ------------------------------------------------------------------------------- synthetic data
def _marker(subject_id: str, column: str) -> str:
    return f"canary-{column}-{subject_id}"


def _marker_date(subject_id: str, column: str) -> date:
    return date(1950, 1, 1) + timedelta(days=zlib.crc32(f"{subject_id}:{column}".encode()) % 18000)


def partner_payload(target: Target, subject_id: str, subject_type: str) -> dict[str, Any]:
    """The test record a partner stores for a canary: one recognisable value per personal field."""
    data: dict[str, Any] = {target.identity_key: subject_id, "is_canary": True, "subject_type": subject_type}
    for f in target.personal_data or ["data"]:
        data[f] = _marker(subject_id, f)
    return {"subject_id": subject_id, "subject_type": subject_type, "is_test": True, "data": data}


def _http(client: httpx.Client | None) -> httpx.Client:
    return client or httpx.Client(timeout=HTTP_TIMEOUT)


def _headers(target: Target) -> dict[str, str]:
    spec = target.spec
    token_env = getattr(spec, "token_env", None)
    if token_env and os.environ.get(token_env):
        return {"Authorization": f"Bearer {os.environ[token_env]}"}
    return {}


def _urls(target: Target, subject_id: str) -> tuple[str, str]:
    """(create url, lookup url) of an HTTP-reachable target."""
    if target.kind == "sync_api":
        s = target.sync_api
        assert s is not None
        base = s.base_url.rstrip("/")
        return base + s.create_path, base + s.lookup_path.format(subject_id=subject_id)
    if target.kind == "kafka":
        k = target.kafka
        assert k is not None
        if not k.lookup_url:
            raise CanaryError(
                f"target '{target.name}': kafka.lookup_url is not set; the canary cannot seed or check it"
            )
        base = k.lookup_url.rstrip("/")
        return base + KAFKA_TEST_PATH, base + KAFKA_LOOKUP_PATH.format(subject_id=subject_id)
    raise CanaryError(f"target '{target.name}': kind '{target.kind}' has no HTTP endpoints")


def _lookup(client: httpx.Client, target: Target, subject_id: str) -> CheckResult:
    _, url = _urls(target, subject_id)
    try:
        r = client.get(url, headers=_headers(target))
    except httpx.HTTPError as exc:
        return CheckResult(target.name, target.kind, "error", f"GET {url}: {type(exc).__name__}: {exc}")
    if r.status_code == 404:
        return CheckResult(target.name, target.kind, "pass", f"GET {url} -> 404")
    if r.status_code == 200:
        return CheckResult(
            target.name, target.kind, "fail", f"GET {url} -> 200: the subject's data is still there"
        )
    return CheckResult(target.name, target.kind, "error", f"GET {url} -> {r.status_code}: {r.text[:200]}")


def _seed_http(client: httpx.Client, target: Target, subject_id: str, subject_type: str) -> str:
    create, lookup = _urls(target, subject_id)
    pre = _lookup(client, target, subject_id)
    if pre.outcome == "fail":
        raise CanaryError(
            f"target '{target.name}': {subject_id} already exists there; refusing to seed a live id"
        )
    if pre.outcome == "error":
        raise CanaryError(f"target '{target.name}': lookup before seeding failed: {pre.detail}")
    try:
        r = client.post(
            create, json=partner_payload(target, subject_id, subject_type), headers=_headers(target)
        )
    except httpx.HTTPError as exc:
        raise CanaryError(f"target '{target.name}': POST {create}: {type(exc).__name__}: {exc}") from exc
    if r.status_code not in (200, 201, 204):
        raise CanaryError(f"target '{target.name}': POST {create} -> {r.status_code}: {r.text[:200]}")
    post = _lookup(client, target, subject_id)
    if post.outcome != "fail":  # 'fail' here means: the data is present, as it should be after seeding
        raise CanaryError(f"target '{target.name}': seeded but lookup does not find it ({post.detail})")
    return f"POST {create} -> {r.status_code}; GET {lookup} -> 200"


# -------------------------------------------------------------------------- postgres targets
_QUAL_RE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def _pg_dsn(target: Target) -> str:
    spec = target.postgres_table
    assert spec is not None
    dsn = os.environ.get(spec.dsn_env)
    if not dsn:
        raise CanaryError(
            f"target '{target.name}': environment variable {spec.dsn_env} (postgres_table.dsn_env) is not set"
        )
    return dsn


def _split_table(table: str) -> tuple[str, str]:
    if not _QUAL_RE.fullmatch(table):
        raise CanaryError(f"postgres_table.table: invalid name {table!r}")
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def _pg_value(subject_id: str, column: str, data_type: str) -> Any:
    t = data_type.lower()
    if t in ("text", "character varying", "character", "citext"):
        return _marker(subject_id, column)
    if t in ("integer", "bigint", "smallint", "numeric", "real", "double precision"):
        return 0
    if t == "boolean":
        return False
    if t == "date":
        return _marker_date(subject_id, column)
    if t.startswith("timestamp"):
        return datetime.now(UTC)
    if t in ("json", "jsonb"):
        return json.dumps({"canary": True})
    if t == "uuid":
        import uuid

        return str(uuid.uuid4())
    return _marker(subject_id, column)


def _seed_postgres(target: Target, subject_id: str) -> str:
    from psycopg2 import sql

    spec = target.postgres_table
    assert spec is not None
    schema, name = _split_table(spec.table)
    with transaction(_pg_dsn(target)) as cur:
        cur.execute(
            """SELECT column_name, data_type, is_nullable, column_default
                 FROM information_schema.columns WHERE table_schema=%s AND table_name=%s
                ORDER BY ordinal_position""",
            (schema, name),
        )
        cols = cur.fetchall()
        if not cols:
            raise CanaryError(f"target '{target.name}': table {spec.table} does not exist")
        if spec.key_column not in {c["column_name"] for c in cols}:
            raise CanaryError(
                f"target '{target.name}': table {spec.table} has no key column '{spec.key_column}'"
            )
        values: dict[str, Any] = {spec.key_column: subject_id}
        for c in cols:
            n = c["column_name"]
            if n in ("is_test", "is_canary") and c["data_type"] == "boolean":
                values[n] = True  # the partner's own marker for test data, when it has one
                continue
            if n in values or c["column_default"] is not None:
                continue
            values[n] = _pg_value(subject_id, n, c["data_type"])
        tbl = sql.Identifier(schema, name)
        cur.execute(
            sql.SQL("SELECT count(*) AS n FROM {} WHERE {} = %s").format(
                tbl, sql.Identifier(spec.key_column)
            ),
            (subject_id,),
        )
        if cur.fetchone()["n"]:
            raise CanaryError(
                f"target '{target.name}': {subject_id} already exists there; refusing to seed a live id"
            )
        cur.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                tbl,
                sql.SQL(", ").join(sql.Identifier(k) for k in values),
                sql.SQL(", ").join(sql.Placeholder() for _ in values),
            ),
            list(values.values()),
        )
    return f"INSERT INTO {spec.table} ({len(values)} columns)"


def _check_postgres(target: Target, subject_id: str) -> CheckResult:
    from psycopg2 import sql

    spec = target.postgres_table
    assert spec is not None
    schema, name = _split_table(spec.table)
    try:
        with transaction(_pg_dsn(target)) as cur:
            cur.execute(
                sql.SQL("SELECT count(*) AS n FROM {} WHERE {} = %s").format(
                    sql.Identifier(schema, name), sql.Identifier(spec.key_column)
                ),
                (subject_id,),
            )
            n = int(cur.fetchone()["n"])
    except Exception as exc:  # noqa: BLE001 - any failure to look is 'could not check'
        return CheckResult(target.name, target.kind, "error", f"{spec.table}: {type(exc).__name__}: {exc}")
    if n == 0:
        return CheckResult(target.name, target.kind, "pass", f"{spec.table}: 0 rows")
    return CheckResult(target.name, target.kind, "fail", f"{spec.table}: {n} row(s) still there")


# ------------------------------------------------------------------------- warehouse targets
def _spark_value(subject_id: str, column: str, dtype: Any, now: datetime) -> Any:
    from pyspark.sql import types as T

    if isinstance(dtype, T.StringType):
        return _marker(subject_id, column)
    if isinstance(dtype, T.DateType):
        return _marker_date(subject_id, column)
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        return now.replace(tzinfo=None) if isinstance(dtype, T.TimestampNTZType) else now
    if isinstance(dtype, T.BooleanType):
        return False
    if isinstance(dtype, T.IntegralType):
        return 0
    if isinstance(dtype, T.DecimalType):
        from decimal import Decimal

        return Decimal(0)
    if isinstance(dtype, T.FractionalType):
        return 0.0
    return None


def _warehouse_rows(spark: SparkSession, target: Target, subject_ids: list[str], now: datetime) -> int:
    spec = target.warehouse_delta
    assert spec is not None
    path = spec.resolved_path()
    try:
        schema = spark.read.format("delta").load(path).schema
    except Exception as exc:  # noqa: BLE001
        raise CanaryError(f"target '{target.name}': cannot read Delta table at {path}: {exc}") from exc
    if spec.key_column not in schema.fieldNames():
        raise CanaryError(f"target '{target.name}': table at {path} has no key column '{spec.key_column}'")
    rows = []
    for sid in subject_ids:
        row = {}
        for f in schema.fields:
            row[f.name] = sid if f.name == spec.key_column else _spark_value(sid, f.name, f.dataType, now)
        rows.append(row)
    spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(path)
    return len(rows)


def _check_warehouse(spark: SparkSession, target: Target, subject_id: str) -> CheckResult:
    from pyspark.sql import functions as F

    spec = target.warehouse_delta
    assert spec is not None
    path = spec.resolved_path()
    try:
        df = spark.read.format("delta").load(path).where(F.col(spec.key_column) == subject_id)
        if spec.mode == "delete":
            n = df.count()
            if n == 0:
                return CheckResult(target.name, target.kind, "pass", f"{spec.table}: 0 rows for the subject")
            return CheckResult(target.name, target.kind, "fail", f"{spec.table}: {n} row(s) still there")
        # mask mode: the row may stay, the seeded personal values must not
        leaks = 0
        rows = df.select(*spec.mask_columns).collect()
        for r in rows:
            for c in spec.mask_columns:
                v = r[c]
                if v is not None and (v == _marker(subject_id, c) or v == _marker_date(subject_id, c)):
                    leaks += 1
        if leaks == 0:
            return CheckResult(
                target.name,
                target.kind,
                "pass",
                f"{spec.table}: {len(rows)} row(s), columns {spec.mask_columns} masked",
            )
        return CheckResult(
            target.name, target.kind, "fail", f"{spec.table}: {leaks} seeded value(s) still unmasked"
        )
    except Exception as exc:  # noqa: BLE001
        return CheckResult(target.name, target.kind, "error", f"{path}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------ seeding
def seed_subjects(
    dsn: str,
    catalog: Catalog,
    *,
    subject_types: Iterable[str] = ("customer",),
    count: int = 1,
    delay: timedelta = DEFAULT_DELAY,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Create ``count`` canaries per subject type and seed all their non-warehouse targets.

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
                cur.execute(
                    """SELECT subject_id FROM erasure.canary_subject
                        WHERE subject_type = %s AND details ->> 'run_id' = %s AND requested_at IS NULL
                        ORDER BY created_at""",
                    (st, run_id),
                )
                existing = [r["subject_id"] for r in cur.fetchall()]
        for sid in existing[:count]:
            out.append(reseed(dsn, catalog, sid, client=client, raise_on_error=False))
        for _ in range(count - len(existing[:count])):
            sid = new_subject_id(catalog, st)
            with transaction(dsn) as cur:
                cur.execute(
                    """INSERT INTO erasure.canary_subject (subject_id, subject_type, created_at, erase_after, details)
                       VALUES (%s, %s, %s, %s, %s::jsonb)""",
                    (
                        sid,
                        st,
                        now,
                        now + delay,
                        json.dumps({"run_id": run_id, "delay_s": delay.total_seconds()}),
                    ),
                )
            out.append(reseed(dsn, catalog, sid, client=client, raise_on_error=False))
    errors = [e for s in out for e in s["errors"]]
    if errors:
        raise CanaryError("canary seeding failed for: " + "; ".join(errors))
    return out


def reseed(
    dsn: str,
    catalog: Catalog,
    subject_id: str,
    *,
    client: httpx.Client | None = None,
    raise_on_error: bool = True,
) -> dict[str, Any]:
    """Seed the non-warehouse targets of one canary that have no ``canary_check`` row yet (idempotent)."""
    with transaction(dsn) as cur:
        cur.execute("SELECT subject_type FROM erasure.canary_subject WHERE subject_id=%s", (subject_id,))
        row = cur.fetchone()
        if row is None:
            raise CanaryError(f"subject_id: {subject_id} is not a canary subject")
        cur.execute("SELECT target FROM erasure.canary_check WHERE subject_id=%s", (subject_id,))
        done = {r["target"] for r in cur.fetchall()}
    st = row["subject_type"]
    http = _http(client)
    seeded, pending_wh, errors = [], [], []
    try:
        for t in canary_targets(catalog, st):
            if t.name in done:
                seeded.append(t.name)
                continue
            if t.kind == "warehouse_delta":
                pending_wh.append(t.name)
                continue
            try:
                if t.kind in ("sync_api", "kafka"):
                    detail = _seed_http(http, t, subject_id, st)
                else:
                    detail = _seed_postgres(t, subject_id)
            except CanaryError as exc:
                errors.append(str(exc))
                continue
            _record_seeded(dsn, subject_id, [t.name], detail)
            seeded.append(t.name)
    finally:
        if client is None:
            http.close()
    if errors:
        with transaction(dsn) as cur:
            cur.execute(
                """UPDATE erasure.canary_subject
                      SET details = details || jsonb_build_object('seed_errors', %s::jsonb)
                    WHERE subject_id=%s""",
                (json.dumps(errors), subject_id),
            )
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
            cur.execute(
                """INSERT INTO erasure.canary_check (subject_id, target, seeded_at, detail)
                   VALUES (%s, %s, now(), %s)
                   ON CONFLICT (subject_id, target) DO NOTHING""",
                (subject_id, t, f"seeded: {detail}"),
            )


def seed_warehouse(
    spark: SparkSession,
    dsn: str,
    catalog: Catalog,
    subject_ids: Iterable[str] | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, int]:
    """Append one test row per canary to every warehouse table of its subject type not yet seeded.

    ``subject_ids`` defaults to every unrequested canary missing a warehouse check. Returns rows
    appended per target. One append (one Delta commit) per table.
    """
    now = now or datetime.now(UTC)
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT s.subject_id, s.subject_type, COALESCE(array_agg(c.target) FILTER (WHERE c.target IS NOT NULL), '{}') AS done
                 FROM erasure.canary_subject s LEFT JOIN erasure.canary_check c USING (subject_id)
                WHERE s.requested_at IS NULL AND (%s::text[] IS NULL OR s.subject_id = ANY(%s::text[]))
                GROUP BY s.subject_id, s.subject_type""",
            (list(subject_ids) if subject_ids is not None else None,) * 2,
        )
        subjects = cur.fetchall()
    todo: dict[str, list[str]] = {}
    for s in subjects:
        for t in canary_targets(catalog, s["subject_type"]):
            if t.kind == "warehouse_delta" and t.name not in s["done"]:
                todo.setdefault(t.name, []).append(s["subject_id"])
    appended: dict[str, int] = {}
    errors = []
    for name, sids in todo.items():
        t = catalog.target(name)
        try:
            appended[name] = _warehouse_rows(spark, t, sids, now)
        except CanaryError as exc:
            errors.append(str(exc))
            continue
        for sid in sids:
            _record_seeded(dsn, sid, [name], f"appended 1 test row to {t.warehouse_delta.table}")  # type: ignore[union-attr]
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
        cur.execute(
            """SELECT subject_id, subject_type FROM erasure.canary_subject
                WHERE requested_at IS NULL AND erase_after <= %s ORDER BY created_at""",
            (now,),
        )
        due = cur.fetchall()
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
            cur.execute(
                "UPDATE erasure.request SET is_canary = true WHERE id=%s AND NOT is_canary", (request_id,)
            )
            cur.execute(
                """UPDATE erasure.canary_subject SET request_id=%s, requested_at=%s
                    WHERE subject_id=%s AND requested_at IS NULL""",
                (request_id, now, s["subject_id"]),
            )
        filed.append({"subject_id": s["subject_id"], "request_id": request_id})
    return filed


# ------------------------------------------------------------------------------- verification
def verify_subjects(
    dsn: str,
    catalog: Catalog,
    *,
    spark: SparkSession | None = None,
    now: datetime | None = None,
    timeout: timedelta = DEFAULT_VERIFY_TIMEOUT,
    client: httpx.Client | None = None,
    subject_ids: Iterable[str] | None = None,
    alert: bool = True,
) -> list[SubjectResult]:
    """Check every requested, unverified canary whose request is finished (or timed out).

    Per target: ``pass`` (data gone), ``fail`` (still there: alert to the owning team) or
    ``error`` (could not check: left open, retried next run, failed at the timeout). Warehouse
    targets need ``spark``; without it they stay open.
    """
    now = now or datetime.now(UTC)
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT s.subject_id, s.subject_type, s.request_id, s.requested_at, s.details,
                      r.status AS request_status, r.status_reason
                 FROM erasure.canary_subject s LEFT JOIN erasure.request r ON r.id = s.request_id
                WHERE s.requested_at IS NOT NULL AND s.verified_at IS NULL
                  AND (%s::text[] IS NULL OR s.subject_id = ANY(%s::text[]))
                ORDER BY s.created_at""",
            (list(subject_ids) if subject_ids is not None else None,) * 2,
        )
        subjects = cur.fetchall()
    http = _http(client)
    results = []
    try:
        for s in subjects:
            finished = s["request_status"] in ("completed", "failed", "rejected")
            timed_out = s["requested_at"] + timeout <= now
            if not (finished or timed_out):
                results.append(
                    SubjectResult(
                        s["subject_id"], s["subject_type"], s["request_id"], s["request_status"], None
                    )
                )
                continue
            results.append(_verify_one(dsn, catalog, s, http, spark, now, timed_out, alert))
    finally:
        if client is None:
            http.close()
    return results


def _verify_one(
    dsn: str,
    catalog: Catalog,
    s: dict[str, Any],
    http: httpx.Client,
    spark: SparkSession | None,
    now: datetime,
    timed_out: bool,
    alert: bool,
) -> SubjectResult:
    sid = s["subject_id"]
    with transaction(dsn) as cur:
        cur.execute("SELECT target, passed FROM erasure.canary_check WHERE subject_id=%s", (sid,))
        checks = {r["target"]: r["passed"] for r in cur.fetchall()}
    res = SubjectResult(sid, s["subject_type"], s["request_id"], s["request_status"], None)
    seed_errors = (s["details"] or {}).get("seed_errors", [])
    for t in canary_targets(catalog, s["subject_type"]):
        if t.name not in checks:
            err = next((e for e in seed_errors if f"'{t.name}'" in e), "no seed record")
            res.checks.append(CheckResult(t.name, t.kind, "fail", f"never seeded ({err}); nothing to verify"))
            continue
        if checks[t.name] is not None:  # decided by an earlier (partial) run
            res.checks.append(
                CheckResult(t.name, t.kind, "pass" if checks[t.name] else "fail", "verified earlier")
            )
            continue
        if t.kind in ("sync_api", "kafka"):
            c = _lookup(http, t, sid)
        elif t.kind == "postgres_table":
            c = _check_postgres(t, sid)
        elif spark is not None:
            c = _check_warehouse(spark, t, sid)
        else:
            c = CheckResult(t.name, t.kind, "error", "no Spark session given: warehouse not checked")
        if c.outcome == "error" and timed_out:
            c = CheckResult(c.target, c.kind, "fail", f"could not verify before the timeout: {c.detail}")
        res.checks.append(c)
    open_checks = [c for c in res.checks if c.outcome == "error"]
    request_ok = s["request_status"] == "completed"
    with transaction(dsn) as cur:
        for c in res.checks:
            if c.detail == "verified earlier":
                continue
            cur.execute(
                """INSERT INTO erasure.canary_check (subject_id, target, seeded_at, verified_at, passed, detail)
                   VALUES (%(s)s, %(t)s, %(now)s, %(v)s, %(p)s, %(d)s)
                   ON CONFLICT (subject_id, target) DO UPDATE
                      SET verified_at = EXCLUDED.verified_at, passed = EXCLUDED.passed, detail = EXCLUDED.detail
                    WHERE erasure.canary_check.passed IS NULL""",
                {
                    "s": sid,
                    "t": c.target,
                    "now": now,
                    "v": None if c.outcome == "error" else now,
                    "p": c.passed,
                    "d": c.detail[:2000],
                },
            )
        if open_checks:
            return res  # decided next run (or at the timeout)
        failed = [c for c in res.checks if c.outcome == "fail"]
        res.result = "pass" if not failed and request_ok else "fail"
        summary = {
            "request_status": s["request_status"],
            "failed_targets": [c.target for c in failed],
            "checks": {c.target: {"outcome": c.outcome, "detail": c.detail} for c in res.checks},
        }
        cur.execute(
            """UPDATE erasure.canary_subject SET verified_at=%s, result=%s, details = details || %s::jsonb
                WHERE subject_id=%s AND verified_at IS NULL""",
            (now, res.result, json.dumps({"verification": summary}), sid),
        )
    if alert and res.result == "fail":
        for c in failed:
            t = catalog.target(c.target)
            res.alerts.append(
                raise_alert(
                    dsn,
                    catalog,
                    team=t.owner,
                    kind="canary_failed",
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
                    team=catalog.pipeline_owner,
                    kind="canary_request_incomplete",
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
) -> str:
    """Alert ``team`` on its catalog channel: recorded in ``erasure.alert`` (deduplicated on
    ``dedupe_key``: a re-run never alerts twice for the same canary and target), then delivered at
    once through ``erasure.alerts`` (an undelivered alert is retried by the reconcile DAG)."""
    try:
        from erasure import alerts as _alerts
    except ImportError:  # pragma: no cover - alerts module is part of the package
        _alerts = None  # type: ignore[assignment]
    with transaction(dsn) as cur:
        if _alerts is not None and hasattr(_alerts, "raise_team_alert"):
            _alerts.raise_team_alert(
                cur,
                catalog,
                team=team,
                dedupe_key=dedupe_key,
                kind=kind,
                message=message,
                request_id=request_id,
                target=target,
                details=details,
            )
        else:
            cur.execute(
                """INSERT INTO erasure.alert (dedupe_key, kind, team, channel, request_id, target, message, details)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (dedupe_key) DO NOTHING""",
                (
                    dedupe_key,
                    kind,
                    team,
                    catalog.team(team).channel,
                    request_id,
                    target,
                    message,
                    json.dumps(details, default=str),
                ),
            )
    log.error("canary alert to team %s: %s", team, message)
    if _alerts is not None and hasattr(_alerts, "deliver_pending"):
        try:
            _alerts.deliver_pending(dsn, dedupe_keys=[dedupe_key])
        except Exception as exc:  # noqa: BLE001 - delivery is retried by the reconcile DAG
            log.warning("canary alert %s recorded, delivery deferred: %s", dedupe_key, exc)
    return dedupe_key


# ------------------------------------------------------------------------------------ summary
def summary(dsn: str, limit: int = 50) -> list[dict[str, Any]]:
    """Latest canaries with their per-target checks (for reports and the demo)."""
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT s.subject_id, s.subject_type, s.created_at, s.erase_after, s.request_id, s.requested_at,
                      s.verified_at, s.result,
                      COALESCE(jsonb_object_agg(c.target, jsonb_build_object('passed', c.passed, 'detail', c.detail))
                               FILTER (WHERE c.target IS NOT NULL), '{}'::jsonb) AS checks
                 FROM erasure.canary_subject s LEFT JOIN erasure.canary_check c USING (subject_id)
                GROUP BY s.subject_id ORDER BY s.created_at DESC LIMIT %s""",
            (limit,),
        )
        return [dict(r) for r in cur.fetchall()]


def describe_failure(r: SubjectResult) -> str:
    bad = [f"{c.target} ({c.detail})" for c in r.checks if c.outcome == "fail"]
    return f"{r.subject_id}: " + (", ".join(bad) if bad else f"request {r.request_id} is {r.request_status}")


def warehouse_seeding_pending(dsn: str, catalog: Catalog) -> bool:
    """Whether some unrequested canary still lacks a row in one of its warehouse tables."""
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT s.subject_type, COALESCE(array_agg(c.target) FILTER (WHERE c.target IS NOT NULL), '{}') AS done
                 FROM erasure.canary_subject s LEFT JOIN erasure.canary_check c USING (subject_id)
                WHERE s.requested_at IS NULL GROUP BY s.subject_id, s.subject_type"""
        )
        rows = cur.fetchall()
    return any(
        t.kind == "warehouse_delta" and t.name not in r["done"]
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
        cur.execute(
            """SELECT DISTINCT s.subject_type
                 FROM erasure.canary_subject s LEFT JOIN erasure.request r ON r.id = s.request_id
                WHERE s.requested_at IS NOT NULL AND s.verified_at IS NULL
                  AND (r.status IN ('completed', 'failed', 'rejected') OR s.requested_at + %s <= %s)""",
            (timeout, now),
        )
        types = [r["subject_type"] for r in cur.fetchall()]
    if not needs_spark:
        return bool(types)
    return any(t.kind == "warehouse_delta" for st in types for t in canary_targets(catalog, st))
