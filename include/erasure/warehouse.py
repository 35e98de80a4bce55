"""Warehouse erasure: erase subjects from Delta tables, logically and then physically.

The engine of the ``warehouse_delta`` target kind (its catalog section and lookups are in
:mod:`erasure.targets.warehouse_delta`). For every enabled target of that kind one run does, per table:

1. **delete** (stage ``deleted``): ONE batched write for all the run's subjects of that table
   (:func:`delete_subjects`). With deletion vectors: ``DELETE FROM t WHERE <key> IN (<the batch's
   keys>)`` (open-source Delta rejects subqueries in ``DELETE``; the key list is one SQL expression,
   :func:`erasure.spark.key_in`), which finds and marks the rows in one scan and only writes small
   vector files (a batch above ``PREDICATE_MAX_KEYS`` keys: a MERGE with the keys as a broadcast
   source). Copy-on-write: one scan of the key columns first counts the
   rows to change and the files holding them; when they are at least ``ONE_PASS_MIN_FILE_SHARE`` of
   the table's files (10,000 scattered subjects touch all of them) the table is rewritten in ONE pass
   (:func:`rewrite_table`: read, drop or erase the rows, overwrite in one Delta transaction whose
   conflict detection refuses the commit if another writer committed meanwhile, even a blind append;
   the run then falls back to the row-level DELETE at once), else the DELETE rewrites the touched
   files only.
   Mode ``mask`` applies the field strategies instead and skips rows already in their erased form, so
   a re-run writes nothing. Evidence: the table version of the commit, how it was written
   (``delete_write``: ``merge``, ``predicate``, ``one_pass_rewrite`` or ``none``), the files touched and
   the operation metrics (``numTargetRowsDeleted`` / ``numTargetRowsUpdated``; batch totals).
2. **purge** (stage ``purged``): with deletion vectors the DELETE only marks rows as deleted and the
   old Parquet files still hold them, so ``REORG TABLE delta.`path` APPLY (PURGE)`` rewrites the
   files that carry deletion vectors. Without deletion vectors the delete already rewrote the touched
   files (copy-on-write), so this stage records that no purge commit was needed.
3. **vacuum** (stage ``vacuumed``): removed files still exist on disk and time travel still reads
   them until ``VACUUM ... RETAIN <retention_hours> HOURS`` deletes them. A task reaches this stage
   only in a run that starts after ``purged_at + retention_hours`` (then the removed files are older
   than the retention and VACUUM really deletes them); until then it stays ``in_progress`` at stage
   ``purged`` and a later (daily) run finishes it.
4. **verify** (proof of erasure, before the task may succeed): :func:`verify_erased` reads the table
   for the batch's subjects at its latest version (delete: no row; mask: every ``mask_columns`` value
   masked) and at the version just before the delete commit (time travel), which must no longer be
   readable because its files are vacuumed, or must hold nothing of the subject. The answer is the
   task's ``evidence.verification`` (``verified`` / ``failed``; ``not_verifiable`` only when the catalog
   says ``verifiable: false``). A verified task moves to ``vacuumed`` and succeeds; a failed one fails
   with the answer as its error and is retried (its next run vacuums and verifies again), then
   escalated by reconcile like any other. So a receipt (:mod:`erasure.evidence.receipts`) is issued for
   a request with warehouse targets only once their old versions are physically gone.

Each stage change is written with :func:`erasure.tracking.store.transition_task` (``stage=...``,
evidence merged into the task's JSON), in its own transaction and only forward: the task row is
locked and its current stage checked first. Delta commits carry ``userMetadata`` with the run id and
target (never subject ids), so the table history names the erasure run that wrote each version.

Crash safety: a job killed at any point leaves each table at a committed version (Delta's commit
protocol: a version exists only once its log file is written atomically; files of an unfinished
write are unreferenced and later removed by VACUUM). The tracking store only moves after a Delta
commit succeeded, so the next run repeats at most the last step, which is idempotent (a second DELETE
deletes 0 rows, REORG without deletion vectors rewrites nothing, VACUUM is repeatable).

Retention below 168 h: Delta's VACUUM refuses it unless
``spark.databricks.delta.retentionDurationCheck.enabled`` is false. The check protects concurrent
readers and writers whose files are not yet committed or whose snapshot is old; the catalog owner
chose the shorter retention explicitly (so erased bytes do not linger), so the job turns the check
off for that one VACUUM call and restores it afterwards. Do not use a retention shorter than the
longest write to that table while other writers are active.

Residue outside data files: ``_delta_log`` commit files keep per-file column statistics (min/max)
until the log retention expires them. Before its first delete the job sets (:func:`harden_log`, one
metadata commit, a no-op afterwards) ``delta.dataSkippingStatsColumns`` to the columns that are
neither key columns, nor ``personal_data``, nor erased by a rule, and ``delta.logRetentionDuration``
to the target's ``log_retention_days`` (default 7, at most 30): new commits carry no identifier
statistics and older log files are removed at the next checkpoint after that many days. Verification
(:func:`log_check`) fails a table whose properties say otherwise.

Core module: no Airflow imports. Spark only through :func:`erasure.spark.get_spark` (callers pass
the session in).
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from erasure.catalog import Catalog, Target
from erasure.db import transaction
from erasure.identity import IdentityCodec, keys_for
from erasure.privacy import scrub_text
from erasure.pseudonym import PREFIX, hmac_pads
from erasure.pseudonym import load_key as load_pseudonym_key
from erasure.resolution import identity_of
from erasure.settings import Settings
from erasure.spark import key_in
from erasure.targets.base import verification
from erasure.targets.fields import MASK_STRING, FieldRule
from erasure.targets.registry import adapter_for
from erasure.targets.warehouse_delta import WarehouseDeltaSpec
from erasure.tracking import task as task_sql
from erasure.tracking.store import transition_task
from erasure.vocab import (
    FieldStrategy,
    TargetKind,
    TaskStatus,
    VerificationOutcome,
    WarehouseStage,
    WarehouseWrite,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("erasure.warehouse")

KIND = TargetKind.WAREHOUSE_DELTA
STAGES = (None, *WarehouseStage)
PICKED_STATUSES = (TaskStatus.PENDING, TaskStatus.IN_PROGRESS, TaskStatus.FAILED)
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
DEFAULT_RETENTION_CHECK_HOURS = 168
MERGE_REPARTITION_CONF = "spark.databricks.delta.merge.repartitionBeforeWrite.enabled"
# Delta materializes a MERGE source it cannot prove deterministic (here: a local DataFrame) before its
# two passes; our source is a literal, sorted list of subject keys, identical in both passes, so the
# copy is pure overhead (~20% of a deletion-vector MERGE of 10M rows).
MERGE_MATERIALIZE_CONF = "spark.databricks.delta.merge.materializeSource"
# Delta records a DELETE/UPDATE's predicate in the commit's ``operationParameters`` as the expression's
# ``simpleString(spark.sql.debug.maxToStringFields)``: with the default (25) the first keys of
# ``key IN (...)`` would sit in ``_delta_log`` in clear. At 0 every argument list is elided
# (``coalesce(... 2 more fields)``), so the log names no identifier; set only around our own write.
PREDICATE_TEXT_CONF = "spark.sql.debug.maxToStringFields"
LISTING_PARALLELISM_CONF = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
PSEUDONYM_RE = "^" + PREFIX + "[0-9a-f]{64}$"


class WarehouseError(RuntimeError):
    """A warehouse table cannot be erased as the catalog describes (missing table, column, ...)."""


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepResult:
    """One Delta operation: which step, the table version it produced (or the current one if it
    committed nothing), whether it committed, its metrics and its wall time."""

    step: str
    version: int
    committed: bool
    metrics: dict[str, int]
    seconds: float
    at: str
    write: str = ""
    """How a delete step wrote (:class:`erasure.vocab.WarehouseWrite`); empty for other steps."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TargetReport:
    target: str
    table: str
    path: str
    mode: str
    tasks_picked: int = 0
    subjects_in_batch: int = 0
    delete: StepResult | None = None
    purge: StepResult | None = None
    vacuum: StepResult | None = None
    advanced: dict[str, int] = field(default_factory=lambda: {"deleted": 0, "purged": 0, "vacuumed": 0})
    waiting_for_retention: int = 0
    verification_failed: int = 0
    vacuum_due_at: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("delete", "purge", "vacuum"):
            step = getattr(self, k)
            d[k] = step.to_dict() if step else None
        return d


@dataclass
class WarehouseReport:
    run_id: str
    started_at: str
    finished_at: str | None = None
    targets: list[TargetReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.error is None for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "ok": self.ok,
            "targets": [t.to_dict() for t in self.targets],
        }


