"""A writer that commits while the copy-on-write one-pass rewrite is running (issue 21), on real Spark +
Delta: the rewrite's commit must be refused, never lose what the other writer committed, and the
erasure still completes.

:func:`erasure.warehouse.rewrite_table` reads the table and overwrites it in one Delta transaction, so
the commit removes the files of the snapshot it started from. The test holds ONE task of that rewrite
inside a Python UDF (the other core stays free) until a second thread of the same Spark session has
committed its own write, so the other commit lands between the rewrite's planning and its commit.

* An ``UPDATE`` of another customer's rows rewrites a file the erasure read and is removing.
* A blind append (new rows, no file removed): the rewrite read the whole table, so Delta refuses its
  commit too (``ConcurrentAppendException``), unlike a row-level DELETE, which lets blind appends pass.

Either way :func:`erasure.warehouse.delete_subjects` then erases by the row-level DELETE on the new
snapshot in the same call (``write == predicate``, a warning names the refusal): the subjects are gone and
the other write is kept. Without that fallback a table appended to all the time would refuse every
one-pass rewrite.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SUBJECTS = ["cus_conc0001", "cus_conc0002"]
OTHER = "cus_conc0099"  # the concurrent writer's customer


def _spec(path: str) -> Any:
    from erasure.targets.warehouse_delta import WarehouseDeltaSpec

    return WarehouseDeltaSpec.model_validate(
        {"table": "conc_orders", "path": path, "key_column": "customer_id"}
    )


def _make_table(spark, path: str) -> None:
    ids = [*SUBJECTS, OTHER, *[f"cus_conc{i:04d}" for i in range(100, 120)]]
    rows = [(i, c, 10) for i, c in enumerate(ids * 3)]
    (
        spark.createDataFrame(rows, "order_id long, customer_id string, score int")
        .repartition(2)
        .write.format("delta")
        .save(path)
    )


def _held_rewrite(monkeypatch, gate: Path) -> None:
    """Wrap :func:`erasure.warehouse.rewrite_table`: the first task of the rewrite's scan writes
    ``gate/started`` and waits (at most 120 s) for ``gate/go``; the row condition is unchanged."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    import erasure.warehouse as wh

    original = wh.rewrite_table
    started, go = str(gate / "started"), str(gate / "go")

    def hold(_: Any) -> bool:
        try:
            os.close(os.open(started, os.O_CREAT | os.O_EXCL))  # only the first call holds
        except FileExistsError:
            return False
        deadline = time.time() + 120
        while not os.path.exists(go) and time.time() < deadline:
            time.sleep(0.1)
        return False

    held = F.udf(hold, BooleanType())

    def rewrite(spark, path, rows, values):
        return original(spark, path, rows | held(F.col("customer_id")), values)

    monkeypatch.setattr(wh, "rewrite_table", rewrite)


