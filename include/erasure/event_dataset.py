"""The erasure event dataset: a Delta table of everything that happened to erasure requests, for data engineers.

Source: ``erasure.event_log`` (filled by triggers on request/task/outbox status changes) joined with
``erasure.request`` and ``erasure.task``, read with psycopg2 in ONE read-only REPEATABLE READ snapshot
(so the row counts the data-quality suite compares against are exactly those of the rows read).

One build (:func:`build_event_dataset`):

1. **extract** the window ``occurred_at >= since``: incremental from the table's newest event minus an
   overlap (late commits are picked up; the MERGE makes the overlap harmless), or the whole retention
   window on the first run / ``full_refresh``;
2. **enrich** with the catalog: owner team of the target (the pipeline owner for request-level events),
   target kind, outcome class, typed evidence fields (HTTP status, rows deleted, table version, ...);
3. **validate** with Great Expectations (:mod:`erasure.dq`); a failure raises ``DataQualityError`` and
   NOTHING is written (not even an empty table on the first run);
4. **MERGE** on ``event_id`` into ``<dataset_dir>/erasure_events`` (partitioned by ``event_date``):
   unknown events are inserted, changed ones updated (``row_hash``), identical ones left alone, so a
   re-run or a replay never duplicates;
5. **erased subjects**: MERGE the ``request_completed`` events into ``<dataset_dir>/erased_subjects``
   (one row per completed request, partitioned by ``erasure_date``): the offline dataset that other
   jobs read to erase the subjects from their own tables;
6. **retention** (:func:`enforce_retention`): rows older than ``retention_days`` (the callers pass the
   setting ``ERASURE_DATASET_RETENTION_DAYS``, default 90) are deleted and the tables VACUUMed, so the
   dataset does not keep subject identifiers longer than documented (docs/event-dataset.md).

Readers: Spark (``delta.`path```) or any Delta reader; :func:`sla_compliance_by_team` and friends read
with the independent ``deltalake`` (delta-rs) package + DuckDB, no Spark needed. No Airflow here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from erasure.catalog import Catalog
from erasure.dq import UNKNOWN_TEAM, ValidationSummary, validate_events
from erasure.vocab import AckOutcome, EventOutcome, EventType

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import SparkSession

log = logging.getLogger("erasure.event_dataset")

# Functions that write take a SparkSession or a factory (e.g. ``erasure.spark.get_spark``): with a
# factory, Spark is started only when something has to be written (a run with nothing new starts no JVM).


class _Spark:
    """Resolves a SparkSession-or-factory once, on first use."""

    def __init__(self, spark: Any) -> None:
        self._arg = spark
        self._session: Any = spark if hasattr(spark, "sql") else None

    def __call__(self) -> SparkSession:
        if self._session is None:
            self._session = self._arg()
        return self._session

    @property
    def started(self) -> bool:
        return self._session is not None


def _spark(spark: Any) -> _Spark:
    return spark if isinstance(spark, _Spark) else _Spark(spark)


EVENTS_TABLE = "erasure_events"
SUBJECTS_TABLE = "erased_subjects"

# Airflow Asset identities (plain strings: the core does not import Airflow). Producers of tracking-store
# changes may emit TRACKING_ASSET; downstream DAGs schedule on EVENTS_ASSET / SUBJECTS_ASSET.
TRACKING_ASSET_NAME, TRACKING_ASSET_URI = "erasure_tracking_store", "erasure://tracking/event_log"
EVENTS_ASSET_NAME, EVENTS_ASSET_URI = "erasure_events", "erasure://datasets/erasure_events"
SUBJECTS_ASSET_NAME, SUBJECTS_ASSET_URI = "erased_subjects", "erasure://datasets/erased_subjects"

MAX_RETENTION_DAYS = 3650
DEFAULT_DELETED_FILE_RETENTION_HOURS = 24
DEFAULT_LOG_RETENTION_DAYS = 7
DEFAULT_OVERLAP = timedelta(hours=6)

# (name, Spark SQL type, nullable) - the order is the table's column order.
EVENT_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("event_id", "STRING", False),
    ("event_type", "STRING", False),
    ("event_date", "DATE", False),
    ("occurred_at", "TIMESTAMP", False),
    ("request_id", "BIGINT", True),
    ("external_id", "STRING", True),
    ("subject_type", "STRING", True),
    ("subject_id", "STRING", True),
    ("jurisdiction", "STRING", True),
    ("request_source", "STRING", True),
    ("is_canary", "BOOLEAN", True),
    ("received_at", "TIMESTAMP", True),
    ("due_at", "TIMESTAMP", True),
    ("task_id", "BIGINT", True),
    ("target", "STRING", True),
    ("target_kind", "STRING", True),
    ("owner_team", "STRING", True),
    ("status", "STRING", True),
    ("outcome", "STRING", True),
    ("attempt", "INT", True),
    ("error", "STRING", True),
    ("http_status", "INT", True),
    ("partner_outcome", "STRING", True),
    ("rows_deleted", "BIGINT", True),
    ("table_version", "BIGINT", True),
    ("kafka_event_id", "STRING", True),
    ("details_json", "STRING", True),
    # the audit chain (docs/evidence.md): checkable from this table alone (erasure.evidence.audit.verify_delta);
    # nullable only because Delta adds columns to an existing table as nullable
    ("seq", "BIGINT", True),
    ("prev_hash", "STRING", True),
    ("hash", "STRING", True),
    ("row_hash", "STRING", False),
    ("built_at", "TIMESTAMP", False),
)
EVENT_COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in EVENT_COLUMNS)
HASHED_COLUMNS: tuple[str, ...] = tuple(c for c in EVENT_COLUMN_NAMES if c not in ("row_hash", "built_at"))

SUBJECT_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("erasure_date", "DATE", False),
    ("request_id", "BIGINT", False),
    ("external_id", "STRING", True),
    ("subject_type", "STRING", False),
    ("subject_id", "STRING", False),
    ("jurisdiction", "STRING", True),
    ("is_canary", "BOOLEAN", True),
    ("received_at", "TIMESTAMP", True),
    ("completed_at", "TIMESTAMP", False),
    ("built_at", "TIMESTAMP", False),
)

# Only these columns get min/max statistics in the Delta log: no subject identifier ever lands in
# _delta_log (stats are JSON in the log and outlive VACUUM until log cleanup).
EVENT_STATS_COLUMNS = "event_id,event_type,occurred_at,request_id,task_id,target,seq"
SUBJECT_STATS_COLUMNS = "request_id,completed_at"

_SUCCESS_EVENTS = frozenset(
    {
        EventType.REQUEST_COMPLETED,
        EventType.TASK_SUCCEEDED,
        EventType.ROWS_DELETED,
        EventType.FILES_PURGED,
        EventType.VACUUMED,
    }
)
_FAILURE_EVENTS = frozenset({EventType.REQUEST_FAILED, EventType.TASK_FAILED})
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./:+@=-]+$")


# --------------------------------------------------------------------------------------------------
# locations and table properties
# --------------------------------------------------------------------------------------------------
def _dir(dataset_dir: str | os.PathLike[str]) -> str:
    s = str(dataset_dir)
    p = s if "://" in s else str(Path(s).resolve())
    if not _SAFE_PATH.match(p):
        raise ValueError(f"dataset_dir {s!r}: only letters, digits and ._/:+@=- are allowed in the path")
    return p.rstrip("/")


def events_path(dataset_dir: str | os.PathLike[str]) -> str:
    return f"{_dir(dataset_dir)}/{EVENTS_TABLE}"


def subjects_path(dataset_dir: str | os.PathLike[str]) -> str:
    return f"{_dir(dataset_dir)}/{SUBJECTS_TABLE}"


def check_retention_days(days: int) -> int:
    """``days`` if it is a whole number of days between 1 and :data:`MAX_RETENTION_DAYS`, else ValueError.

    Callers pass ``Settings.dataset_retention_days`` (``ERASURE_DATASET_RETENTION_DAYS``) or an override.
    """
    if isinstance(days, bool) or not isinstance(days, int):
        raise ValueError(
            f"retention_days: a number of days is required (e.g. the setting "
            f"ERASURE_DATASET_RETENTION_DAYS), got {days!r}"
        )
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"retention_days: must be between 1 and {MAX_RETENTION_DAYS}, got {days}")
    return days


def table_properties(
    retention_days: int,
    deleted_file_retention_hours: int = DEFAULT_DELETED_FILE_RETENTION_HOURS,
    stats_columns: str = EVENT_STATS_COLUMNS,
) -> dict[str, str]:
    """Delta table properties: retention of removed files and of the log, no identifier statistics."""
    return {
        "delta.deletedFileRetentionDuration": f"interval {int(deleted_file_retention_hours)} hours",
        "delta.logRetentionDuration": f"interval {DEFAULT_LOG_RETENTION_DAYS} days",
        "delta.dataSkippingStatsColumns": stats_columns,
        "erasure.retentionDays": str(int(retention_days)),
        "erasure.containsSubjectIdentifiers": "true",
        "erasure.docs": "docs/event-dataset.md",
    }


def _ddl(columns: Iterable[tuple[str, str, bool]]) -> str:
    return ", ".join(f"{n} {t}{'' if nullable else ' NOT NULL'}" for n, t, nullable in columns)


def _props_sql(props: Mapping[str, str]) -> str:
    return ", ".join(f"'{k}' = '{v}'" for k, v in props.items())


def _table_exists(path: str) -> bool:
    from deltalake import DeltaTable

    try:
        return DeltaTable.is_deltatable(path)
    except Exception:  # noqa: BLE001 - a missing/unreadable location is "no table"
        return False


def table_version(path: str) -> int | None:
    """Current Delta version of the table at ``path`` (read with delta-rs), None if there is no table."""
    from deltalake import DeltaTable

    return DeltaTable(path).version() if _table_exists(path) else None


def ensure_tables(
    spark: SparkSession | Callable[[], SparkSession],
    dataset_dir: str | os.PathLike[str],
    *,
    retention_days: int,
    deleted_file_retention_hours: int = DEFAULT_DELETED_FILE_RETENTION_HOURS,
) -> None:
    """Create both tables if missing; set their properties only when they differ (no empty commits)."""
    spark = _spark(spark)
    specs = (
        (events_path(dataset_dir), EVENT_COLUMNS, "event_date", EVENT_STATS_COLUMNS),
        (subjects_path(dataset_dir), SUBJECT_COLUMNS, "erasure_date", SUBJECT_STATS_COLUMNS),
    )
    for path, cols, part, stats in specs:
        props = table_properties(retention_days, deleted_file_retention_hours, stats)
        if not _table_exists(path):
            spark().sql(
                f"CREATE TABLE IF NOT EXISTS delta.`{path}` ({_ddl(cols)}) USING DELTA "
                f"PARTITIONED BY ({part}) TBLPROPERTIES ({_props_sql(props)})"
            )
            continue
        from deltalake import DeltaTable

        existing = DeltaTable(path)
        missing = [c for c in cols if c[0] not in existing.schema().to_arrow().names]
        if missing:  # columns added since the table was created (e.g. the audit chain): nullable
            spark().sql(
                f"ALTER TABLE delta.`{path}` ADD COLUMNS ({', '.join(f'{n} {t}' for n, t, _ in missing)})"
            )
        current = existing.metadata().configuration
        changed = {k: v for k, v in props.items() if current.get(k) != v}
        if changed:
            spark().sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({_props_sql(changed)})")


# --------------------------------------------------------------------------------------------------
# extract + enrich (psycopg2, one snapshot)
# --------------------------------------------------------------------------------------------------
SOURCE_SQL = """
SELECT e.event_id::text AS event_id, e.event_type, e.status, e.attempt, e.occurred_at,
       e.request_id, e.task_id, e.target, e.details::text AS details_json, e.seq, e.prev_hash, e.hash,
       r.external_id, r.subject_type, r.subject_id, r.jurisdiction, r.source AS request_source,
       r.is_canary, r.received_at, r.due_at, t.kind AS task_kind
  FROM erasure.event_log e
  LEFT JOIN erasure.request r ON r.id = e.request_id
  LEFT JOIN erasure.task t ON t.id = e.task_id
 WHERE e.occurred_at >= %(since)s