# ---------------------------------------------------------------------------------------------------
# Delta operations (no tracking store): usable by the benchmark, the demo and the job
# ---------------------------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)


def _quote_path(path: str) -> str:
    return "delta.`" + path.replace("`", "``") + "`"


def table_location(spark: SparkSession, spec: WarehouseDeltaSpec, warehouse_dir: str | None = None) -> str:
    """Where the table's files are: its ``path`` (relative ones under ``warehouse_dir``), or for a table
    addressed by name (``table: <database>.<name>``, no path) the location the Spark catalog keeps for
    it. Every Delta operation then works on that location, so by-name and by-path tables are erased,
    purged, vacuumed and verified alike."""
    name = spec.catalog_name
    if name is None:
        return spec.resolved_path(warehouse_dir)
    if not spark.catalog.tableExists(name):
        raise WarehouseError(f"table '{name}': not in the Spark catalog (warehouse_delta.table)")
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_name(name)}").collect()[0]  # noqa: S608 (quoted name)
    if str(detail["format"]).lower() != "delta":
        raise WarehouseError(
            f"table '{name}': is {detail['format']}, not a Delta table (warehouse_delta.table)"
        )
    return str(detail["location"])


def _quote_name(name: str) -> str:
    return ".".join("`" + part.replace("`", "``") + "`" for part in name.split("."))


def _delta_table(spark: SparkSession, spec: WarehouseDeltaSpec, warehouse_dir: str | None) -> Any:
    from delta.tables import DeltaTable

    path = table_location(spark, spec, warehouse_dir)
    if not DeltaTable.isDeltaTable(spark, path):
        raise WarehouseError(f"table '{spec.table}': no Delta table at path '{path}' (warehouse_delta.path)")
    return DeltaTable.forPath(spark, path)


def _last_commit(dt: Any, user_metadata: str | None, since_version: int) -> tuple[int, dict[str, int], bool]:
    """The version and metrics of our commit (found by userMetadata), else the current version."""
    rows = dt.history(20).select("version", "operation", "operationMetrics", "userMetadata").collect()
    current = max(r["version"] for r in rows)
    for r in rows:
        if r["version"] > since_version and user_metadata is not None and r["userMetadata"] == user_metadata:
            metrics = {
                k: int(v) for k, v in (r["operationMetrics"] or {}).items() if str(v).lstrip("-").isdigit()
            }
            return int(r["version"]), metrics, True
    return int(current), {}, False


def _with_conf(spark: SparkSession, conf: dict[str, str | None]) -> dict[str, str | None]:
    """Set session confs (None unsets); returns the previous values for :func:`_restore_conf`."""
    previous: dict[str, str | None] = {}
    for k, v in conf.items():
        previous[k] = spark.conf.get(k, None)
        if v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)
    return previous


def _restore_conf(spark: SparkSession, previous: dict[str, str | None]) -> None:
    for k, v in previous.items():
        if v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)


def _subjects_frame(spark: SparkSession, subject_ids: Iterable[str], key_type: Any) -> DataFrame:
    from pyspark.sql import functions as F

    keys = sorted({str(s) for s in subject_ids})
    df = spark.createDataFrame([(k,) for k in keys], "key string")
    return df.select(F.col("key").cast(key_type).alias("key"))


def _check_columns(spec: WarehouseDeltaSpec, schema: dict[str, Any], path: str) -> None:
    """Every key column and every rule's column exists (and ``hash`` is on strings), else a clear error."""
    from pyspark.sql.types import StringType

    where = f"table '{spec.table}' at '{path}'"
    missing = [k for k in spec.key_columns if k not in schema]
    if missing:
        raise WarehouseError(
            f"{where}: key_column '{missing[0]}' is not a column (columns: {sorted(schema)})"
            if len(spec.key_columns) == 1
            else f"{where}: key_columns {missing} are not columns (columns: {sorted(schema)})"
        )
    missing = [c for c in spec.rules() if c not in schema]
    if missing:
        raise WarehouseError(
            f"{where}: fields/mask_columns {missing} are not columns (columns: {sorted(schema)})"
        )
    for c, rule in spec.rules().items():
        if rule.strategy == FieldStrategy.HASH and not isinstance(schema[c], StringType):
            raise WarehouseError(
                f"{where}: column '{c}' is {schema[c].simpleString()}; strategy hash needs a string column"
            )


def _erased_value(
    rule: FieldRule, column: str, dtype: Any, pads: tuple[bytes, bytes] | None, alias: str = ""
) -> Any:
    """The Spark expression a rule writes into ``column`` (of type ``dtype``; ``alias``: ``t.`` in a MERGE)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    col = F.col(f"{alias}`{column}`")
    if rule.strategy == FieldStrategy.NULL:
        return F.lit(None).cast(dtype)
    if rule.strategy == FieldStrategy.CONSTANT:
        return F.lit(rule.value).cast(dtype)
    if rule.strategy == FieldStrategy.HASH:
        if pads is None:
            raise WarehouseError("strategy hash: no pseudonym key given")
        inner, outer = (F.unhex(F.lit(p.hex())) for p in pads)
        digest = F.sha2(F.concat(outer, F.unhex(F.sha2(F.concat(inner, col.cast("binary")), 256))), 256)
        return F.when(col.isNull() | col.rlike(PSEUDONYM_RE), col).otherwise(F.concat(F.lit(PREFIX), digest))
    return F.lit(MASK_STRING) if isinstance(dtype, StringType) else F.lit(None).cast(dtype)  # mask


def _not_erased(rule: FieldRule, column: str, dtype: Any, alias: str = "") -> Any:
    """Spark condition: ``column`` is not yet in the form the rule leaves (what a re-run would change)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    col = F.col(f"{alias}`{column}`")
    if rule.strategy == FieldStrategy.NULL:
        return col.isNotNull()
    if rule.strategy == FieldStrategy.CONSTANT:
        return ~col.eqNullSafe(F.lit(rule.value).cast(dtype))
    if rule.strategy == FieldStrategy.HASH:
        return col.isNotNull() & ~col.rlike(PSEUDONYM_RE)
    blank = F.lit(MASK_STRING) if isinstance(dtype, StringType) else F.lit(None).cast(dtype)
    return ~col.eqNullSafe(blank)


def _any(conds: Sequence[Any]) -> Any:
    from pyspark.sql import functions as F

    out = F.lit(False)
    for c in conds:
        out = out | c
    return out


# Copy-on-write tables: when the subjects' rows sit in at least this share of the table's files, the
# whole table is rewritten in one pass (read, drop/erase the rows, overwrite) instead of a row-level write's
# find-then-rewrite: 10,000 scattered subjects touch every file of a 10M-row table, and a row-level
# write then costs ~1.9 plain rewrites. Below it the row-level DELETE rewrites only the touched files,
# which is cheaper.
ONE_PASS_MIN_FILE_SHARE = 0.5


# The row-level write (deletion-vector tables, and copy-on-write tables whose subjects touch few files)
# is a DELETE/UPDATE whose predicate is ``key IN (<the batch's keys>)`` up to this many keys: Delta then
# finds and marks (deletion vectors) the rows in ONE scan with the row indexes, where a MERGE scans the
# table twice (find the touched files, then join again to write the vectors): 10M rows, 10,000
# subjects, 0.92x a full scan against the MERGE's 1.92x (bench_warehouse.py). Above it, a MERGE with the
# keys as a broadcast source (a literal list that long is costly to parse and ship).
PREDICATE_MAX_KEYS = 50_000


def concurrent_write_errors() -> tuple[type[BaseException], ...]:
    """Delta's refusals of a commit because another writer committed first (imported lazily: pyspark)."""
    try:
        from delta.exceptions import (
            ConcurrentAppendException,
            ConcurrentDeleteDeleteException,
            ConcurrentDeleteReadException,
            ConcurrentTransactionException,
            ConcurrentWriteException,
        )
    except ImportError:  # no delta-spark here: no Delta write either
        return ()
    return (
        ConcurrentAppendException,
        ConcurrentDeleteDeleteException,
        ConcurrentDeleteReadException,
        ConcurrentTransactionException,
        ConcurrentWriteException,
    )


@dataclass(frozen=True)
class TouchEstimate:
    """What the subjects touch in a table's current snapshot: rows to change, the files holding them,
    the files of the snapshot (Delta's ``numFiles``)."""

    rows: int
    files: int
    table_files: int

    @property
    def share(self) -> float:
        return self.files / self.table_files if self.table_files else 0.0


