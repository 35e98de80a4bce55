"""Kind ``postgres_table``: rows of a PostgreSQL table owned by another team, deleted by the dispatch DAG.

* erase: per batch, in one transaction, the subjects' rows (any of ``key_columns`` holds the id) are
  counted and locked, then deleted (mode ``delete``) or updated in place by each column's strategy
  (mode ``mask``: ``null``, ``constant``, ``mask``, ``hash`` = keyed pseudonym written with
  PostgreSQL's own SHA-256, :mod:`erasure.pseudonym`); rows per subject and the strategy per column
  are the evidence (0 = already gone / already erased).
* verify: the same count (rows left; mode mask: rows whose fields are not in erased form) is 0.
  After each batch that count, in the same transaction, is every task's ``evidence.verification``
  (rows left: the task fails).
* test subjects: one ``INSERT`` per canary with a recognisable value in every column without a default
  (the table's own ``is_test``/``is_canary`` boolean set when it has one).

The DSN comes from the environment variable the catalog names (``dsn_env``; in production an Airflow
connection URI exported to the workers), never from the catalog itself.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import psycopg2
from psycopg2 import sql
from pydantic import Field

from erasure.pseudonym import PREFIX, hmac_pads
from erasure.settings import secret_from_env
from erasure.targets.base import (
    CheckResult,
    Claimed,
    Context,
    Outcome,
    OutcomeSink,
    TargetAdapter,
    TargetError,
    generic_summary,
    marker,
    marker_date,
    verification,
)
from erasure.targets.fields import MASK_STRING, FieldRule, KeyedRowsSpec
from erasure.targets.registry import register
from erasure.vocab import (
    CheckOutcome,
    DeleteOutcome,
    FieldStrategy,
    Runner,
    TargetKind,
    VerificationOutcome,
    WarehouseStage,
)

if TYPE_CHECKING:
    from erasure.catalog import Resolver, Target

TABLE_RE = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$"


class PostgresTableSpec(KeyedRowsSpec):
    """The table, its key columns and how its rows/fields are erased (:class:`KeyedRowsSpec`)."""

    dsn_env: str = "ERASURE_TRACKING_DSN"
    """Environment variable with the DSN (an Airflow connection URI in production)."""
    table: Annotated[str, Field(pattern=TABLE_RE)]

    def schema_and_name(self) -> tuple[str, str]:
        schema, _, name = self.table.rpartition(".")
        return schema or "public", name


TEXT_TYPES = ("text", "character varying", "character", "citext")
PSEUDONYM_SQL_RE = "^" + PREFIX + "[0-9a-f]{64}$"


class _Sql:
    """The statements of one batch for a table whose column types are known (mode delete or mask)."""

    def __init__(self, spec: PostgresTableSpec, types: dict[str, str], pads: tuple[bytes, bytes] | None):
        self.spec = spec
        self.tbl = sql.Identifier(*spec.schema_and_name())
        self.rules = spec.rules()
        missing = [c for c in [*spec.key_columns, *self.rules] if c not in types]
        if missing:
            raise ValueError(f"table {spec.table} has no column(s) {missing} (columns: {sorted(types)})")
        for c, r in self.rules.items():
            if r.strategy == FieldStrategy.HASH and types[c] not in TEXT_TYPES:
                raise ValueError(f"table {spec.table}: column '{c}' is {types[c]}; strategy hash needs text")
        self.types = types
        self.params: dict[str, Any] = {}
        if pads is not None:
            self.params.update(inner=psycopg2.Binary(pads[0]), outer=psycopg2.Binary(pads[1]))

    def _param(self, value: Any) -> sql.Composable:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def match(self) -> sql.Composable:
        """The row holds one of the batch's ids (``%(ids)s``) in any key column."""
        return sql.SQL("({})").format(
            sql.SQL(" OR ").join(
                sql.SQL("{}::text = ANY(%(ids)s)").format(sql.Identifier(k)) for k in self.spec.key_columns
            )
        )

    def not_erased(self) -> sql.Composable:
        """Mode mask: a column is not in the form its rule leaves (mode delete: every matched row)."""
        if self.spec.mode == "delete":
            return sql.SQL("TRUE")
        parts = []
        for c, r in self.rules.items():
            col = sql.Identifier(c)
            if r.strategy == FieldStrategy.NULL or (
                r.strategy == FieldStrategy.MASK and self.types[c] not in TEXT_TYPES
            ):
                parts.append(sql.SQL("{} IS NOT NULL").format(col))
            elif r.strategy == FieldStrategy.CONSTANT:
                parts.append(sql.SQL("{} IS DISTINCT FROM {}").format(col, self._param(r.value)))
            elif r.strategy == FieldStrategy.MASK:
                parts.append(sql.SQL("{} IS DISTINCT FROM {}").format(col, self._param(MASK_STRING)))
            else:  # hash
                parts.append(
                    sql.SQL("({0} IS NOT NULL AND {0} !~ {1})").format(col, self._param(PSEUDONYM_SQL_RE))
                )
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))

    def _value(self, c: str, r: FieldRule) -> sql.Composable:
        col = sql.Identifier(c)
        if r.strategy == FieldStrategy.NULL:
            return sql.SQL("NULL")
        if r.strategy == FieldStrategy.CONSTANT:
            return self._param(r.value)
        if r.strategy == FieldStrategy.MASK:
            return self._param(MASK_STRING) if self.types[c] in TEXT_TYPES else sql.SQL("NULL")
        if "inner" not in self.params:
            raise ValueError("strategy hash: no pseudonym key given")
        return sql.SQL(
            "CASE WHEN {0} IS NULL OR {0} ~ {1} THEN {0} ELSE {2} || encode(sha256(%(outer)s::bytea || "
            "sha256(%(inner)s::bytea || convert_to({0}::text, 'UTF8'))), 'hex') END"
        ).format(col, self._param(PSEUDONYM_SQL_RE), self._param(PREFIX))

    def hits(self) -> sql.Composable:
        """Per id: the matched rows still to erase, locked (``SELECT k, count(*) ... FOR UPDATE`` is not
        allowed with GROUP BY, so the rows are locked in a CTE first)."""
        keys = sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(k)) for k in self.spec.key_columns
        )
        return sql.SQL(
            "WITH hit AS (SELECT ARRAY[{keys}] AS ks FROM {tbl} WHERE {match} AND {todo} FOR UPDATE) "
            "SELECT k, count(*) FROM hit, LATERAL (SELECT DISTINCT unnest(hit.ks) AS k) u "
            "WHERE k = ANY(%(ids)s) GROUP BY k"
        ).format(keys=keys, tbl=self.tbl, match=self.match(), todo=self.not_erased())

    def erase(self) -> sql.Composable:
        if self.spec.mode == "delete":
            return sql.SQL("DELETE FROM {} WHERE {}").format(self.tbl, self.match())
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), self._value(c, r)) for c, r in self.rules.items()
        )
        return sql.SQL("UPDATE {} SET {} WHERE {} AND {}").format(
            self.tbl, sets, self.match(), self.not_erased()
        )


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
    can_resolve = True

    def _spec(self, target: Target) -> PostgresTableSpec:
        return target.spec_as(PostgresTableSpec)

    # -- identity resolution: a table that maps identifiers (docs/identity.md) --------------------
    @staticmethod
    def _resolver_columns(resolver: Resolver) -> dict[str, str]:
        """Identifier type -> column (``options.column.<type>``; default: the type's name)."""
        return {t: resolver.options.get(f"column.{t}", t) for t in (resolver.from_type, *resolver.to)}

    def check_resolver(self, target: Target, resolver: Resolver) -> None:
        allowed = {"table"} | {f"column.{t}" for t in (resolver.from_type, *resolver.to)}
        unknown = sorted(set(resolver.options) - allowed)
        if unknown:
            raise ValueError(f"options {unknown} are not known (allowed: {sorted(allowed)})")
        if not re.fullmatch(TABLE_RE, resolver.options.get("table", self._spec(target).table)):
            raise ValueError(f"options.table must match {TABLE_RE}")
        for col in self._resolver_columns(resolver).values():
            if not re.fullmatch(r"^[a-z_][a-z0-9_]{0,62}$", col):
                raise ValueError(f"column '{col}' is not a plain column name")

    def resolve(
        self, ctx: Context, target: Target, resolver: Resolver, values: Sequence[str]
    ) -> dict[str, dict[str, list[str]]]:
        """``SELECT from, to... FROM table WHERE from = ANY(values)``, one query per ``batch_size``."""
        table = resolver.options.get("table", self._spec(target).table)
        schema, _, name = table.rpartition(".")
        cols = self._resolver_columns(resolver)
        query = sql.SQL("SELECT {src}::text, {dst} FROM {tbl} WHERE {src}::text = ANY(%s)").format(
            src=sql.Identifier(cols[resolver.from_type]),
            dst=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(cols[t])) for t in resolver.to),
            tbl=sql.Identifier(schema or "public", name),
        )
        out: dict[str, dict[str, list[str]]] = {}
        conn = self._connect(target)
        try:
            with conn, conn.cursor() as cur:
                for start in range(0, len(values), resolver.batch_size):
                    cur.execute(query, (list(values[start : start + resolver.batch_size]),))
                    for row in cur.fetchall():
                        found = out.setdefault(str(row[0]), {})
                        for t, v in zip(resolver.to, row[1:], strict=True):
                            if v is not None and v not in found.setdefault(t, []):
                                found[t].append(v)
        finally:
            conn.close()
        return out

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
        base_ev = {
            "kind": self.kind,
            "table": spec.table,
            "key_columns": spec.key_columns,
            "strategies": spec.strategies(),
            "at": at,
        }
        error: Exception | None = None
        permanent = False
        counts: dict[str, int] = {}
        left: dict[str, int] = {}
        not_verifiable = self.not_verifiable(target)
        ids = [c.subject_id for c in items]
        what = "rows" if spec.mode == "delete" else "rows not erased"
        method = f"count of {what} in {spec.table} by {', '.join(spec.key_columns)}, after the erasure (same transaction)"
        try:
            pads = (
                hmac_pads(self._pseudonym_key(ctx))
                if FieldStrategy.HASH in spec.strategies().values()
                else None
            )
            conn = self._connect(target)
            try:
                with conn, conn.cursor() as cur:
                    q = _Sql(spec, self._types(cur, spec), pads)
                    hits, erase = q.hits(), q.erase()
                    params = {**q.params, "ids": ids}
                    cur.execute(hits, params)
                    counts = {str(k): int(n) for k, n in cur.fetchall()}
                    cur.execute(erase, params)
                    if not_verifiable is None:  # verification: count what is left, same transaction
                        cur.execute(hits, params)
                        left = {str(k): int(n) for k, n in cur.fetchall()}
            finally:
                conn.close()
        except psycopg2.Error as exc:
            error = exc
            permanent = isinstance(exc, psycopg2.ProgrammingError | psycopg2.DataError)
        except ValueError as exc:  # the table does not fit the catalog (missing column, hash on non-text)
            error, permanent = exc, True
        except Exception as exc:  # noqa: BLE001 - e.g. the DSN variable is not set: fail the batch, retry later
            error = exc
        outcomes = []
        for c in items:
            if error is None:
                n = counts.get(c.subject_id, 0)
                outcome = DeleteOutcome.DELETED if n else DeleteOutcome.ALREADY_GONE
                rows_key = "rows_deleted" if spec.mode == "delete" else "rows_masked"
                ev = {**base_ev, "attempt": c.attempt, rows_key: n, "outcome": outcome}
                rest = left.get(c.subject_id, 0)
                if not_verifiable is not None:
                    ver = not_verifiable
                elif rest == 0:
                    ver = verification(VerificationOutcome.VERIFIED, method, f"0 {what}")
                else:
                    ver = verification(VerificationOutcome.FAILED, method, f"{rest} {what} still there")
                ev["verification"] = ver
                ok = ver["outcome"] != VerificationOutcome.FAILED
                o = Outcome(
                    c,
                    ok,
                    ev,
                    stage=WarehouseStage.DELETED if ok else None,
                    error=None if ok else f"verification failed: {rest} {what} still in {spec.table}",
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
        if error is not None and not isinstance(error, psycopg2.Error | ValueError):
            raise TargetError(f"target '{target.name}': {error}") from error
        return outcomes

    @staticmethod
    def _types(cur: Any, spec: PostgresTableSpec) -> dict[str, str]:
        cur.execute(
            """SELECT column_name, data_type FROM information_schema.columns
                WHERE table_schema = %s AND table_name = %s""",
            spec.schema_and_name(),
        )
        types = {str(c): str(t) for c, t in cur.fetchall()}
        if not types:  # let PostgreSQL say it (UndefinedTable, or no privilege): a permanent failure
            cur.execute(sql.SQL("SELECT 1 FROM {} LIMIT 0").format(sql.Identifier(*spec.schema_and_name())))
            raise ValueError(f"table {spec.table}: no columns visible to this role")
        return types

    @staticmethod
    def _pseudonym_key(ctx: Context) -> bytes:
        from erasure.pseudonym import load_key

        return load_key(ctx.settings.pseudonym_key_path)

    def _count(self, target: Target, subject_id: str) -> int:
        """Rows of the subject still to erase (mode mask: rows whose fields are not in erased form)."""
        spec = self._spec(target)
        conn = self._connect(target)
        try:
            with conn, conn.cursor() as cur:
                q = _Sql(spec, self._types(cur, spec), None)
                cur.execute(q.hits(), {**q.params, "ids": [subject_id]})
                return sum(int(n) for _, n in cur.fetchall())
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
                    values: dict[str, Any] = dict.fromkeys(spec.key_columns, subject_id)
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
        if "rows_deleted" in evidence:
            return f"{evidence['outcome']}: {evidence['rows_deleted']} row(s) from {evidence.get('table')}"
        if "rows_masked" in evidence:
            fields = ", ".join(f"{c}={s}" for c, s in (evidence.get("strategies") or {}).items())
            return f"{evidence['rows_masked']} row(s) of {evidence.get('table')} erased in place ({fields})"
        return generic_summary(evidence)