"""
COUNT_SQL = """
SELECT count(*) AS n, count(DISTINCT request_id) AS requests, max(occurred_at) AS max_occurred_at, now() AS snapshot_at
  FROM erasure.event_log WHERE occurred_at >= %(since)s
"""


@dataclass
class SourceBatch:
    """Rows read from the tracking store in one snapshot, and what the store says about that window."""

    rows: list[dict[str, Any]]
    since: datetime
    source_rows: int
    source_requests: int
    max_occurred_at: datetime | None
    snapshot_at: datetime


def extract_events(dsn: str, since: datetime, *, fetch_size: int = 10_000) -> SourceBatch:
    """Read the event log (joined with request and task) for ``occurred_at >= since`` in one snapshot."""
    import psycopg2.extras

    from erasure.db import connect

    conn = connect(dsn)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(COUNT_SQL, {"since": since})
            counts = cur.fetchone()
        rows: list[dict[str, Any]] = []
        # server-side cursor: rows stream in chunks instead of one big result in memory
        with conn.cursor(name="erasure_event_dataset", cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.itersize = fetch_size
            cur.execute(SOURCE_SQL, {"since": since})
            for row in cur:
                rows.append(dict(row))
        conn.rollback()
    finally:
        conn.close()
    if counts is None:  # an aggregate always returns one row
        raise RuntimeError("event log: the count query returned no row")
    return SourceBatch(
        rows=rows,
        since=since,
        source_rows=int(counts["n"]),
        source_requests=int(counts["requests"]),
        max_occurred_at=counts["max_occurred_at"],
        snapshot_at=counts["snapshot_at"],
    )


def _as_int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _first(d: Mapping[str, Any], *paths: str) -> Any:
    for p in paths:
        cur: Any = d
        for part in p.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        if cur is not None:
            return cur
    return None


def outcome_of(event_type: str, status: str | None) -> EventOutcome:
    """Coarse outcome class of an event: success, failure, escalated or pending.

    An ``ack_received`` event's status is the partner's :class:`AckOutcome`.
    """
    if event_type in _SUCCESS_EVENTS:
        return EventOutcome.SUCCESS
    if event_type in _FAILURE_EVENTS:
        return EventOutcome.FAILURE
    if event_type == EventType.TASK_ESCALATED:
        return EventOutcome.ESCALATED
    if event_type == EventType.ACK_RECEIVED:
        return EventOutcome.SUCCESS if status in AckOutcome.successes() else EventOutcome.FAILURE
    return EventOutcome.PENDING


def evidence_fields(details: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, best-effort evidence columns from the event's JSON details (the raw JSON is kept too).

    Task events carry the task's cumulative evidence (sync delete: ``http_status``, ``outcome``;
    Kafka: ``event_id`` and ``ack``; warehouse: rows deleted / table version); ``ack_received`` events
    carry the ack (``outcome``, ``details``) and ``kafka_event_id``.
    """
    error = details.get("error")
    outcome = _first(details, "outcome", "ack.outcome")
    kafka_event_id = _first(details, "kafka_event_id", "event_id", "ack.event_id")
    return {
        "error": str(error)[:2000] if error is not None else None,
        "http_status": _as_int(_first(details, "http_status", "status_code")),
        "partner_outcome": str(outcome) if outcome is not None else None,
        "rows_deleted": _as_int(
            _first(details, "rows_deleted", "deleted_rows", "num_deleted_rows", "metrics.num_deleted_rows")
        ),
        "table_version": _as_int(_first(details, "table_version", "delta_version", "version")),
        "kafka_event_id": str(kafka_event_id) if kafka_event_id is not None else None,
    }