def subject_rows(spec: WarehouseDeltaSpec, schema: dict[str, Any], subject_ids: Iterable[str]) -> Any:
    """Spark condition, never NULL: the row belongs to one of ``subject_ids`` in any key column
    (compared in the column's own type when it is a string, else as its string form)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    keys = sorted({str(s) for s in subject_ids})
    conds = [key_in(k, keys, as_string=not isinstance(schema[k], StringType)) for k in spec.key_columns]
    return F.coalesce(_any(conds), F.lit(False))


def estimate_touched(spark: SparkSession, path: str, changes: Any) -> TouchEstimate:
    """Rows matching ``changes`` (a Spark condition) and the distinct data files holding them, from one
    scan of the columns the condition reads (``_metadata.file_path``: no data column is read for it)."""
    from pyspark.sql import functions as F

    row = (
        spark.read.format("delta")
        .load(path)
        .where(changes)
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct(F.col("_metadata.file_path")).alias("files"))
        .collect()[0]
    )
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_path(path)}").collect()[0]  # noqa: S608 (quoted path)
    return TouchEstimate(int(row["rows"]), int(row["files"]), int(detail["numFiles"] or 0))


# Delete mode, copy-on-write: with at least this many subjects per data file, the one-pass rewrite is
# chosen without counting first (scattered subjects then touch every file: 10,000 subjects in a 90-file
# table are 111 per file). Rows clustered in a few files make the rewrite do more than a MERGE would,
# never anything wrong. Below it, and in mask mode (whose evidence counts the rows changed), the
# estimate decides.
ONE_PASS_SUBJECTS_PER_FILE = 50


def _num_files(spark: SparkSession, path: str) -> int:
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_path(path)}").collect()[0]  # noqa: S608 (quoted path)
    return int(detail["numFiles"] or 0)


def _has_rows(spark: SparkSession, path: str, condition: Any) -> bool:
    """Whether any row matches: the scan stops at the first file (task) that holds one."""
    from pyspark.sql import functions as F

    return bool(spark.read.format("delta").load(path).where(condition).select(F.lit(1)).head(1))


def _read_version(dt: Any, version: int) -> int:
    """The snapshot version the commit ``version`` read (its ``readVersion``)."""
    rows = dt.history(20).where(f"version = {int(version)}").select("readVersion").collect()
    return int(rows[0]["readVersion"]) if rows and rows[0]["readVersion"] is not None else version - 1


def _records(spark: SparkSession, path: str, version: int) -> int:
    """Rows in the table at ``version``: Delta answers ``count()`` from its per-file record counts."""
    return int(spark.read.format("delta").option("versionAsOf", version).load(path).count())


def rewrite_table(spark: SparkSession, path: str, rows: Any, values: dict[str, Any] | None) -> None:
    """Copy-on-write in ONE pass: read the table, drop the rows matching ``rows`` (``values`` None) or
    set each ``values`` column (name -> expression) on them, and overwrite the table with the result.

    One Delta transaction reads and writes: the scan runs inside the overwrite's transaction (Delta
    plans a read of the table being written with that transaction's snapshot and records it as read),
    and the commit removes exactly the files of that snapshot. ANY commit to the table by another writer
    between the read and the commit makes this commit fail: an ``UPDATE``/``DELETE`` that rewrote a file
    (``ConcurrentDeleteReadException``) and, since the whole table was read, even a blind append
    (``ConcurrentAppendException``; tests/integration/test_warehouse_concurrency.py). Nothing a concurrent
    writer committed is lost; :func:`delete_subjects` then falls back to the row-level write at once.
    Partitioning, schema and table properties are kept.

    Tried and dropped (issue 21, 2M and 10M rows): reading one data file per task so each task writes
    its one partition without the sort by the partition column (``spark.sql.files.openCostInBytes``
    above the split size, ``spark.sql.maxConcurrentOutputFileWriters``) was 10-35% slower; the cost of
    a partitioned rewrite is writing one file per partition (90 here), not the sort.
    """
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(path)
    if values is None:
        out = df.where(~rows)
    else:
        out = df.select(
            *[
                F.when(rows, values[c]).otherwise(F.col(f"`{c}`")).alias(c)
                if c in values
                else F.col(f"`{c}`")
                for c in df.columns
            ]
        )
    out.write.format("delta").mode("overwrite").save(path)


def delete_subjects(
    spark: SparkSession,
    spec: WarehouseDeltaSpec,
    subject_ids: Sequence[str],
    *,
    warehouse_dir: str | None = None,
    user_metadata: dict[str, Any] | None = None,
    pseudonym_key: bytes | None = None,
    one_pass_min_share: float = ONE_PASS_MIN_FILE_SHARE,
) -> StepResult:
    """ONE batched write erasing ``subject_ids`` from the table: mode ``delete`` removes their rows,
    mode ``mask`` applies each column's strategy (:mod:`erasure.targets.fields`; ``hash`` needs
    ``pseudonym_key``).

    How it writes (``StepResult.write``, :class:`erasure.vocab.WarehouseWrite`):

    * copy-on-write table (no deletion vectors): first one cheap scan of the key columns counts the rows
      to change and the files holding them (:func:`estimate_touched`). Nothing to change: no write
      (``none``). At least ``one_pass_min_share`` of the table's files touched: :func:`rewrite_table`,
      the whole table in one pass (``one_pass_rewrite``). Otherwise as below, rewriting only those files.
      Mode ``delete`` with at least ``ONE_PASS_SUBJECTS_PER_FILE`` subjects per data file skips the
      count: a probe for one matching row (none: ``none``), then the one-pass rewrite; the rows deleted
      are the records Delta counted before minus those it wrote (``numTargetFilesTouched`` not given).
    * otherwise (deletion vectors, or few files touched): a ``DELETE``/``UPDATE`` whose predicate
      matches the subjects in any key column (``predicate``; ``key IN (...)`` built by
      :func:`erasure.spark.key_in`): one scan where a MERGE needs two;
    * one key column and more than ``PREDICATE_MAX_KEYS`` subjects: a ``MERGE`` with the subjects as a
      broadcast source (``merge``; with several key columns a MERGE would match one row by several
      subjects, which Delta refuses for updates, so those stay ``predicate``).

    Re-running it for the same subjects is harmless: 0 rows match (delete) or every match is already
    in its erased form (mask), and no new version is written.
    """
    from pyspark.sql import functions as F

    if not subject_ids:
        raise ValueError("subject_ids: empty; nothing to erase")
    dt = _delta_table(spark, spec, warehouse_dir)
    path = table_location(spark, spec, warehouse_dir)
    schema = {f.name: f.dataType for f in dt.toDF().schema.fields}
    _check_columns(spec, schema, path)
    rules = spec.rules()
    pads = hmac_pads(pseudonym_key) if pseudonym_key else None
    before = dt.history(1).select("version").collect()[0]["version"]
    meta = json.dumps(
        {"erasure": "warehouse", "step": spec.mode, "token": uuid.uuid4().hex, **(user_metadata or {})}
    )
    started = time.perf_counter()
    estimate: TouchEstimate | None = None
    counted_files = 0
    run: Any = None
    write = WarehouseWrite.PREDICATE
    if not deletion_vectors_enabled(spark, spec, warehouse_dir):
        rows = subject_rows(spec, schema, subject_ids)
        plain = {c: _erased_value(r, c, schema[c], pads) for c, r in rules.items()}
        changes = (
            rows
            if spec.mode == "delete"
            else rows & _any([_not_erased(r, c, schema[c]) for c, r in rules.items()])
        )
        table_files = _num_files(spark, path)
        if spec.mode == "delete" and len(set(subject_ids)) >= ONE_PASS_SUBJECTS_PER_FILE * table_files:
            # So many subjects per file that one pass is the only sensible write: no counting scan,
            # only a probe for one row to erase (the first file answers it; a re-run scans the key
            # column once and writes nothing). The rows deleted come from Delta's record counts.
            if not _has_rows(spark, path, changes):
                metrics = {
                    "numTargetRowsDeleted": 0,
                    "numTargetRowsUpdated": 0,
                    "numFilesInTable": table_files,
                }
                seconds = round(time.perf_counter() - started, 3)
                return StepResult(
                    spec.mode, int(before), False, metrics, seconds, _now().isoformat(), WarehouseWrite.NONE
                )
            write = WarehouseWrite.REWRITE
            counted_files = table_files

            def run() -> None:
                rewrite_table(spark, path, changes, None)

        else:
            estimate = estimate_touched(spark, path, changes)
        if estimate is not None and estimate.rows == 0:
            metrics = {"numTargetRowsDeleted": 0, "numTargetRowsUpdated": 0, "numTargetFilesTouched": 0,
                       "numFilesInTable": estimate.table_files}  # fmt: skip
            seconds = round(time.perf_counter() - started, 3)
            return StepResult(
                spec.mode, int(before), False, metrics, seconds, _now().isoformat(), WarehouseWrite.NONE
            )
        if estimate is not None and estimate.share >= one_pass_min_share:
            write = WarehouseWrite.REWRITE

            def run() -> None:
                rewrite_table(spark, path, changes, None if spec.mode == "delete" else plain)

    def row_level() -> tuple[WarehouseWrite, Any]:
        """The row-level write: DELETE/UPDATE with a predicate over the key columns (``key IN (...)``,
        which Spark evaluates as a hash-set lookup); a MERGE for a batch above ``PREDICATE_MAX_KEYS``
        subjects with one key column."""
        if len(spec.key_columns) == 1 and len(set(subject_ids)) > PREDICATE_MAX_KEYS:
            key = spec.key_column
            values = {f"`{c}`": _erased_value(r, c, schema[c], pads, "t.") for c, r in rules.items()}
            differs = _any([_not_erased(r, c, schema[c], "t.") for c, r in rules.items()])
            subjects = F.broadcast(_subjects_frame(spark, subject_ids, schema[key])).alias("s")
            merge = dt.alias("t").merge(subjects, f"t.`{key}` = s.key")
            if spec.mode == "delete":
                merge = merge.whenMatchedDelete()
            else:
                merge = merge.whenMatchedUpdate(condition=differs, set=values)
            return WarehouseWrite.MERGE, merge.execute
        match = subject_rows(spec, schema, subject_ids)
        values = {f"`{c}`": _erased_value(r, c, schema[c], pads) for c, r in rules.items()}
        differs = _any([_not_erased(r, c, schema[c]) for c, r in rules.items()])
        if spec.mode == "delete":
            return WarehouseWrite.PREDICATE, lambda: dt.delete(match)
        return WarehouseWrite.PREDICATE, lambda: dt.update(match & differs, values)

    if run is None:
        write, run = row_level()

    # No repartition by partition columns before the write: each rewritten file comes from one input
    # file (one partition), so it cannot scatter small files, and the shuffle of every copied row
    # made a copy-on-write erasure ~3x slower (10M rows: 83 s -> 29 s).
    previous = _with_conf(
        spark,
        {
            USER_METADATA_CONF: meta,
            MERGE_REPARTITION_CONF: "false",
            MERGE_MATERIALIZE_CONF: "none",
            PREDICATE_TEXT_CONF: "0",
        },
    )
    try:
        try:
            run()
        except Exception as exc:
            if write != WarehouseWrite.REWRITE or not isinstance(exc, concurrent_write_errors()):
                raise
            # The one-pass rewrite read the whole table, so ANY concurrent commit to it, even a blind
            # append (measured, Delta 4.4), refuses its commit: nothing the other writer did is lost. On
            # a table that is appended to all the time a rewrite would lose every race, so fall back
            # at once to the row-level write, which reads the new snapshot and lets blind appends pass.
            log.warning(
                "table=%s one-pass rewrite refused by a concurrent commit (%s); row-level write instead",
                spec.table,
                type(exc).__name__,
            )
            write, run = row_level()
            run()
    finally:
        _restore_conf(spark, previous)
    seconds = time.perf_counter() - started
    version, metrics, committed = _last_commit(dt, meta, before)
    if write == WarehouseWrite.REWRITE and estimate is None and committed:
        # rows deleted = the records of the snapshot the rewrite read - the records it wrote
        read = _read_version(dt, version)
        metrics["numTargetRowsDeleted"] = _records(spark, path, read) - metrics.get("numOutputRows", 0)
        metrics["numTargetFilesAdded"] = metrics.get("numFiles", 0)
        metrics["numTargetFilesRemoved"] = metrics.get("numRemovedFiles", counted_files)
        metrics["numFilesInTable"] = counted_files
    if write == WarehouseWrite.REWRITE and estimate is not None:
        # an overwrite reports files and output rows; the rows it dropped/changed are the estimate's
        key = "numTargetRowsDeleted" if spec.mode == "delete" else "numTargetRowsUpdated"
        metrics[key] = estimate.rows
        metrics["numTargetFilesAdded"] = metrics.get("numFiles", 0)
        metrics.setdefault("numTargetFilesRemoved", metrics.get("numRemovedFiles", estimate.table_files))
    if estimate is not None:
        metrics["numTargetFilesTouched"] = estimate.files
        metrics["numFilesInTable"] = estimate.table_files
    # DELETE/UPDATE name their metrics differently from MERGE: one vocabulary in the evidence
    metrics.setdefault("numTargetRowsDeleted", metrics.get("numDeletedRows", 0))
    metrics.setdefault("numTargetRowsUpdated", metrics.get("numUpdatedRows", 0))
    return StepResult(spec.mode, version, committed, metrics, round(seconds, 3), _now().isoformat(), write)


STATS_COLUMNS_PROP = "delta.dataSkippingStatsColumns"
INDEXED_COLS_PROP = "delta.dataSkippingNumIndexedCols"
LOG_RETENTION_PROP = "delta.logRetentionDuration"
MAX_STATS_COLUMNS = 32  # Delta's own default number of indexed columns
SAFE_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # other names get no statistics (and no quoting)


def log_properties(target: Target, spec: WarehouseDeltaSpec, columns: Sequence[str]) -> dict[str, str]:
    """Table properties that keep identifiers out of the ``_delta_log`` for long: file statistics
    (min/max) only on columns that are neither key columns, nor personal data, nor erased by a rule;
    log files kept ``log_retention_days``."""
    personal = {*target.personal_data, *spec.key_columns, *spec.rules()}
    stats = [c for c in columns if c not in personal and SAFE_COLUMN.match(c)][:MAX_STATS_COLUMNS]
    props = {LOG_RETENTION_PROP: f"interval {spec.log_retention_days} days"}
    if stats:
        props[STATS_COLUMNS_PROP] = ",".join(stats)
    else:
        props[INDEXED_COLS_PROP] = "0"
    return props


def _table_properties(spark: SparkSession, path: str) -> dict[str, str]:
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_path(path)}").collect()[0]  # noqa: S608 (quoted path)
    return {str(k): str(v) for k, v in (detail["properties"] or {}).items()}


def harden_log(
    spark: SparkSession, target: Target, spec: WarehouseDeltaSpec, warehouse_dir: str | None = None
) -> dict[str, Any]:
    """Set :func:`log_properties` on the table where they differ (one metadata commit, else none);
    returns what the evidence keeps: the statistics columns, the log retention, what changed."""
    path = table_location(spark, spec, warehouse_dir)
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_path(path)}").collect()[0]  # noqa: S608 (quoted path)
    partitions = set(detail["partitionColumns"] or [])  # statistics are never kept on them
    columns = [c for c in _delta_table(spark, spec, warehouse_dir).toDF().columns if c not in partitions]
    wanted = log_properties(target, spec, columns)
    current = _table_properties(spark, path)
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    if STATS_COLUMNS_PROP in current and STATS_COLUMNS_PROP not in wanted:
        changed[STATS_COLUMNS_PROP] = ""  # every column is personal: no column statistics at all
    if changed:
        assignments = ", ".join(f"'{k}' = '{v}'" for k, v in changed.items() if v)
        if assignments:
            spark.sql(f"ALTER TABLE {_quote_path(path)} SET TBLPROPERTIES ({assignments})")  # noqa: S608
        if changed.get(STATS_COLUMNS_PROP) == "":
            spark.sql(f"ALTER TABLE {_quote_path(path)} UNSET TBLPROPERTIES ('{STATS_COLUMNS_PROP}')")  # noqa: S608
    return {
        "log_stats_columns": wanted.get(STATS_COLUMNS_PROP, ""),
        "log_retention_days": spec.log_retention_days,
        "log_properties_changed": sorted(changed),
    }


def log_check(
    spark: SparkSession, target: Target, spec: WarehouseDeltaSpec, warehouse_dir: str | None = None
) -> str | None:
    """None when the table's properties keep identifiers out of its log as :func:`log_properties`
    says (verification), else what is wrong."""
    path = table_location(spark, spec, warehouse_dir)
    props = _table_properties(spark, path)
    personal = {*target.personal_data, *spec.key_columns, *spec.rules()}
    stats = props.get(STATS_COLUMNS_PROP)
    if stats is None and props.get(INDEXED_COLS_PROP) != "0":
        return f"{spec.table}: file statistics are collected on every column (no {STATS_COLUMNS_PROP})"
    leaking = sorted(personal & {c.strip() for c in (stats or "").split(",")})
    if leaking:
        return f"{spec.table}: file statistics in the Delta log cover personal columns {leaking}"
    if props.get(LOG_RETENTION_PROP) != f"interval {spec.log_retention_days} days":
        return (
            f"{spec.table}: {LOG_RETENTION_PROP} is {props.get(LOG_RETENTION_PROP, 'the default (30 days)')}, "
            f"not {spec.log_retention_days} days"
        )
    return None


# ---------------------------------------------------------------------------------------------------
# Identifiers in the Delta log: the catalog validator's and the job's preflight warnings
# ---------------------------------------------------------------------------------------------------
DEFAULT_LOG_RETENTION = "interval 30 days"  # Delta's default delta.logRetentionDuration
_INTERVAL_UNITS = {
    "microsecond": 1e-6 / 86400, "millisecond": 1e-3 / 86400, "second": 1 / 86400, "minute": 1 / 1440,
    "hour": 1 / 24, "day": 1.0, "week": 7.0,
}  # fmt: skip
_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+?)s?\b")


def interval_days(value: str) -> float | None:
    """Days of a Delta interval property (``interval 30 days``, ``720 hours``, ``interval 1 week 2 days``);
    None when it cannot be read (Delta refuses months and years for these properties too)."""
    text = value.strip().lower()
    text = text[len("interval") :] if text.startswith("interval") else text
    parts = _INTERVAL_PART.findall(text)
    if not parts or _INTERVAL_PART.sub("", text).strip():
        return None
    days = 0.0
    for amount, unit in parts:
        if unit not in _INTERVAL_UNITS:
            return None
        days += float(amount) * _INTERVAL_UNITS[unit]
    return days


def stats_columns(columns: Sequence[str], properties: dict[str, str]) -> list[str]:
    """The data columns (leaf paths ``a.b`` for struct fields, schema order, partition columns left out)
    Delta keeps per-file statistics (min/max, null counts) for in its log, per the table's properties:
    ``delta.dataSkippingStatsColumns`` when set, else the first ``delta.dataSkippingNumIndexedCols``
    (default 32; -1: all) leaf columns."""
    listed = properties.get(STATS_COLUMNS_PROP)
    if listed is not None and listed.strip():
        wanted = [c.strip().replace("`", "").lower() for c in listed.split(",") if c.strip()]
        return [c for c in columns if any(c.lower() == w or c.lower().startswith(w + ".") for w in wanted)]
    try:
        n = int(properties.get(INDEXED_COLS_PROP, str(MAX_STATS_COLUMNS)))
    except ValueError:
        n = MAX_STATS_COLUMNS
    return list(columns) if n < 0 else list(columns)[:n]


def log_exposure_warnings(
    target: Target,
    spec: WarehouseDeltaSpec,
    *,
    columns: Sequence[str],
    properties: dict[str, str],
    sla_days: int,
    partition_columns: Sequence[str] = (),
    location: str | None = None,
) -> list[str]:
    """Why identifiers of this table may outlive the erasure SLA in its ``_delta_log``; empty when none.

    Pure (no Spark): ``columns`` are the table's data columns in schema order (leaf paths ``a.b`` for
    struct fields, partition columns left out), ``properties`` its table properties (``DESCRIBE DETAIL``),
    ``sla_days`` the shortest erasure deadline that applies to it (:func:`sla_days_for`). One warning:

    * per catalogued personal-data, key or field-rule column Delta collects statistics for
      (:func:`stats_columns`): the log's min/max values of each file name subjects;
    * per such column that is a partition column: every log entry carries its value
      (``partitionValues``), whatever the statistics settings;
    * when ``delta.logRetentionDuration`` (default 30 days) is longer than ``sla_days`` (or unreadable):
      old log files, statistics included, are kept that long.

    Each warning names the table, the column or property and the fix (the ``ALTER TABLE`` the erasure job
    itself runs before its first delete, :func:`harden_log`). Used by ``catalog validate --check-tables``
    (:func:`check_log_exposure`) and logged by the warehouse job before each table."""
    name = spec.catalog_name or _quote_path(location or spec.path or spec.table)
    where = f"target '{target.name}', table '{spec.table}'"
    personal = list(dict.fromkeys([*spec.key_columns, *target.personal_data, *spec.rules()]))
    out: list[str] = []
    covered = stats_columns(columns, properties)
    fix = log_properties(target, spec, [c for c in columns if "." not in c])
    listed = properties.get(STATS_COLUMNS_PROP)
    props = (
        f"ALTER TABLE {name} SET TBLPROPERTIES ("
        + ", ".join(f"'{k}' = '{v}'" for k, v in fix.items() if k != LOG_RETENTION_PROP)
        + ")"
    )
    if STATS_COLUMNS_PROP not in fix and listed is not None:
        props += f" and ALTER TABLE {name} UNSET TBLPROPERTIES ('{STATS_COLUMNS_PROP}')"
    why = (
        f"listed in {STATS_COLUMNS_PROP}"
        if listed is not None and listed.strip()
        else f"{STATS_COLUMNS_PROP} unset and the column among the first "
        f"{properties.get(INDEXED_COLS_PROP, MAX_STATS_COLUMNS)} ({INDEXED_COLS_PROP}) columns"
    )
    for c in personal:
        hit = [x for x in covered if x.lower() == c.lower() or x.lower().startswith(c.lower() + ".")]
        if hit:
            out.append(
                f"{where}: personal/key column '{c}' has min/max statistics in _delta_log ({why}); "
                f"fix: {props}"
            )
        if c.lower() in {p.lower() for p in partition_columns}:
            out.append(
                f"{where}: personal/key column '{c}' is a partition column: every _delta_log entry carries "
                f"its values (partitionValues), whatever the statistics settings; fix: rewrite the table "
                f"partitioned by a column that names no subject"
            )
    retention = properties.get(LOG_RETENTION_PROP, DEFAULT_LOG_RETENTION)
    days = interval_days(retention)
    if days is None or days > sla_days:
        shown = "unset (default 30 days)" if LOG_RETENTION_PROP not in properties else f"'{retention}'"
        out.append(
            f"{where}: {LOG_RETENTION_PROP} is {shown}, "
            + ("unreadable" if days is None else f"longer than the erasure SLA of {sla_days} days")
            + f"; fix: ALTER TABLE {name} SET TBLPROPERTIES "
            f"('{LOG_RETENTION_PROP}' = 'interval {min(spec.log_retention_days, sla_days)} days')"
        )
    return out


def sla_days_for(catalog: Catalog, target: Target) -> int:
    """The shortest erasure deadline a target's data is held to: its own ``sla_days``, the catalog's and
    every jurisdiction's (a table serves requests of all jurisdictions)."""
    return min(
        [
            catalog.sla_days,
            *catalog.jurisdiction_sla_days.values(),
            *([target.sla_days] if target.sla_days else []),
        ]
    )