def _concurrently(gate: Path, write) -> threading.Thread:
    """Run ``write`` in another thread once the rewrite is held, then let the rewrite go on."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            deadline = time.time() + 300
            while not (gate / "started").exists():
                if time.time() > deadline:
                    raise TimeoutError("the rewrite never started its scan")
                time.sleep(0.1)
            write()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            (gate / "go").touch()

    t = threading.Thread(target=run, daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


def _rows(spark, path: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in spark.read.format("delta").load(path).collect():
        out.setdefault(r["customer_id"], []).append(r["score"])
    return out


def _erase_while(spark, tmp_path, monkeypatch, caplog, write, extra_subjects=()) -> Any:
    from erasure.warehouse import delete_subjects

    path = str(tmp_path / "orders")
    _make_table(spark, path)
    gate = tmp_path / "gate"
    gate.mkdir()
    _held_rewrite(monkeypatch, gate)
    writer = _concurrently(gate, lambda: write(path))
    with caplog.at_level("WARNING", logger="erasure.warehouse"):
        res = delete_subjects(spark, _spec(path), [*SUBJECTS, *extra_subjects], one_pass_min_share=0.0)
    writer.join(60)
    assert not writer.errors, writer.errors  # type: ignore[attr-defined]
    assert (gate / "started").exists()  # the rewrite really was held while the other write committed
    return path, res


def _operations(spark, path: str) -> list[str]:
    from delta.tables import DeltaTable

    return [r["operation"] for r in DeltaTable.forPath(spark, path).history().orderBy("version").collect()]


# Enough subjects per data file (ONE_PASS_SUBJECTS_PER_FILE) take the rewrite without the counting
# scan: the same conflict detection guards it.
UNCOUNTED = [f"cus_absent{i:04d}" for i in range(120)]


@pytest.mark.parametrize("extra", [(), UNCOUNTED], ids=["counted", "uncounted"])
def test_update_committed_during_the_rewrite_is_kept(spark, tmp_path, monkeypatch, caplog, extra):
    from delta.tables import DeltaTable

    from erasure.vocab import WarehouseWrite

    def update(path: str) -> None:
        DeltaTable.forPath(spark, path).update(f"customer_id = '{OTHER}'", {"score": "99"})

    path, res = _erase_while(spark, tmp_path, monkeypatch, caplog, update, extra)
    refused = [r.getMessage() for r in caplog.records if "one-pass rewrite refused" in r.getMessage()]
    assert len(refused) == 1 and "Concurrent" in refused[0], refused
    assert res.write == WarehouseWrite.PREDICATE and res.committed, res
    assert res.metrics["numTargetRowsDeleted"] == 6, res.metrics
    after = _rows(spark, path)
    assert after[OTHER] == [99, 99, 99]  # the update was not lost
    assert not set(SUBJECTS) & set(after), after  # and the subjects are gone
    assert _operations(spark, path) == ["WRITE", "UPDATE", "DELETE"]  # no overwrite was committed


def test_append_committed_during_the_rewrite_is_kept(spark, tmp_path, monkeypatch, caplog):
    from erasure.vocab import WarehouseWrite

    new = [(1000 + i, "cus_conc0500", 7) for i in range(4)]

    def append(path: str) -> None:
        spark.createDataFrame(new, "order_id long, customer_id string, score int").write.format("delta").mode(
            "append"
        ).save(path)

    path, res = _erase_while(spark, tmp_path, monkeypatch, caplog, append)
    refused = [r.getMessage() for r in caplog.records if "one-pass rewrite refused" in r.getMessage()]
    assert len(refused) == 1 and "ConcurrentAppendException" in refused[0], refused
    assert res.write == WarehouseWrite.PREDICATE and res.committed, res
    after = _rows(spark, path)
    assert after["cus_conc0500"] == [7, 7, 7, 7]  # the append was not lost
    assert not set(SUBJECTS) & set(after) and len(after[OTHER]) == 3, after
    assert _operations(spark, path) == ["WRITE", "WRITE", "DELETE"]


def test_many_subjects_per_file_rewrite_partitioned_table_without_counting(spark, tmp_path):
    """Delete mode with at least ONE_PASS_SUBJECTS_PER_FILE subjects per file: the one-pass rewrite
    without the counting scan, on a partitioned table; the rows
    deleted come from Delta's record counts; the partitioning is kept; a re-run writes nothing."""
    from delta.tables import DeltaTable

    from erasure.vocab import WarehouseWrite
    from erasure.warehouse import ONE_PASS_SUBJECTS_PER_FILE, delete_subjects

    path = str(tmp_path / "orders_by_day")
    ids = [*SUBJECTS, OTHER, *[f"cus_conc{i:04d}" for i in range(100, 120)]]
    rows = [(i, c, 10, f"2026-11-0{1 + i % 3}") for i, c in enumerate(ids * 3)]
    df = spark.createDataFrame(rows, "order_id long, customer_id string, score int, day string")
    df.repartition(5).write.format("delta").partitionBy("day").save(path)
    files = DeltaTable.forPath(spark, path).detail().collect()[0]["numFiles"]
    subjects = [*SUBJECTS, *[f"cus_absent{i:05d}" for i in range(ONE_PASS_SUBJECTS_PER_FILE * files)]]

    res = delete_subjects(spark, _spec(path), subjects)
    assert res.write == WarehouseWrite.REWRITE and res.committed, res
    assert res.metrics["numTargetRowsDeleted"] == 6, res.metrics
    assert res.metrics["numFilesInTable"] == files and "numTargetFilesTouched" not in res.metrics, res.metrics
    after = spark.read.format("delta").load(path)
    assert after.count() == len(rows) - 6
    assert not after.where(after.customer_id.isin(SUBJECTS)).count()
    detail = DeltaTable.forPath(spark, path).detail().collect()[0]
    assert list(detail["partitionColumns"]) == ["day"]
    again = delete_subjects(spark, _spec(path), subjects)
    assert again.write == WarehouseWrite.NONE and not again.committed, again
