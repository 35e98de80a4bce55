"""Kind ``warehouse_delta``: a Delta table in the warehouse, erased by the ``erasure_warehouse`` Spark job.

* erase: ONE batched ``MERGE ... WHEN MATCHED THEN DELETE`` (or the field strategies of mode ``mask``) for all
  the run's subjects of the table; then ``REORG ... APPLY (PURGE)`` and ``VACUUM`` once the retention
  has passed (the stage machine and the Delta operations are in :mod:`erasure.warehouse`; this
  adapter is the batched delete step and the kind's lookups).
* verify: no row for the subject at the latest version (mask mode: every field in its erased form).
* test subjects: one appended row per canary with recognisable values (one Delta commit per table).

Every operation needs a Spark session in its context (``needs_spark``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, model_validator

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
)
from erasure.targets.fields import KeyedRowsSpec
from erasure.targets.registry import register
from erasure.vocab import CheckOutcome, Runner, TargetKind, WarehouseStage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from erasure.catalog import Target

NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"
TABLE_RE = r"^[a-z][a-z0-9_]{0,62}(\.[a-z][a-z0-9_]{0,62})?$"


class WarehouseDeltaSpec(KeyedRowsSpec):
    """The table, its key columns and how its rows/fields are erased (:class:`KeyedRowsSpec`).

    A table is addressed by ``path`` (a Delta table's directory), or, without ``path``, by its name in
    the Spark catalog: ``table: <database>.<name>`` (the Hive metastore the ``spark_metastore_database``
    setting names; :func:`erasure.warehouse.table_location` looks its location up at run time)."""

    table: Annotated[str, Field(pattern=TABLE_RE)]
    """The table's name in reports; with no ``path`` its ``<database>.<name>`` in the Spark catalog."""
    path: str | None = None
    """Table location; relative paths resolve against the ``warehouse_dir`` setting."""
    deletion_vectors: bool = False
    retention_hours: Annotated[int, Field(ge=0)] = 168
    """VACUUM retention; 0 purges old files at once (time travel to pre-erasure versions ends)."""
    log_retention_days: Annotated[int, Field(ge=7, le=30)] = 7
    """``delta.logRetentionDuration`` the erasure job sets: older ``_delta_log`` files (whose file
    statistics may name a subject) are removed at the next checkpoint, well within the legal SLA.
    At least 7: Delta refuses a log retention shorter than ``delta.deletedFileRetentionDuration``
    (7 days by default; the job leaves it alone, so time travel behaves as the table's owners expect)."""

    @model_validator(mode="after")
    def _addressed(self) -> WarehouseDeltaSpec:
        if self.path is None and "." not in self.table:
            raise ValueError(
                f"table '{self.table}': give path (a Delta table's directory), or table as "
                "<database>.<name> (a table in the Spark catalog)"
            )
        return self

    @property
    def catalog_name(self) -> str | None:
        """``<database>.<name>`` when the table is addressed through the Spark catalog, else None."""
        return self.table if self.path is None else None

    def resolved_path(self, warehouse_dir: str | os.PathLike[str] | None = None) -> str:
        """The table's location: ``path`` itself when absolute or a URI, else under ``warehouse_dir``
        (default: the ``warehouse_dir`` setting). A table by name has no path here: use
        :func:`erasure.warehouse.table_location` (it asks the Spark catalog)."""
        if self.path is None:
            raise ValueError(
                f"table '{self.table}' is addressed by name: its location is in the Spark catalog"
            )
        if "://" in self.path or os.path.isabs(self.path):
            return self.path
        if warehouse_dir is None:
            from erasure.settings import get_settings

            warehouse_dir = get_settings().warehouse_path
        return str(Path(warehouse_dir) / self.path)


def _spark_value(subject_id: str, column: str, dtype: Any, now: datetime) -> Any:
    from pyspark.sql import types as T

    if isinstance(dtype, T.StringType):
        return marker(subject_id, column)
    if isinstance(dtype, T.DateType):
        return marker_date(subject_id, column)
    if isinstance(dtype, T.TimestampNTZType):
        return now.replace(tzinfo=None)
    if isinstance(dtype, T.TimestampType):
        return now
    if isinstance(dtype, T.BooleanType):
        return False
    if isinstance(dtype, T.IntegralType):
        return 0
    if isinstance(dtype, T.DecimalType):
        return Decimal(0)
    if isinstance(dtype, T.FractionalType):
        return 0.0
    return None


@register
class WarehouseDeltaAdapter(TargetAdapter):
    kind: ClassVar[str] = TargetKind.WAREHOUSE_DELTA
    spec_model = WarehouseDeltaSpec
    runner = Runner.SPARK
    needs_spark = True
    default_batch_size = 1_000_000

    def spec(self, target: Target) -> WarehouseDeltaSpec:
        return target.spec_as(WarehouseDeltaSpec)

    def _path(self, ctx: Context, target: Target) -> str:
        from erasure.warehouse import table_location

        return table_location(ctx.require_spark(target), self.spec(target), str(ctx.settings.warehouse_path))

    def erase_batch(
        self, ctx: Context, target: Target, items: Sequence[Claimed], sink: OutcomeSink
    ) -> list[Outcome]:
        """One batched MERGE for all ``items``; each outcome is stage ``deleted`` with the commit's
        evidence (purge and vacuum follow in :func:`erasure.warehouse.erase_target`)."""
        from erasure.warehouse import delete_evidence, delete_subjects, pseudonym_key_for

        spec = self.spec(target)
        res = delete_subjects(
            ctx.require_spark(target),
            spec,
            [c.subject_id for c in items],
            warehouse_dir=str(ctx.settings.warehouse_path),
            user_metadata=ctx.extra.get("user_metadata"),
            pseudonym_key=pseudonym_key_for(spec, ctx.settings),
        )
        ev = {**delete_evidence(res, len({c.subject_id for c in items})), "strategies": spec.strategies()}
        outcomes = [Outcome(c, True, dict(ev), stage=WarehouseStage.DELETED) for c in items]
        for o in outcomes:
            sink(o)
        return outcomes

    def _frame(self, ctx: Context, target: Target, subject_id: str) -> Any:
        from pyspark.sql import functions as F

        spark = ctx.require_spark(target)
        spec = self.spec(target)
        df = spark.read.format("delta").load(self._path(ctx, target))
        match = F.lit(False)
        for k in spec.key_columns:
            match = match | (F.col(k).cast("string") == subject_id)
        return df.where(match)

    def verify(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        """At the latest version: no row for the subject in any key column (mask mode: every rule's
        column in its erased form).

        The erasure job verifies more (:func:`erasure.warehouse.verify_erased` with the version before
        the delete, which must be unreadable once vacuumed) before a task may succeed."""
        from erasure.warehouse import verify_erased

        spec = self.spec(target)
        verdict = verify_erased(
            ctx.require_spark(target),
            spec,
            [subject_id],
            before_version=None,
            warehouse_dir=str(ctx.settings.warehouse_path),
        )[str(subject_id)]
        outcome = {True: CheckOutcome.PASS, False: CheckOutcome.FAIL, None: CheckOutcome.ERROR}[verdict.ok]
        return self.check(target, outcome, verdict.answer)

    def check_test_subject(self, ctx: Context, target: Target, subject_id: str) -> CheckResult:
        """Delete mode: no row. Mask mode: the row may stay, the seeded values must not."""
        spec = self.spec(target)
        if spec.mode == "delete":
            return self.verify(ctx, target, subject_id)
        cols = list(spec.rules())
        try:
            rows = self._frame(ctx, target, subject_id).select(*cols).collect()
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001
            return self.check(
                target, CheckOutcome.ERROR, f"{self._path(ctx, target)}: {type(exc).__name__}: {exc}"
            )
        seeded = {c: (subject_id, marker(subject_id, c), marker_date(subject_id, c)) for c in cols}
        leaks = sum(1 for r in rows for c in cols if r[c] is not None and r[c] in seeded[c])
        if leaks == 0:
            return self.check(
                target, CheckOutcome.PASS, f"{spec.table}: {len(rows)} row(s), columns {cols} erased"
            )
        return self.check(target, CheckOutcome.FAIL, f"{spec.table}: {leaks} seeded value(s) still there")

    def seed_test_subjects(
        self, ctx: Context, target: Target, subjects: Sequence[tuple[str, str]]
    ) -> dict[str, str]:
        spark: SparkSession = ctx.require_spark(target)
        spec = self.spec(target)
        path = self._path(ctx, target)
        try:
            schema = spark.read.format("delta").load(path).schema
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"target '{target.name}': cannot read Delta table at {path}: {exc}") from exc
        missing = [k for k in spec.key_columns if k not in schema.fieldNames()]
        if missing:
            raise TargetError(f"target '{target.name}': table at {path} has no key column(s) {missing}")
        now = datetime.now(UTC)
        rows = [
            {
                f.name: sid if f.name in spec.key_columns else _spark_value(sid, f.name, f.dataType, now)
                for f in schema.fields
            }
            for sid, _ in subjects
        ]
        spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(path)
        return {sid: f"appended 1 test row to {spec.table}" for sid, _ in subjects}

    def evidence_summary(self, evidence: dict[str, Any]) -> str:
        ev = evidence
        if "delete_version" not in ev:
            return generic_summary(ev)
        masked = ev.get("mode") == "mask"
        n = ev.get("num_masked_rows") if masked else ev.get("num_deleted_rows")
        fields = ", ".join(f"{c}={s}" for c, s in (ev.get("strategies") or {}).items() if c != "*")
        return (
            f"{'masked' if masked else 'deleted'} {n} rows{f' ({fields})' if fields else ''} "
            f"(batch of {ev.get('batch_subjects')}) "
            f"v{ev.get('delete_version')}; {ev.get('purge')}; vacuum v{ev.get('vacuum_version', '-')} "
            f"removed {ev.get('vacuum_files_deleted', '-')} files"
        )