def _leaf_columns(fields: Sequence[Any], prefix: str = "") -> list[str]:
    from pyspark.sql.types import StructType

    out: list[str] = []
    for f in fields:
        name = prefix + f.name
        out.extend(
            _leaf_columns(f.dataType.fields, name + ".") if isinstance(f.dataType, StructType) else [name]
        )
    return out


def table_log_exposure(
    spark: SparkSession, target: Target, sla_days: int, warehouse_dir: str | None = None
) -> list[str]:
    """:func:`log_exposure_warnings` for one table as it is now (one ``DESCRIBE DETAIL`` and its schema)."""
    spec = target.spec_as(WarehouseDeltaSpec)
    schema = _delta_table(spark, spec, warehouse_dir).toDF().schema  # its clear error first
    path = table_location(spark, spec, warehouse_dir)
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_path(path)}").collect()[0]  # noqa: S608 (quoted path)
    partitions = [str(c) for c in detail["partitionColumns"] or []]
    data = [f for f in schema.fields if f.name not in partitions]
    return log_exposure_warnings(
        target,
        spec,
        columns=_leaf_columns(data),
        properties={str(k): str(v) for k, v in (detail["properties"] or {}).items()},
        sla_days=sla_days,
        partition_columns=partitions,
        location=path,
    )


