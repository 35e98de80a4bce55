"""Expire a Delta table's old log files now, so identifiers in their file statistics do not linger.

Delta keeps min/max statistics of (by default) the first 32 columns of every data file in the
``add`` actions of ``_delta_log`` JSON commits (and in ``.crc`` checksum files). After an erasure the
rows are gone from the data files, but the commit that once added a file holding them still names the
values until Delta cleans the log: files older than ``delta.logRetentionDuration`` are deleted only
when a checkpoint is written (every 10 commits), so a table that is rarely written keeps them for
ever. :func:`expire_log` writes a checkpoint and runs Delta's own expired-log cleanup (which keeps what
time travel within the retention needs); the retention job calls it daily for every warehouse table,
so an identifier leaves ``_delta_log`` at most ``logRetentionDuration`` (7-30 days, within the SLA)
after its erasure. Spark's Delta API through py4j (Delta has no SQL command for it). No Airflow here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def log_files(path: str) -> list[str]:
    """The table's ``_delta_log`` entries (names), for reports and tests (local paths only)."""
    d = Path(path) / "_delta_log"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def expire_log(spark: Any, path: str) -> dict[str, Any]:
    """Checkpoint the table at ``path`` and delete its expired log files (``delta.logRetentionDuration``).
    Returns the version checkpointed and how many log entries went."""
    jvm = spark._jvm  # noqa: SLF001 - Delta's log API is only on the JVM side
    before = log_files(path) if "://" not in path else []
    delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)  # noqa: SLF001
    delta_log.checkpoint()
    snapshot = delta_log.unsafeVolatileSnapshot()
    delta_log.doLogCleanup(snapshot, jvm.scala.Option.empty())
    after = log_files(path) if "://" not in path else []
    return {"version": int(snapshot.version()), "log_entries_deleted": max(len(before) - len(after), 0)}