def enrich(rows: Iterable[Mapping[str, Any]], catalog: Catalog, built_at: datetime) -> list[dict[str, Any]]:
    """Source rows -> dataset rows (catalog owner team and kind, outcome, evidence, event_date)."""
    owners = {t.name: t.owner for t in catalog.targets}
    kinds = {t.name: t.kind for t in catalog.targets}
    out = []
    for r in rows:
        target = r.get("target")
        details_json = r.get("details_json") or "{}"
        try:
            details = json.loads(details_json)
        except ValueError:
            details = {}
        if not isinstance(details, dict):
            details = {}
        occurred = r["occurred_at"]
        row = {
            "event_id": r["event_id"],
            "event_type": r["event_type"],
            "event_date": occurred.astimezone(UTC).date() if occurred is not None else None,
            "occurred_at": occurred,
            "request_id": r.get("request_id"),
            "external_id": r.get("external_id"),
            "subject_type": r.get("subject_type"),
            "subject_id": r.get("subject_id"),
            "jurisdiction": r.get("jurisdiction"),
            "request_source": r.get("request_source"),
            "is_canary": r.get("is_canary"),
            "received_at": r.get("received_at"),
            "due_at": r.get("due_at"),
            "task_id": r.get("task_id"),
            "target": target,
            "target_kind": r.get("task_kind") or (kinds.get(target) if target else None),
            "owner_team": (owners.get(target, UNKNOWN_TEAM) if target else catalog.pipeline_owner),
            "status": r.get("status"),
            "outcome": outcome_of(r["event_type"], r.get("status")),
            "attempt": r.get("attempt"),
            "details_json": details_json,
            "seq": r.get("seq"),
            "prev_hash": r.get("prev_hash"),
            "hash": r.get("hash"),
        }
        row.update(evidence_fields(details))
        row["row_hash"] = _row_hash(row)
        row["built_at"] = built_at
        out.append(row)
    return out


