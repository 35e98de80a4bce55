"""The row-level warehouse write by a key predicate, on real Spark + Delta (issue 21).

:func:`erasure.spark.key_in` builds ``key IN (...)`` as one SQL expression (``Column.isin`` made one
Py4J call per key: 10,000 keys cost 7-10 s before Spark planned anything). These tests check what the
expression matches (keys with quotes and backslashes, a non-string key column, NULL keys never
matching) and that a deletion-vector table is erased by ONE ``DELETE`` with it, idempotently, with
no key in the predicate Delta records in its log.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

ODD = ["o'brien", "back\\slash", "both'\\", "plain", "ünïcødé", "new\nline"]


def test_key_in_matches_exactly_the_keys(spark):
    from erasure.spark import key_in

    rows = [(k,) for k in [*ODD, "other", "o'brie", "back\\\\slash"]] + [(None,)]
    df = spark.createDataFrame(rows, "k string")
    got = {r["k"] for r in df.where(key_in("k", ODD)).collect()}
    assert got == set(ODD)
    # never NULL: a NULL key is "not a subject", so its negation keeps the row
    kept = {r["k"] for r in df.where(~key_in("k", ODD)).collect()}
    assert kept == {"other", "o'brie", "back\\\\slash", None}
    assert df.where(key_in("k", [])).count() == 0


def test_key_in_compares_the_string_form_of_other_types(spark):
    from erasure.spark import key_in

    df = spark.createDataFrame([(1,), (20,), (300,)], "`user id` bigint")
    assert sorted(
        r[0] for r in df.where(key_in("user id", ["20", "300", "x"], as_string=True)).collect()
    ) == [20, 300]


def test_deletion_vector_table_erased_by_one_delete(spark, tmp_path):
    from delta.tables import DeltaTable

    from erasure.targets.warehouse_delta import WarehouseDeltaSpec
    from erasure.vocab import WarehouseWrite
    from erasure.warehouse import delete_subjects

    path = tmp_path / "clicks"
    subjects = [f"cus_{i:05d}" for i in range(0, 3000, 3)]  # 1,000 subjects, every third customer
    rows = [(f"cus_{i % 3000:05d}", i) for i in range(9000)]
    (
        spark.createDataFrame(rows, "customer_id string, n long")
        .repartition(4)
        .write.format("delta")
        .option("delta.enableDeletionVectors", "true")
        .save(str(path))
    )
    spec = WarehouseDeltaSpec.model_validate(
        {"table": "clicks", "path": str(path), "key_column": "customer_id", "deletion_vectors": True}
    )
    res = delete_subjects(spark, spec, subjects)
    assert res.write == WarehouseWrite.PREDICATE and res.committed, res
    assert res.metrics["numTargetRowsDeleted"] == 3000, res.metrics
    history = DeltaTable.forPath(spark, str(path)).history(1).collect()[0]
    assert history["operation"] == "DELETE"
    assert int(history["operationMetrics"]["numDeletionVectorsAdded"]) > 0  # marked, not rewritten
    # the commit's recorded predicate names no key (Delta writes it into _delta_log)
    assert "cus_" not in history["operationParameters"]["predicate"], history["operationParameters"]
    assert spark.conf.get("spark.sql.debug.maxToStringFields") != "0"  # restored after the write
    left = spark.read.format("delta").load(str(path))
    assert left.count() == 6000
    assert left.where(left.customer_id.isin(subjects[:50])).count() == 0  # (a few: isin is fine here)
    again = delete_subjects(spark, spec, subjects)
    assert not again.committed and again.metrics["numTargetRowsDeleted"] == 0, again