def check_log_exposure(spark: SparkSession, catalog: Catalog, warehouse_dir: str | None = None) -> list[str]:
    """:func:`table_log_exposure` for every enabled ``warehouse_delta`` target: the warnings of
    ``catalog validate --check-tables`` (a table that cannot be read is :func:`check_tables`' error)."""
    out: list[str] = []
    for target in catalog.of_kind(KIND):
        try:
            out.extend(table_log_exposure(spark, target, sla_days_for(catalog, target), warehouse_dir))
        except Exception:  # noqa: BLE001, S112 - check_tables reports the table as an error
            continue
    return out


def deletion_vectors_enabled(
    spark: SparkSession, spec: WarehouseDeltaSpec, warehouse_dir: str | None = None
) -> bool:
    """Whether the table may hold deletion vectors: the catalog says so or the table property is on."""
    path = table_location(spark, spec, warehouse_dir)
    detail = spark.sql(f"DESCRIBE DETAIL {_quote_path(path)}").collect()[0]  # noqa: S608 (quoted path)
    props = detail["properties"] or {}
    return spec.deletion_vectors or str(props.get("delta.enableDeletionVectors", "false")).lower() == "true"


def purge_deleted_rows(
    spark: SparkSession,
    spec: WarehouseDeltaSpec,
    *,
    warehouse_dir: str | None = None,
    user_metadata: dict[str, Any] | None = None,
) -> StepResult:
    """``REORG TABLE ... APPLY (PURGE)`` where deletion vectors are (or may be) on; else a no-op."""
    dt = _delta_table(spark, spec, warehouse_dir)
    path = table_location(spark, spec, warehouse_dir)
    before = dt.history(1).select("version").collect()[0]["version"]
    if not deletion_vectors_enabled(spark, spec, warehouse_dir):
        # Copy-on-write: the MERGE already rewrote every file that held an erased row.
        return StepResult("purge", int(before), False, {}, 0.0, _now().isoformat())
    meta = json.dumps(
        {"erasure": "warehouse", "step": "purge", "token": uuid.uuid4().hex, **(user_metadata or {})}
    )
    started = time.perf_counter()
    previous = _with_conf(spark, {USER_METADATA_CONF: meta})
    try:
        spark.sql(f"REORG TABLE {_quote_path(path)} APPLY (PURGE)").collect()  # noqa: S608 (quoted path)
    finally:
        _restore_conf(spark, previous)
    seconds = time.perf_counter() - started
    version, metrics, committed = _last_commit(dt, meta, before)
    return StepResult("purge", version, committed, metrics, round(seconds, 3), _now().isoformat())