def _row_hash(row: Mapping[str, Any]) -> str:
    import hashlib

    def norm(v: Any) -> str:
        if v is None:
            return "\x00"
        if isinstance(v, datetime):
            return v.astimezone(UTC).isoformat()
        return str(v)

    return hashlib.sha256("\x1f".join(norm(row.get(c)) for c in HASHED_COLUMNS).encode()).hexdigest()


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Dataset rows -> pandas DataFrame with stable dtypes (what GX validates)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=list(EVENT_COLUMN_NAMES))
    for c, t, _ in EVENT_COLUMNS:
        if t == "TIMESTAMP":
            frame[c] = pd.to_datetime(frame[c], utc=True)
        elif t in ("BIGINT", "INT"):
            frame[c] = frame[c].astype("Int64")
        elif t == "BOOLEAN":
            frame[c] = frame[c].astype("boolean")
    return frame


def _arrow_schema(columns: Iterable[tuple[str, str, bool]] = EVENT_COLUMNS) -> pa.Schema:
    import pyarrow as pa

    m = {
        "STRING": pa.string(),
        "DATE": pa.date32(),
        "TIMESTAMP": pa.timestamp("us", tz="UTC"),
        "BIGINT": pa.int64(),
        "INT": pa.int32(),
        "BOOLEAN": pa.bool_(),
    }
    return pa.schema([pa.field(n, m[t], nullable) for n, t, nullable in columns])


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, schema=_arrow_schema(), preserve_index=False)


