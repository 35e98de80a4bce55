"""Kind ``postgres_table``: rows of a PostgreSQL table owned by another team, deleted by the dispatch DAG.

* erase: one ``DELETE FROM <table> WHERE <key> = ANY(%s) RETURNING <key>`` per batch, in one
  transaction; rows deleted per subject are the evidence (0 = already gone).
* verify: ``SELECT count(*) ... WHERE <key> = %s`` is 0. After each batch's DELETE the same count, in
  the same transaction, is every task's ``evidence.verification`` (rows left: the task fails).
* test subjects: one ``INSERT`` per canary with a recognisable value in every column without a default
  (the table's own ``is_test``/``is_canary`` boolean set when it has one).

The DSN comes from the environment variable the catalog names (``dsn_env``; in production an Airflow
connection URI exported to the workers), never from the catalog itself.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import psycopg2
from psycopg2 import sql
from pydantic import Field

from erasure.settings import secret_from_env
from erasure.targets.base import (
    CheckResult,
    Claimed,
    Context,
    Outcome,
    OutcomeSink,
    Spec,
    TargetAdapter,
    TargetError,
    generic_summary,
    marker,
    marker_date,
    verification,
)
from erasure.targets.registry import register
from erasure.vocab import (
    CheckOutcome,
    DeleteOutcome,
    Runner,
    TargetKind,
    VerificationOutcome,
    WarehouseStage,
)

if TYPE_CHECKING:
    from erasure.catalog import Target

TABLE_RE = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$"


class PostgresTableSpec(Spec):
    dsn_env: str = "ERASURE_TRACKING_DSN"
    """Environment variable with the DSN (an Airflow connection URI in production)."""
    table: Annotated[str, Field(pattern=TABLE_RE)]
    key_column: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

    def schema_and_name(self) -> tuple[str, str]:
        schema, _, name = self.table.rpartition(".")
        return schema or "public", name


def _value(subject_id: str, column: str, data_type: str) -> Any:
    """A recognisable test value for a column of ``data_type``."""
    t = data_type.lower()
    if t in ("integer", "bigint", "smallint", "numeric", "real", "double precision"):
        return 0
    if t == "boolean":
        return False
    if t == "date":
        return marker_date(subject_id, column)
    if t.startswith("timestamp"):
        return datetime.now(UTC)
    if t in ("json", "jsonb"):
        return json.dumps({"canary": True})
    if t == "uuid":
        return str(uuid.uuid4())
    return marker(subject_id, column)


@register
class PostgresTableAdapter(TargetAdapter):
    kind: ClassVar[str] = TargetKind.POSTGRES_TABLE
    spec_model = PostgresTableSpec
    runner = Runner.DISPATCH
    default_batch_size = 1000

    def _spec(self, target: Target) -> PostgresTableSpec:
        return target.spec_as(PostgresTableSpec)

    def dsn(self, target: Target) -> str:
        spec = self._spec(target)
        return secret_from_env(spec.dsn_env, f"target '{target.name}': postgres_table.dsn_env")

    def _connect(self, target: Target) -> Any:
        return psycopg2.connect(self.dsn(target), application_name="erasure-pipeline")

    def erase_batch(
        self, ctx: Context, target: Target, items: Sequence[Claimed], sink: OutcomeSink
    ) -> list[Outcome]:
        spec = self._spec(target)
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        base_ev = {"kind": self.kind, "table": spec.table, "key_column": spec.key_column, "at": at}
        error: Exception | None = None
        permanent = False
        counts: dict[str, int] = {}
        left: dict[str, int] = {}
        not_verifiable = self.not_verifiable(target)
        stmt = sql.SQL("DELETE FROM {} WHERE {} = ANY(%s) RETURNING {}").format(
            sql.Identifier(*spec.table.split(".")),
            sql.Identifier(spec.key_column),
            sql.Identifier(spec.key_column),
        )
        count_stmt = sql.SQL("SELECT {}, count(*) FROM {} WHERE {} = ANY(%s) GROUP BY 1").format(
            sql.Identifier(spec.key_column),
            sql.Identifier(*spec.table.split(".")),
            sql.Identifier(spec.key_column),
        )
        method = f"row count in {spec.table} by {spec.key_column}, after the DELETE (same transaction)"
        try:
            conn = self._connect(target)
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(stmt, ([c.subject_id for c in items],))
                    for (key,) in cur.fetchall():
                        counts[str(key)] = counts.get(str(key), 0) + 1
                    if not_verifiable is None:  # verification: count what is left, same transaction
                        cur.execute(count_stmt, ([c.subject_id for c in items],))
                        left = {str(k): int(n) for k, n in cur.fetchall()}
            finally:
                conn.close()
        except psycopg2.Error as exc:
            error = exc
            permanent = isinstance(exc, psycopg2.ProgrammingError | psycopg2.DataError)
        except Exception as exc:  # noqa: BLE001 - e.g. the DSN variable is not set: fail the batch, retry later
            error = exc
        outcomes = []
        for c in items:
            if error is None:
                n = counts.get(c.subject_id, 0)
                outcome = DeleteOutcome.DELETED if n else DeleteOutcome.ALREADY_GONE
                ev = {**base_ev, "attempt": c.attempt, "rows_deleted": n, "outcome": outcome}
                rest = left.get(c.subject_id, 0)
                if not_verifiable is not None:
                    ver = not_verifiable
                elif rest == 0:
                    ver = verification(VerificationOutcome.VERIFIED, method, "0 rows")
                else:
                    ver = verification(VerificationOutcome.FAILED, method, f"{rest} row(s) still there")
                ev["verification"] = ver
                ok = ver["outcome"] != VerificationOutcome.FAILED
                o = Outcome(
                    c,
                    ok,
                    ev,
                    stage=WarehouseStage.DELETED if ok else None,
                    error=None if ok else f"verification failed: {rest} row(s) still in {spec.table}",
                )
            else:
                msg = f"{type(error).__name__}: {str(error).strip()}"
                outcome = DeleteOutcome.PERMANENT_FAILURE if permanent else DeleteOutcome.RETRYABLE_FAILURE
                o = Outcome(
                    c,
                    False,
                    {**base_ev, "attempt": c.attempt, "outcome": outcome},
                    error=msg,
                    permanent=permanent,
                )
            outcomes.append(o)
            sink(o)
        if error is not None and not isinstance(error, psycopg2.Error):
            raise TargetError(f"target '{target.name}': {error}") from error
        return outcomes

    def _count(self, target: Target, subject_id: str) -> int:
        spec = self._spec(target)
        conn = self._connect(target)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                        sql.Identifier(*spec.schema_and_name()), sql.Identifier(spec.key_column)
                    ),
                    (subject_id,),
                )
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def verify(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        table = self._spec(target).table
        try:
            n = self._count(target, subject_id)
        except Exception as exc:  # noqa: BLE001 - any failure to look is 'could not check'
            return self.check(target, CheckOutcome.ERROR, f"{table}: {type(exc).__name__}: {exc}")
        if n == 0:
            return self.check(target, CheckOutcome.PASS, f"{table}: 0 rows")
        return self.check(target, CheckOutcome.FAIL, f"{table}: {n} row(s) still there")

    def seed_test_subjects(
        self, ctx: Context, target: Target, subjects: Sequence[tuple[str, str]]
    ) -> dict[str, str]:
        spec = self._spec(target)
        schema, name = spec.schema_and_name()
        tbl = sql.Identifier(schema, name)
        out: dict[str, str] = {}
        try:
            conn = self._connect(target)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"target '{target.name}': cannot connect: {exc}") from exc
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    """SELECT column_name, data_type, column_default
                         FROM information_schema.columns WHERE table_schema=%s AND table_name=%s
                        ORDER BY ordinal_position""",
                    (schema, name),
                )
                cols = cur.fetchall()
                if not cols:
                    raise TargetError(f"target '{target.name}': table {spec.table} does not exist")
                if spec.key_column not in {c[0] for c in cols}:
                    raise TargetError(
                        f"target '{target.name}': table {spec.table} has no key column '{spec.key_column}'"
                    )
                for subject_id, _ in subjects:
                    values: dict[str, Any] = {spec.key_column: subject_id}
                    for col, dtype, default in cols:
                        if col in ("is_test", "is_canary") and dtype == "boolean":
                            values[col] = True  # the owner's own marker for test data, when it has one
                        elif col not in values and default is None:
                            values[col] = _value(subject_id, col, dtype)
                    cur.execute(
                        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                            tbl, sql.Identifier(spec.key_column)
                        ),
                        (subject_id,),
                    )
                    if cur.fetchone()[0]:
                        raise TargetError(
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
                    out[subject_id] = f"INSERT INTO {spec.table} ({len(values)} columns)"
        except psycopg2.Error as exc:
            raise TargetError(f"target '{target.name}': {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        return out

    def evidence_summary(self, evidence: dict[str, Any]) -> str:
        if "rows_deleted" not in evidence:
            return generic_summary(evidence)
        return f"{evidence['outcome']}: {evidence['rows_deleted']} row(s) from {evidence.get('table')}"