def _listing_parallelism(spark: SparkSession, configured: int | None = None) -> int:
    """Tasks for VACUUM's file listing. Spark's default (10,000) turns a small table's VACUUM into
    minutes of empty tasks on a small cluster; 2 per core unless ``configured``
    (the ``vacuum_listing_parallelism`` setting, ERASURE_VACUUM_LISTING_PARALLELISM)."""
    if configured:
        return max(1, configured)
    return max(2, 2 * int(spark.sparkContext.defaultParallelism))


def vacuum_table(
    spark: SparkSession,
    spec: WarehouseDeltaSpec,
    *,
    warehouse_dir: str | None = None,
    listing_parallelism: int | None = None,
) -> StepResult:
    """``VACUUM ... RETAIN <retention_hours> HOURS``; the duration check is off only below 168 h."""
    dt = _delta_table(spark, spec, warehouse_dir)
    path = table_location(spark, spec, warehouse_dir)
    before = dt.history(1).select("version").collect()[0]["version"]
    hours = int(spec.retention_hours)
    conf: dict[str, str | None] = {
        LISTING_PARALLELISM_CONF: str(_listing_parallelism(spark, listing_parallelism))
    }
    if hours < DEFAULT_RETENTION_CHECK_HOURS:
        conf[RETENTION_CHECK_CONF] = "false"
    started = time.perf_counter()
    previous = _with_conf(spark, conf)
    try:
        spark.sql(f"VACUUM {_quote_path(path)} RETAIN {hours} HOURS").collect()  # noqa: S608 (int + quoted path)
    finally:
        _restore_conf(spark, previous)
    seconds = time.perf_counter() - started
    rows = dt.history(5).select("version", "operation", "operationMetrics").collect()
    version, metrics = int(before), {}
    for r in rows:  # newest first: VACUUM END (Delta logs VACUUM START/END commits)
        if r["version"] > before and r["operation"] == "VACUUM END":
            version = int(r["version"])
            metrics = {k: int(v) for k, v in (r["operationMetrics"] or {}).items() if str(v).isdigit()}
            break
    return StepResult("vacuum", version, version > before, metrics, round(seconds, 3), _now().isoformat())


def pseudonym_key_for(spec: WarehouseDeltaSpec, settings: Settings) -> bytes | None:
    """The pseudonym key when one of the table's rules is ``hash`` (read from its secret file), else None."""
    if not any(r.strategy == FieldStrategy.HASH for r in spec.rules().values()):
        return None
    return load_pseudonym_key(settings.pseudonym_key_path)


def delete_evidence(res: StepResult, batch_subjects: int) -> dict[str, Any]:
    """What a task keeps of the batched delete that erased its subject (stage ``deleted``)."""
    return {
        "delete_version": res.version,
        "delete_committed": res.committed,
        "num_deleted_rows": res.metrics.get("numTargetRowsDeleted", 0),
        "num_masked_rows": res.metrics.get("numTargetRowsUpdated", 0),
        "delete_write": res.write,
        "files_touched": res.metrics.get("numTargetFilesTouched"),
        "files_in_table": res.metrics.get("numFilesInTable"),
        "batch_subjects": batch_subjects,
        "deleted_at": res.at,
    }