# --------------------------------------------------------------------------------------------------
# write (Spark + Delta MERGE); delta-rs for cheap metadata reads and VACUUM
# --------------------------------------------------------------------------------------------------
def _partition_dates(path: str, column: str) -> list[date]:
    """Partition values of a table (from the log, no data read)."""
    from deltalake import DeltaTable

    return sorted(date.fromisoformat(p[column]) for p in DeltaTable(path).partitions() if p.get(column))


def _read_rs(path: str, columns: list[str], since: date | None = None, filters: Any = None) -> pa.Table:
    """Read a few columns of a dataset table with delta-rs, partitions >= ``since`` only."""
    from deltalake import DeltaTable

    col = "event_date" if path.endswith(EVENTS_TABLE) else "erasure_date"
    parts = [(col, ">=", since.isoformat())] if since is not None else None
    return DeltaTable(path).to_pyarrow_table(partitions=parts, columns=columns, filters=filters)


def changed_rows(batch: pa.Table, dataset_dir: str | os.PathLike[str]) -> pa.Table:
    """Rows of ``batch`` that are not in erasure_events yet or differ from it (by ``row_hash``).

    Read with delta-rs (event_id + row_hash of the batch's partitions only), so a re-run whose events
    are all known costs no Spark job and no empty Delta commit.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return batch
    existing = _read_rs(
        events_path(dataset_dir), ["event_id", "row_hash"], pc.min(batch["event_date"]).as_py()
    )
    if existing.num_rows == 0:
        return batch
    known = dict(zip(existing["event_id"].to_pylist(), existing["row_hash"].to_pylist(), strict=True))
    keep = [
        known.get(e) != h
        for e, h in zip(batch["event_id"].to_pylist(), batch["row_hash"].to_pylist(), strict=True)
    ]
    return batch.filter(pa.array(keep, pa.bool_()))


def merge_events(
    spark: SparkSession | Callable[[], SparkSession], batch: pa.Table, dataset_dir: str | os.PathLike[str]
) -> dict[str, int]:
    """MERGE a validated batch into erasure_events on event_id: insert new, update changed, keep identical."""
    import pyarrow.compute as pc

    todo = changed_rows(batch, dataset_dir)
    if todo.num_rows == 0:
        return {"inserted": 0, "updated": 0}
    min_date = pc.min(todo["event_date"]).as_py()
    view = "erasure_events_batch"
    session = _spark(spark)()
    session.createDataFrame(todo).createOrReplaceTempView(view)
    try:
        res = session.sql(
            f"""
            MERGE INTO delta.`{events_path(dataset_dir)}` AS t
            USING {view} AS s
               ON t.event_id = s.event_id AND t.event_date = s.event_date
              AND t.event_date >= DATE'{min_date.isoformat()}'
             WHEN MATCHED AND t.row_hash <> s.row_hash THEN UPDATE SET *
             WHEN NOT MATCHED THEN INSERT *
            """  # noqa: S608 - paths checked by _dir(), dates are date objects
        ).first()
    finally:
        session.catalog.dropTempView(view)
    if res is None:  # MERGE always returns its metrics row
        raise RuntimeError("MERGE into erasure_events returned no metrics")
    return {"inserted": int(res["num_inserted_rows"]), "updated": int(res["num_updated_rows"])}


SUBJECT_SOURCE_COLUMNS = [
    "event_id",
    "event_date",
    "request_id",
    "external_id",
    "subject_type",
    "subject_id",
    "jurisdiction",
    "is_canary",
    "received_at",
    "occurred_at",
]


def refresh_erased_subjects(
    spark: SparkSession | Callable[[], SparkSession],
    dataset_dir: str | os.PathLike[str],
    *,
    cutoff_date: date,
    built_at: datetime | None = None,
) -> dict[str, int]:
    """Insert the completed requests of erasure_events (event_date >= cutoff) missing from erased_subjects.

    Derived from the Delta events table over the whole retention window (not from the batch), so a
    build that failed between the two MERGEs is healed by the next one. The missing set is computed
    with delta-rs (two narrow reads); Spark MERGEs only when something is missing (insert-only on
    ``request_id``: a subject stays listed until retention removes it).
    """
    import pyarrow as pa

    completed = _read_rs(
        events_path(dataset_dir),
        SUBJECT_SOURCE_COLUMNS,
        cutoff_date,
        filters=[("event_type", "=", EventType.REQUEST_COMPLETED.value)],
    )
    if completed.num_rows == 0:
        return {"inserted": 0}
    listed = set(_read_rs(subjects_path(dataset_dir), ["request_id"]).column(0).to_pylist())
    first: dict[int, dict[str, Any]] = {}
    for r in sorted(completed.to_pylist(), key=lambda r: (r["occurred_at"], r["event_id"])):
        if r["request_id"] is not None and r["subject_id"] is not None and r["request_id"] not in listed:
            first.setdefault(r["request_id"], r)
    if not first:
        return {"inserted": 0}
    built = built_at or datetime.now(UTC)
    rows = [
        {
            "erasure_date": r["event_date"],
            "request_id": r["request_id"],
            "external_id": r["external_id"],
            "subject_type": r["subject_type"],
            "subject_id": r["subject_id"],
            "jurisdiction": r["jurisdiction"],
            "is_canary": r["is_canary"],
            "received_at": r["received_at"],
            "completed_at": r["occurred_at"],
            "built_at": built,
        }
        for r in first.values()
    ]
    source = pa.Table.from_pylist(rows, schema=_arrow_schema(SUBJECT_COLUMNS))
    view = "erased_subjects_batch"
    session = _spark(spark)()
    session.createDataFrame(source).createOrReplaceTempView(view)
    try:
        res = session.sql(
            f"""
            MERGE INTO delta.`{subjects_path(dataset_dir)}` AS t
            USING {view} AS s
               ON t.request_id = s.request_id
             WHEN NOT MATCHED THEN INSERT *
            """  # noqa: S608 - paths checked by _dir()
        ).first()
    finally:
        session.catalog.dropTempView(view)
    if res is None:  # MERGE always returns its metrics row
        raise RuntimeError("MERGE into erased_subjects returned no metrics")
    return {"inserted": int(res["num_inserted_rows"])}


def enforce_retention(
    spark: SparkSession | Callable[[], SparkSession],
    dataset_dir: str | os.PathLike[str],
    *,
    retention_days: int,
    today: date | None = None,
    vacuum: bool = True,
) -> dict[str, Any]:
    """Delete rows older than ``retention_days`` (by event/erasure date, UTC) and VACUUM both tables.

    The DELETE (Spark, partition predicate: whole files are dropped) runs only when a partition older
    than the cutoff exists. VACUUM (delta-rs, ``full``: every unreferenced file) keeps removed files for
    the table's ``delta.deletedFileRetentionDuration`` so readers of a recent snapshot do not break, then
    deletes them: identifiers are physically gone at most ``retention_days`` + that duration + one
    build interval after the event.
    """
    from deltalake import DeltaTable

    spark = _spark(spark)
    days = check_retention_days(retention_days)
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=days)
    out: dict[str, Any] = {
        "retention_days": days,
        "cutoff_date": cutoff.isoformat(),
        "deleted": {},
        "vacuumed": {},
    }
    for path, col in ((events_path(dataset_dir), "event_date"), (subjects_path(dataset_dir), "erasure_date")):
        name = path.rsplit("/", 1)[-1]
        if not _table_exists(path):
            continue
        deleted = 0
        if any(d < cutoff for d in _partition_dates(path, col)):
            res = spark().sql(f"DELETE FROM delta.`{path}` WHERE {col} < DATE'{cutoff.isoformat()}'").first()  # noqa: S608
            deleted = int(res[0]) if res is not None and res[0] is not None else 0
        out["deleted"][name] = deleted
        if vacuum:
            dt = DeltaTable(path)
            hours = _interval_hours(
                dt.metadata().configuration.get("delta.deletedFileRetentionDuration", "interval 168 hours")
            )
            files = dt.vacuum(
                retention_hours=hours, dry_run=False, enforce_retention_duration=True, full=True
            )
            out["vacuumed"][name] = {"retain_hours": hours, "files_deleted": len(files)}
    return out


def raw_subject_requests(dataset_dir: str | os.PathLike[str]) -> set[int]:
    """Requests whose rows in the dataset still hold a raw ``subject_id`` (not a keyed hash): read
    with delta-rs, two narrow columns, no Spark."""
    import pyarrow.compute as pc

    from erasure.pseudonym import PREFIX

    out: set[int] = set()
    for path in (events_path(dataset_dir), subjects_path(dataset_dir)):
        if not _table_exists(path):
            continue
        t = _read_rs(path, ["request_id", "subject_id"])
        raw = t.filter(pc.invert(pc.fill_null(pc.starts_with(t["subject_id"], PREFIX), True)))
        out.update(int(r) for r in raw["request_id"].to_pylist() if r is not None)
    return out


def pseudonymise_subjects(
    spark: SparkSession | Callable[[], SparkSession],
    dataset_dir: str | os.PathLike[str],
    digests: Mapping[int, str],
    *,
    vacuum: bool = True,
) -> dict[str, Any]:
    """Replace the raw ``subject_id`` of the given requests (request id -> keyed hash, from the
    minimised tracking store) in both tables, one MERGE each, then VACUUM with no retention so the
    files that held the raw values are deleted now (docs/personal-data.md). ``subject_id`` has no
    statistics in the log (:data:`EVENT_STATS_COLUMNS`), so ``_delta_log`` never held it."""
    from deltalake import DeltaTable

    out: dict[str, Any] = {"updated": {}, "vacuumed": {}}
    if not digests:
        return out
    session = _spark(spark)()
    view = "erasure_subject_digests"
    session.createDataFrame(
        [(int(k), str(v)) for k, v in digests.items()], "request_id BIGINT, digest STRING"
    ).createOrReplaceTempView(view)
    try:
        for path in (events_path(dataset_dir), subjects_path(dataset_dir)):
            name = path.rsplit("/", 1)[-1]
            if not _table_exists(path):
                continue
            res = session.sql(
                f"""MERGE INTO delta.`{path}` AS t USING {view} AS s
                      ON t.request_id = s.request_id AND t.subject_id <> s.digest
                    WHEN MATCHED THEN UPDATE SET t.subject_id = s.digest"""  # noqa: S608 - checked path
            ).first()
            out["updated"][name] = int(res["num_updated_rows"]) if res is not None else 0
            if vacuum and out["updated"][name]:
                files = DeltaTable(path).vacuum(
                    retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True
                )
                out["vacuumed"][name] = len(files)
    finally:
        session.catalog.dropTempView(view)
    return out


def _interval_hours(interval: str) -> int:
    m = re.fullmatch(r"\s*interval\s+(\d+)\s+(hour|hours|day|days|week|weeks)\s*", interval, re.IGNORECASE)
    if not m:
        raise ValueError(
            f"delta.deletedFileRetentionDuration {interval!r}: expected 'interval <n> hours|days|weeks'"
        )
    n, unit = int(m.group(1)), m.group(2).lower()
    return n * {"hour": 1, "hours": 1, "day": 24, "days": 24, "week": 168, "weeks": 168}[unit]


# --------------------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    events_path: str
    subjects_path: str
    since: str
    full_refresh: bool
    source_rows: int
    source_requests: int
    inserted: int = 0
    updated: int = 0
    subjects_inserted: int = 0
    events_version: int | None = None
    subjects_version: int | None = None
    max_occurred_at: str | None = None
    unknown_owner_rows: int = 0
    validation: dict[str, Any] = field(default_factory=dict)
    retention: dict[str, Any] | None = None
    spark_started: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_event(dataset_dir: str | os.PathLike[str]) -> datetime | None:
    """The newest ``occurred_at`` in erasure_events (reads only the newest partition, with delta-rs)."""
    import pyarrow.compute as pc

    path = events_path(dataset_dir)
    if not _table_exists(path):
        return None
    dates = _partition_dates(path, "event_date")
    if not dates:
        return None
    newest = pc.max(_read_rs(path, ["occurred_at"], dates[-1])["occurred_at"]).as_py()
    return newest.astimezone(UTC) if newest is not None else None


def _since(
    dataset_dir: str | os.PathLike[str],
    *,
    now: datetime,
    retention_days: int,
    full_refresh: bool,
    overlap: timedelta,
) -> datetime:
    floor = datetime.combine(now.date() - timedelta(days=retention_days), datetime.min.time(), tzinfo=UTC)
    newest = None if full_refresh else newest_event(dataset_dir)
    return floor if newest is None else max(floor, newest - overlap)


def build_event_dataset(
    spark: SparkSession | Callable[[], SparkSession],
    dsn: str,
    catalog: Catalog,
    dataset_dir: str | os.PathLike[str],
    *,
    retention_days: int,
    full_refresh: bool = False,
    overlap: timedelta = DEFAULT_OVERLAP,
    apply_retention: bool = True,
    deleted_file_retention_hours: int = DEFAULT_DELETED_FILE_RETENTION_HOURS,
    now: datetime | None = None,
) -> BuildReport:
    """Extract -> enrich -> validate (GX) -> MERGE events -> MERGE erased subjects -> retention.

    ``spark`` is a session or a factory; with a factory Spark starts only when there is something to
    write. ``retention_days`` is the dataset's retention (``Settings.dataset_retention_days`` or an
    override). Raises ``erasure.dq.DataQualityError`` (nothing written) when the batch fails validation.
    """
    spark = _spark(spark)
    days = check_retention_days(retention_days)
    now = now or datetime.now(UTC)
    since = _since(dataset_dir, now=now, retention_days=days, full_refresh=full_refresh, overlap=overlap)
    batch = extract_events(dsn, since)
    rows = enrich(batch.rows, catalog, built_at=now)
    frame = to_frame(rows)
    summary: ValidationSummary = validate_events(
        frame,
        expected_rows=batch.source_rows,
        expected_requests=batch.source_requests,
        teams=[t.name for t in catalog.teams],
        columns=EVENT_COLUMN_NAMES,
    )
    # -- validated: from here on we write ------------------------------------------------------
    ensure_tables(
        spark, dataset_dir, retention_days=days, deleted_file_retention_hours=deleted_file_retention_hours
    )
    merged = merge_events(spark, to_arrow(frame), dataset_dir)
    subjects = refresh_erased_subjects(
        spark, dataset_dir, cutoff_date=now.date() - timedelta(days=days), built_at=now
    )
    report = BuildReport(
        events_path=events_path(dataset_dir),
        subjects_path=subjects_path(dataset_dir),
        since=since.isoformat(),
        full_refresh=full_refresh,
        source_rows=batch.source_rows,
        source_requests=batch.source_requests,
        inserted=merged["inserted"],
        updated=merged["updated"],
        subjects_inserted=subjects["inserted"],
        max_occurred_at=batch.max_occurred_at.isoformat() if batch.max_occurred_at else None,
        unknown_owner_rows=int((frame["owner_team"] == UNKNOWN_TEAM).sum()) if len(frame) else 0,
        validation=summary.to_dict(),
    )
    if apply_retention:
        report.retention = enforce_retention(spark, dataset_dir, retention_days=days, today=now.date())
    report.spark_started = spark.started
    report.events_version = table_version(report.events_path)
    report.subjects_version = table_version(report.subjects_path)
    log.info(
        "event dataset built: %s source rows since %s, %s inserted, %s updated, %s subjects inserted (v%s)",
        report.source_rows,
        report.since,
        report.inserted,
        report.updated,
        report.subjects_inserted,
        report.events_version,
    )
    return report


# --------------------------------------------------------------------------------------------------
# independent reader (delta-rs + DuckDB): the queries of docs/event-dataset.md
# --------------------------------------------------------------------------------------------------
SLA_COMPLIANCE_SQL = """
WITH tasks AS (
    SELECT request_id, target, owner_team, max(due_at) AS due_at,
           min(CASE WHEN event_type = 'task_succeeded' THEN occurred_at END) AS erased_at
      FROM erasure_events
     WHERE target IS NOT NULL AND NOT coalesce(is_canary, false)
     GROUP BY request_id, target, owner_team
)
SELECT owner_team,
       count(*) AS tasks,
       count(CASE WHEN erased_at <= due_at THEN 1 END) AS on_time,
       count(CASE WHEN erased_at > due_at OR (erased_at IS NULL AND current_timestamp > due_at) THEN 1 END) AS breached,
       count(CASE WHEN erased_at IS NULL AND current_timestamp <= due_at THEN 1 END) AS open_within_sla,
       round(100.0 * count(CASE WHEN erased_at <= due_at THEN 1 END)
             / nullif(count(CASE WHEN erased_at IS NOT NULL OR current_timestamp > due_at THEN 1 END), 0), 1) AS sla_compliance_pct
  FROM tasks
 GROUP BY owner_team
 ORDER BY owner_team