VERIFY_METHOD = "delta time travel: latest version and the version before the delete"
# Only errors that say the version's files or log are physically gone; Delta's policy refusal
# (DELTA_UNSUPPORTED_TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION_DURATION) proves nothing: "could not look".
_GONE_MARKERS = ("FILE_NOT_EXIST", "FileNotFound", "does not exist", "VersionNotFound",
                 "DELTA_VERSIONS_NOT_CONTIGUOUS")  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify_erased` found for one subject: ``ok`` None means it could not look."""

    ok: bool | None
    answer: str


def _unreadable(exc: BaseException) -> bool:
    """Whether a time-travel read failed because the version's files (or log) are gone."""
    text = f"{type(exc).__name__}: {exc}"
    return any(m in text for m in _GONE_MARKERS)


def _leftovers(df: DataFrame, spec: WarehouseDeltaSpec, keys: Sequence[str]) -> dict[str, int]:
    """Per subject key: rows still there (delete) or rows with a column not in its erased form (mask),
    found by any key column."""
    from pyspark.sql import functions as F

    schema = {f.name: f.dataType for f in df.schema.fields}
    rows = df.where(subject_rows(spec, schema, keys))
    if spec.mode == "mask":
        rows = rows.where(_any([_not_erased(r, c, schema[c]) for c, r in spec.rules().items()]))
    hit = F.explode(F.array_distinct(F.array(*[F.col(f"`{k}`").cast("string") for k in spec.key_columns])))
    found = rows.select(hit.alias("k")).where(key_in("k", keys)).groupBy("k").count().collect()
    return {str(r["k"]): int(r["count"]) for r in found}


def verify_erased(
    spark: SparkSession,
    spec: WarehouseDeltaSpec,
    subject_ids: Sequence[str],
    *,
    before_version: int | None,
    warehouse_dir: str | None = None,
) -> dict[str, Verdict]:
    """Look the subjects up after their erasure: one read at the latest version and, when
    ``before_version`` is given (the version just before the delete commit), one time-travel read of it.

    A subject is erased when the latest version holds no row of it (mask mode: no unmasked value) and
    the old version either cannot be read any more (its data files were vacuumed, or its log expired)
    or holds nothing of it either. Subject ids never enter the answer text.
    """

    keys = sorted({str(s) for s in subject_ids})
    if not keys:
        return {}
    path = table_location(spark, spec, warehouse_dir)
    what = "row(s)" if spec.mode == "delete" else "row(s) not erased"
    try:
        latest_v = int(_delta_table(spark, spec, warehouse_dir).history(1).select("version").collect()[0][0])
        df = spark.read.format("delta").load(path)
        latest = _leftovers(df, spec, keys)
    except Exception as exc:  # noqa: BLE001 - could not look: never a pass
        msg = f"{spec.table}: cannot read the latest version: {type(exc).__name__}: {str(exc)[:200]}"
        return {k: Verdict(None, msg) for k in keys}
    old: dict[str, int] = {}
    old_note = "no earlier version"
    if before_version is not None and before_version >= 0:
        try:
            old_df = spark.read.format("delta").option("versionAsOf", before_version).load(path)
            old = _leftovers(old_df, spec, keys)
            old_note = f"v{before_version} (before the delete) readable, nothing of the subject in it"
        except Exception as exc:  # noqa: BLE001 - the expected end of a vacuumed version
            if not _unreadable(exc):
                msg = f"{spec.table}: cannot read v{before_version}: {type(exc).__name__}: {str(exc)[:200]}"
                return {k: Verdict(None, msg) for k in keys}
            old_note = f"v{before_version} (before the delete) unreadable: files vacuumed"
    out: dict[str, Verdict] = {}
    for k in keys:
        now_n, old_n = latest.get(k, 0), old.get(k, 0)
        if now_n:
            out[k] = Verdict(False, f"{spec.table}: {now_n} {what} at the latest version v{latest_v}")
        elif old_n:
            out[k] = Verdict(
                False,
                f"{spec.table}: 0 {what} at v{latest_v}, but v{before_version} (before the delete) is "
                f"still readable with {old_n} {what} (not vacuumed yet)",
            )
        else:
            out[k] = Verdict(
                True,
                f"{spec.table}: 0 {what} at v{latest_v}; {old_note}; log statistics only on non-personal "
                f"columns, log files kept {spec.log_retention_days} days",
            )
    return out


def check_tables(spark: SparkSession, catalog: Catalog, warehouse_dir: str | None = None) -> list[str]:
    """The catalog validator's look at the warehouse (``erasure.cli catalog validate --check-tables``):
    every ``warehouse_delta`` target's table exists (by path or by name) and has its key columns, its
    ``personal_data`` columns and the columns of its field rules. One error per problem, naming the
    target, the table and the column; empty when all is well. The erasure job checks again at run time."""
    errors: list[str] = []
    for target in catalog.of_kind(KIND):
        spec = target.spec_as(WarehouseDeltaSpec)
        where = f"target '{target.name}', table '{spec.table}'"
        try:
            columns = set(_delta_table(spark, spec, warehouse_dir).toDF().columns)
        except Exception as exc:  # noqa: BLE001 - reported, the other targets are still checked
            errors.append(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        wanted = [
            *[("key column", c) for c in spec.key_columns],
            *[("personal_data column", c) for c in target.personal_data],
            *[("fields column", c) for c in spec.rules()],
        ]
        seen: set[str] = set()
        for what, c in wanted:
            if c not in columns and c not in seen:
                seen.add(c)
                errors.append(f"{where}: {what} '{c}' does not exist (columns: {sorted(columns)})")
    return errors


def erase_table(
    spark: SparkSession,
    spec: WarehouseDeltaSpec,
    subject_ids: Sequence[str],
    *,
    warehouse_dir: str | None = None,
) -> dict[str, StepResult]:
    """Delete + purge + vacuum without the tracking store (the demo and benchmark use it).

    VACUUM runs right away, so files removed by this erasure are deleted only if the table's
    retention is 0 h; otherwise use :func:`erase_warehouse`, which waits for the retention.
    """
    return {
        "delete": delete_subjects(spark, spec, subject_ids, warehouse_dir=warehouse_dir),
        "purge": purge_deleted_rows(spark, spec, warehouse_dir=warehouse_dir),
        "vacuum": vacuum_table(spark, spec, warehouse_dir=warehouse_dir),
    }


# ---------------------------------------------------------------------------------------------------
# Tracking store
# ---------------------------------------------------------------------------------------------------
@dataclass
class WarehouseTask:
    task_id: int
    request_id: int
    subject_id: str
    status: str
    stage: str | None
    attempts: int
    evidence: dict[str, Any]
    keys: list[str] = field(default_factory=list)
    """The values the table is erased by: the identifiers of the target's types from the request's
    resolved identity (docs/identity.md), else the request's ``subject_id``."""


def pick_tasks(dsn: str, target: Target, codec: IdentityCodec | None = None) -> list[WarehouseTask]:
    """Tasks of this target to work on: request ``in_progress``; task ``pending``, ``in_progress`` or
    ``failed`` with attempts left (exhausted ones are left to the reconcile stage to escalate).
    ``codec``: unseal the requests' identities (a catalog with ``identifier_types``)."""
    with transaction(dsn) as cur:
        tasks = [
            WarehouseTask(**r)
            for r in task_sql.warehouse_workable(cur, KIND, target.name, target.max_attempts)
        ]
        identities = identity_of(cur, codec, sorted({t.request_id for t in tasks})) if codec and tasks else {}
    for t in tasks:
        t.keys = keys_for(identities.get(t.request_id, {}), target.identity_keys) or [t.subject_id]
    return tasks


def pending_counts(dsn: str, catalog: Catalog) -> dict[str, int]:
    """Number of workable tasks per enabled warehouse target (cheap; lets a DAG skip Spark)."""
    return {t.name: len(pick_tasks(dsn, t)) for t in catalog.of_kind(KIND)}


def _claim(dsn: str, tasks: list[WarehouseTask], evidence: dict[str, Any]) -> list[WarehouseTask]:
    """Move picked tasks to in_progress (attempts+1 unless already in progress); returns the claimed."""
    claimed = []
    with transaction(dsn) as cur:
        for t in tasks:
            if t.status == TaskStatus.FAILED:  # a retry: logged as task_retried, then claimed
                if not transition_task(cur, t.task_id, TaskStatus.PENDING, (TaskStatus.FAILED,)):
                    continue
                t.status = TaskStatus.PENDING
            moved = transition_task(
                cur,
                t.task_id,
                TaskStatus.IN_PROGRESS,
                PICKED_STATUSES,
                evidence=evidence,
                increment_attempts=t.status != TaskStatus.IN_PROGRESS,
            )
            if moved:
                if t.status != TaskStatus.IN_PROGRESS:
                    t.attempts += 1  # as the store counts it: this run is a new attempt
                t.status = TaskStatus.IN_PROGRESS
                claimed.append(t)
    return claimed


def _advance(
    dsn: str,
    tasks: list[WarehouseTask],
    from_stage: str | None,
    to_stage: str,
    evidence: dict[str, Any],
    *,
    to_status: TaskStatus = TaskStatus.IN_PROGRESS,
) -> list[WarehouseTask]:
    """Move tasks from ``from_stage`` to ``to_stage`` in one transaction; forward only (rows locked,
    current stage and status checked). Returns the tasks that moved (their ``stage`` updated)."""
    if not tasks:
        return []
    ids = [t.task_id for t in tasks]
    moved = []
    with transaction(dsn) as cur:
        current = task_sql.lock_stages(cur, ids)
        for t in tasks:
            row = current.get(t.task_id)
            if row is None or row["status"] != TaskStatus.IN_PROGRESS or row["stage"] != from_stage:
                continue
            if transition_task(
                cur, t.task_id, to_status, (TaskStatus.IN_PROGRESS,), evidence=evidence, stage=to_stage
            ):
                t.stage = to_stage
                t.status = to_status
                t.evidence = {**t.evidence, **evidence}
                moved.append(t)
    return moved


def _fail(
    dsn: str,
    target: Target,
    tasks: list[WarehouseTask],
    error: str,
    evidence: dict[str, Any] | None = None,
) -> None:
    """Mark ``tasks`` failed (merging ``evidence``); the next attempt waits the target's retry delay
    (:meth:`Target.retry_delay`, exponential in the attempts made, like every other kind)."""
    now = _now()
    with transaction(dsn) as cur:
        for t in tasks:
            if transition_task(
                cur,
                t.task_id,
                TaskStatus.FAILED,
                (TaskStatus.IN_PROGRESS,),
                evidence=evidence,
                last_error=error[:4000],
                next_attempt_at=now + target.retry_delay(max(1, t.attempts)),
            ):
                t.status = TaskStatus.FAILED


def _verify_tasks(
    spark: SparkSession,
    target: Target,
    spec: WarehouseDeltaSpec,
    tasks: list[WarehouseTask],
    warehouse_dir: str | None,
) -> dict[tuple[VerificationOutcome | None, str], list[WarehouseTask]]:
    """Verify the tasks' subjects (one look per table and version) and group the tasks by the answer."""
    reason = adapter_for(target).cannot_verify(target)
    if reason is not None:
        return {(VerificationOutcome.NOT_VERIFIABLE, reason): list(tasks)}
    log_problem = log_check(spark, target, spec, warehouse_dir)
    if log_problem is not None:  # the log could keep identifiers past the SLA: not provably erased
        return {(VerificationOutcome.FAILED, log_problem): list(tasks)}
    groups: dict[tuple[VerificationOutcome | None, str], list[WarehouseTask]] = {}
    by_version: dict[int | None, list[WarehouseTask]] = {}
    for t in tasks:
        v = t.evidence.get("delete_version")
        by_version.setdefault(int(v) - 1 if isinstance(v, int) else None, []).append(t)
    for before, group in by_version.items():
        verdicts = verify_erased(
            spark, spec, [k for t in group for k in t.keys or [t.subject_id]], before_version=before,
            warehouse_dir=warehouse_dir,
        )  # fmt: skip
        for t in group:
            # a task erased by several identifiers: verified only when every one is
            per = [verdicts[str(k)] for k in t.keys or [t.subject_id]]
            v = next((x for x in per if x.ok is None), None) or next((x for x in per if not x.ok), per[0])
            # could not look (None): a failure to retry without a verification, never a pass
            outcome = (
                None if v.ok is None else VerificationOutcome.VERIFIED if v.ok else VerificationOutcome.FAILED
            )
            groups.setdefault((outcome, v.answer), []).append(t)
    return groups


def _vacuum_due(task: WarehouseTask, retention_hours: int) -> datetime | None:
    purged_at = task.evidence.get("purged_at")
    if not purged_at:
        return None
    return datetime.fromisoformat(purged_at) + timedelta(hours=retention_hours)


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------
def erase_target(
    spark: SparkSession,
    target: Target,
    dsn: str,
    *,
    run_id: str,
    warehouse_dir: str | None = None,
    listing_parallelism: int | None = None,
    pseudonym_key: bytes | None = None,
    codec: IdentityCodec | None = None,
    sla_days: int = 30,
) -> TargetReport:
    """Advance every workable task of one warehouse target as far as it can go in this run
    (``pseudonym_key``: for the ``hash`` field strategy; ``codec``: each task is erased by the
    identifiers of the target's types in its request's identity; ``sla_days``: the deadline the
    preflight's log-exposure warnings compare the log retention with, :func:`sla_days_for`)."""
    spec = target.spec_as(WarehouseDeltaSpec)
    try:
        path = table_location(spark, spec, warehouse_dir)
    except Exception:  # noqa: BLE001 - raised again by the first step below and recorded on the tasks
        path = spec.catalog_name or str(spec.path)
    rep = TargetReport(target=target.name, table=spec.table, path=path, mode=spec.mode)
    picked = pick_tasks(dsn, target, codec)
    if not picked:
        return rep
    tasks = _claim(dsn, picked, {"run_id": run_id, "table": spec.table, "path": path, "mode": spec.mode})
    rep.tasks_picked = len(tasks)
    meta = {"run_id": run_id, "target": target.name}
    try:
        # 0. keep identifiers out of the Delta log (statistics, log retention); a no-op once set.
        # Preflight: say per table what was exposed before (the warnings catalog validate prints).
        for warning in table_log_exposure(spark, target, sla_days, warehouse_dir):
            log.warning("target=%s preflight: %s", target.name, warning)
        hardening = harden_log(spark, target, spec, warehouse_dir)
        if hardening["log_properties_changed"]:
            log.info("target=%s log properties set: %s", target.name, hardening["log_properties_changed"])
        # 1. one batched MERGE for every task not deleted yet
        to_delete = [t for t in tasks if t.stage is None]
        if to_delete:
            rep.subjects_in_batch = len({k for t in to_delete for k in t.keys or [t.subject_id]})
            log.info("target=%s step=delete status=start subjects=%d", target.name, rep.subjects_in_batch)
            res = delete_subjects(
                spark,
                spec,
                [k for t in to_delete for k in t.keys or [t.subject_id]],
                warehouse_dir=warehouse_dir,
                user_metadata=meta,
                pseudonym_key=pseudonym_key,
            )
            rep.delete = res
            log.info(
                "target=%s step=delete status=done version=%s metrics=%s",
                target.name,
                res.version,
                res.metrics,
            )
            ev = {**delete_evidence(res, rep.subjects_in_batch), "strategies": spec.strategies(), **hardening}
            rep.advanced["deleted"] = len(_advance(dsn, to_delete, None, WarehouseStage.DELETED, ev))
        # 2. purge deletion vectors
        to_purge = [t for t in tasks if t.stage == WarehouseStage.DELETED]
        if to_purge:
            log.info("target=%s step=purge status=start", target.name)
            res = purge_deleted_rows(spark, spec, warehouse_dir=warehouse_dir, user_metadata=meta)
            rep.purge = res
            vacuum_due = datetime.fromisoformat(res.at) + timedelta(hours=spec.retention_hours)
            ev = {
                "purge_version": res.version,
                "purge_committed": res.committed,
                "purge": "reorg_purge" if res.committed else "not_needed_copy_on_write",
                "purged_files_removed": res.metrics.get("numRemovedFiles", 0),
                "deletion_vectors_removed": res.metrics.get("numDeletionVectorsRemoved", 0),
                "purged_at": res.at,
                "retention_hours": spec.retention_hours,
                "vacuum_due_at": vacuum_due.isoformat(),
            }
            rep.advanced["purged"] = len(
                _advance(dsn, to_purge, WarehouseStage.DELETED, WarehouseStage.PURGED, ev)
            )
        # 3. vacuum once the retention has passed since the purge
        now = _now()
        to_vacuum: list[WarehouseTask] = []
        waiting: list[WarehouseTask] = []
        for t in tasks:
            if t.stage != WarehouseStage.PURGED:
                continue
            due = _vacuum_due(t, spec.retention_hours)
            (to_vacuum if due is not None and due <= now else waiting).append(t)
        rep.waiting_for_retention = len(waiting)
        if waiting:
            rep.vacuum_due_at = max(_vacuum_due(t, spec.retention_hours) or now for t in waiting).isoformat()
        if to_vacuum:
            log.info("target=%s step=vacuum status=start retain_hours=%d", target.name, spec.retention_hours)
            res = vacuum_table(
                spark, spec, warehouse_dir=warehouse_dir, listing_parallelism=listing_parallelism
            )
            rep.vacuum = res
            ev = {
                "vacuum_version": res.version,
                "vacuum_files_deleted": res.metrics.get("numDeletedFiles", 0),
                "vacuum_retain_hours": spec.retention_hours,
                "vacuumed_at": res.at,
            }
            # 4. verify: gone at the latest version, and the version before the delete unreadable
            groups = _verify_tasks(spark, target, spec, to_vacuum, warehouse_dir)
            for (outcome, answer), group in groups.items():
                if outcome is None:  # could not look: retried later, no verification recorded
                    _fail(dsn, target, group, f"verification could not be made: {answer}", ev)
                    rep.verification_failed += len(group)
                    continue
                ver = (
                    adapter_for(target).not_verifiable(target)
                    if outcome == VerificationOutcome.NOT_VERIFIABLE
                    else verification(outcome, VERIFY_METHOD, answer)
                )
                if outcome in (VerificationOutcome.VERIFIED, VerificationOutcome.NOT_VERIFIABLE):
                    rep.advanced["vacuumed"] += len(
                        _advance(
                            dsn,
                            group,
                            WarehouseStage.PURGED,
                            WarehouseStage.VACUUMED,
                            {**ev, "verification": ver},
                            to_status=TaskStatus.SUCCEEDED,
                        )
                    )
                else:
                    rep.verification_failed += len(group)
                    _fail(dsn, target, group, f"verification failed: {answer}", {**ev, "verification": ver})
    except Exception as exc:  # noqa: BLE001 (recorded on the tasks, reported, job exits non-zero)
        # Spark's errors may quote the write's predicate (``key IN ('...')``): no key of the batch goes
        # to the log or the task's last_error
        keys = {k for t in tasks for k in (*t.keys, t.subject_id)}
        msg = scrub_text(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", keys)
        log.error("target=%s failed: %s\n%s", target.name, msg, scrub_text(traceback.format_exc(), keys))
        rep.error = msg
        _fail(dsn, target, [t for t in tasks if t.status == TaskStatus.IN_PROGRESS], msg)
    return rep


def erase_warehouse(
    spark: SparkSession,
    catalog: Catalog,
    dsn: str,
    *,
    settings: Settings,
    warehouse_dir: str | None = None,
    targets: Sequence[str] | None = None,
    run_id: str | None = None,
) -> WarehouseReport:
    """Run the warehouse erasure for every enabled ``warehouse_delta`` target (or ``targets``).

    Subjects come from the tracking store: tasks of kind ``warehouse_delta`` in status pending,
    in_progress or failed (with attempts left) whose request is ``in_progress``. One failing target
    does not stop the others; see ``WarehouseReport.ok``. ``warehouse_dir`` defaults to the
    ``warehouse_dir`` setting.
    """
    warehouse_dir = str(warehouse_dir or settings.warehouse_path)
    wanted = catalog.of_kind(KIND, targets or None)
    codec = IdentityCodec.from_settings(settings) if catalog.has_identity else None
    report = WarehouseReport(run_id=run_id or uuid.uuid4().hex, started_at=_now().isoformat())
    for target in wanted:
        report.targets.append(
            erase_target(
                spark,
                target,
                dsn,
                run_id=report.run_id,
                warehouse_dir=warehouse_dir,
                listing_parallelism=settings.vacuum_listing_parallelism,
                pseudonym_key=pseudonym_key_for(target.spec_as(WarehouseDeltaSpec), settings),
                codec=codec,
                sla_days=sla_days_for(catalog, target),
            )
        )
    report.finished_at = _now().isoformat()
    return report