"""
MEDIAN_TIME_TO_ERASE_SQL = """
WITH done AS (
    SELECT request_id, target, min(received_at) AS received_at, min(occurred_at) AS erased_at
      FROM erasure_events
     WHERE event_type = 'task_succeeded' AND NOT coalesce(is_canary, false)
     GROUP BY request_id, target
)
SELECT target,
       count(*) AS erased_tasks,
       round(median(date_diff('second', received_at, erased_at)) / 3600.0, 3) AS median_hours_to_erase
  FROM done
 GROUP BY target
 ORDER BY target
"""
ERASED_SUBJECTS_PER_DAY_SQL = """
SELECT erasure_date, subject_type, count(*) AS subjects
  FROM erased_subjects
 WHERE NOT coalesce(is_canary, false)
 GROUP BY erasure_date, subject_type
 ORDER BY erasure_date, subject_type
"""


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a dataset table with delta-rs (no Spark)."""
    from deltalake import DeltaTable

    return DeltaTable(path).to_pyarrow_table(columns=columns)


def _duckdb_query(dataset_dir: str | os.PathLike[str], sql: str) -> list[dict[str, Any]]:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if EVENTS_TABLE in sql:
            con.register(EVENTS_TABLE, read_table(events_path(dataset_dir)))
        if SUBJECTS_TABLE in sql:
            con.register(SUBJECTS_TABLE, read_table(subjects_path(dataset_dir)))
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def sla_compliance_by_team(dataset_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per owner team: tasks, on time, breached, open within SLA, compliance % (canaries excluded)."""
    return _duckdb_query(dataset_dir, SLA_COMPLIANCE_SQL)


def median_time_to_erase_by_target(dataset_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per target: erased tasks and the median hours from request received to task succeeded."""
    return _duckdb_query(dataset_dir, MEDIAN_TIME_TO_ERASE_SQL)


def erased_subjects_per_day(dataset_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per erasure date and subject type: number of subjects whose erasure completed that day."""
    return _duckdb_query(dataset_dir, ERASED_SUBJECTS_PER_DAY_SQL)
