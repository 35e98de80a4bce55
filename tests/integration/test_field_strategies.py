"""Field strategies and several key columns on real PostgreSQL and real Spark + Delta (issue 21).

One catalog rule set, two engines: rows found by any key column; ``null``, ``constant``, ``mask`` and
``hash`` (keyed pseudonym) applied in place, key columns included; the same input gives the same
pseudonym in PostgreSQL, in Spark and in Python; a re-run changes nothing; the evidence names the
strategy per column and the verification counts what is not erased.
"""

from __future__ import annotations

import secrets
from datetime import date
from pathlib import Path

import pytest

from erasure.catalog import Target
from erasure.pseudonym import keyed_hash
from erasure.settings import Settings
from erasure.targets.base import Claimed, Context
from erasure.targets.registry import adapter_for
from tests.helpers.db import query

pytestmark = pytest.mark.integration

FIELDS = {
    "email": {"strategy": "hash"},
    "customer_id": {"strategy": "hash"},
    "full_name": {"strategy": "constant", "value": "n/a"},
    "birth_date": {"strategy": "null"},
    "notes": {"strategy": "mask"},
}
PEOPLE = [  # customer_id, referrer_id, email, full_name, birth_date, notes, score
    ("cus_a", None, "a@example.com", "Ann", date(1990, 1, 1), "likes tea", 1),
    ("cus_b", "cus_a", "b@example.com", "Bob", date(1991, 2, 2), "referred", 2),  # cus_a as referrer
    ("cus_c", None, "c@example.com", "Cid", date(1992, 3, 3), "keep me", 3),
]


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "pseudonym-hmac.key"
    path.write_text(secrets.token_hex(32) + "\n")
    return path


def _ctx(key_file: Path, **kw) -> Context:
    return Context(settings=Settings(pseudonym_key_file=key_file), **kw)


def _target(kind: str, section: dict) -> Target:
    return Target.model_validate(
        {
            "name": f"fs_{kind}",
            "kind": kind,
            "owner": "data-platform",
            "subject_types": ["customer"],
            "identity_key": "customer_id",
            kind: section,
        }
    )


def _claimed(*subjects: str) -> list[Claimed]:
    return [Claimed(task_id=i, request_id=i, subject_id=s, attempts=0) for i, s in enumerate(subjects, 1)]


def test_postgres_mask_by_two_keys_with_every_strategy(tracking_db, key_file, monkeypatch):
    monkeypatch.setenv("ERASURE_TEST_FS_DSN", tracking_db)
    query(tracking_db, "CREATE SCHEMA IF NOT EXISTS fs_test")
    query(tracking_db, "DROP TABLE IF EXISTS fs_test.customers")
    query(
        tracking_db,
        """CREATE TABLE fs_test.customers (customer_id text, referrer_id text, email text, full_name text,
                                           birth_date date, notes text, score int)""",
    )
    for p in PEOPLE:
        query(tracking_db, "INSERT INTO fs_test.customers VALUES (%s, %s, %s, %s, %s, %s, %s)", p)
    target = _target(
        "postgres_table",
        {
            "dsn_env": "ERASURE_TEST_FS_DSN",
            "table": "fs_test.customers",
            "key_columns": ["customer_id", "referrer_id"],
            "mode": "mask",
            "fields": FIELDS,
        },
    )
    adapter = adapter_for(target)
    outcomes = adapter.erase_batch(_ctx(key_file), target, _claimed("cus_a", "cus_zzz"), lambda o: None)
    by = {o.item.subject_id: o for o in outcomes}
    assert by["cus_a"].ok and by["cus_a"].evidence["rows_masked"] == 2  # its row, and the row it referred
    assert by["cus_zzz"].ok and by["cus_zzz"].evidence["rows_masked"] == 0
    ev = by["cus_a"].evidence
    assert ev["strategies"] == {
        "email": "hash",
        "customer_id": "hash",
        "full_name": "constant",
        "birth_date": "null",
        "notes": "mask",
    }
    assert ev["verification"]["outcome"] == "verified" and ev["verification"]["answer"] == "0 rows not erased"
    key = bytes.fromhex(key_file.read_text().strip())
    rows = {r["score"]: r for r in query(tracking_db, "SELECT * FROM fs_test.customers")}
    for score, (cid, _ref, email, *_rest) in ((1, PEOPLE[0]), (2, PEOPLE[1])):
        r = rows[score]
        assert r["email"] == keyed_hash(key, email) and r["customer_id"] == keyed_hash(key, cid)
        assert (r["full_name"], r["birth_date"], r["notes"]) == ("n/a", None, "[erased]")
    assert rows[2]["referrer_id"] == "cus_a"  # no rule for it: kept (the catalog decides)
    assert rows[3]["email"] == "c@example.com" and rows[3]["customer_id"] == "cus_c"  # someone else

    # a re-run finds the subject's rows already erased: nothing changes, nothing is hashed twice
    again = adapter.erase_batch(_ctx(key_file), target, _claimed("cus_a"), lambda o: None)
    assert again[0].ok and again[0].evidence["rows_masked"] == 0
    assert query(tracking_db, "SELECT * FROM fs_test.customers ORDER BY score")[:2] == [rows[1], rows[2]]


def test_postgres_delete_by_either_key_and_bad_rules_fail_permanently(tracking_db, key_file, monkeypatch):
    monkeypatch.setenv("ERASURE_TEST_FS_DSN", tracking_db)
    query(tracking_db, "CREATE SCHEMA IF NOT EXISTS fs_test")
    query(tracking_db, "DROP TABLE IF EXISTS fs_test.orders")
    query(tracking_db, "CREATE TABLE fs_test.orders (buyer_id text, seller_id text, amount int)")
    query(
        tracking_db,
        "INSERT INTO fs_test.orders VALUES ('cus_a','cus_x',1), ('cus_y','cus_a',2), ('cus_y','cus_x',3)",
    )
    section = {
        "dsn_env": "ERASURE_TEST_FS_DSN",
        "table": "fs_test.orders",
        "key_columns": ["buyer_id", "seller_id"],
    }
    target = _target("postgres_table", section)
    [o] = adapter_for(target).erase_batch(_ctx(key_file), target, _claimed("cus_a"), lambda o: None)
    assert o.ok and o.evidence["rows_deleted"] == 2 and o.evidence["strategies"] == {"*": "delete_row"}
    assert [r["amount"] for r in query(tracking_db, "SELECT amount FROM fs_test.orders")] == [3]

    bad = _target("postgres_table", {**section, "mode": "mask", "fields": {"amount": {"strategy": "hash"}}})
    [o] = adapter_for(bad).erase_batch(_ctx(key_file), bad, _claimed("cus_y"), lambda o: None)
    assert not o.ok and o.permanent and "column 'amount' is integer; strategy hash needs text" in o.error


def _write_table(spark, path: str, two_keys: bool) -> None:
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("customer_id", T.StringType()),
            T.StructField("referrer_id", T.StringType()),
            T.StructField("email", T.StringType()),
            T.StructField("full_name", T.StringType()),
            T.StructField("birth_date", T.DateType()),
            T.StructField("notes", T.StringType()),
            T.StructField("score", T.IntegerType()),
        ]
    )
    spark.createDataFrame(PEOPLE, schema).write.format("delta").mode("overwrite").save(path)


@pytest.mark.parametrize("two_keys", [False, True], ids=["merge-one-key", "update-two-keys"])
def test_warehouse_mask_with_every_strategy_same_pseudonyms_as_postgres(spark, key_file, tmp_path, two_keys):
    from erasure.targets.warehouse_delta import WarehouseDeltaSpec
    from erasure.warehouse import delete_subjects, verify_erased

    path = str(tmp_path / "customers")
    _write_table(spark, path, two_keys)
    keys = ["customer_id", "referrer_id"] if two_keys else ["customer_id"]
    spec = WarehouseDeltaSpec.model_validate(
        {"table": "customers", "path": path, "key_columns": keys, "mode": "mask", "fields": FIELDS}
    )
    key = bytes.fromhex(key_file.read_text().strip())
    res = delete_subjects(spark, spec, ["cus_a"], pseudonym_key=key)
    assert res.committed and res.metrics["numTargetRowsUpdated"] == (2 if two_keys else 1)
    rows = {r["score"]: r.asDict() for r in spark.read.format("delta").load(path).collect()}
    a = rows[1]
    assert a["email"] == keyed_hash(key, "a@example.com") and a["customer_id"] == keyed_hash(key, "cus_a")
    assert (a["full_name"], a["birth_date"], a["notes"]) == ("n/a", None, "[erased]")
    if two_keys:  # found by its referrer column too
        assert rows[2]["email"] == keyed_hash(key, "b@example.com") and rows[2]["referrer_id"] == "cus_a"
    else:
        assert rows[2]["email"] == "b@example.com"
    assert rows[3]["email"] == "c@example.com"
    verdict = verify_erased(spark, spec, ["cus_a"], before_version=None)["cus_a"]
    assert verdict.ok, verdict.answer

    again = delete_subjects(spark, spec, ["cus_a"], pseudonym_key=key)  # nothing left to change
    assert not again.committed and again.version == res.version


def test_warehouse_delete_by_either_key_column(spark, tmp_path):
    from erasure.targets.warehouse_delta import WarehouseDeltaSpec
    from erasure.warehouse import delete_subjects, verify_erased

    path = str(tmp_path / "customers")
    _write_table(spark, path, True)
    spec = WarehouseDeltaSpec.model_validate(
        {"table": "customers", "path": path, "key_columns": ["customer_id", "referrer_id"]}
    )
    before = verify_erased(spark, spec, ["cus_a"], before_version=None)["cus_a"]
    assert before.ok is False and "2 row(s) at the latest version" in before.answer
    res = delete_subjects(spark, spec, ["cus_a"])
    assert res.committed and res.metrics["numTargetRowsDeleted"] == 2
    assert [r["score"] for r in spark.read.format("delta").load(path).collect()] == [3]


def test_missing_pseudonym_key_names_the_file(tmp_path):
    from erasure.evidence.keys import KeyFileError
    from erasure.pseudonym import load_key

    with pytest.raises(KeyFileError, match="keys init"):
        load_key(tmp_path / "nope.key")
    (tmp_path / "short.key").write_text("abcd")
    with pytest.raises(KeyFileError, match="at least 32 bytes"):
        load_key(tmp_path / "short.key")


def test_log_hardening_keeps_identifiers_out_of_delta_log_statistics(spark, tmp_path):
    """The job sets statistics columns and log retention once; verification's log check fails a table
    that collects statistics on personal columns or keeps its log longer."""
    from erasure.targets.warehouse_delta import WarehouseDeltaSpec
    from erasure.warehouse import _table_properties, harden_log, log_check

    path = str(tmp_path / "customers")
    _write_table(spark, path, False)
    section = {
        "table": "customers",
        "path": path,
        "key_column": "customer_id",
        "log_retention_days": 9,
    }
    target = _target("warehouse_delta", section)
    target = target.model_copy(update={"personal_data": ["email", "full_name", "birth_date", "notes"]})
    spec = WarehouseDeltaSpec.model_validate(section)
    assert "every column" in log_check(spark, target, spec)  # a fresh table: statistics on every column

    first = harden_log(spark, target, spec)
    assert first["log_stats_columns"] == "referrer_id,score" and first["log_retention_days"] == 9
    assert set(first["log_properties_changed"]) == {
        "delta.dataSkippingStatsColumns",
        "delta.logRetentionDuration",
    }
    props = _table_properties(spark, path)
    assert props["delta.logRetentionDuration"] == "interval 9 days"
    assert log_check(spark, target, spec) is None
    assert harden_log(spark, target, spec)["log_properties_changed"] == []  # idempotent: no new commit

    spark.sql(
        f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.dataSkippingStatsColumns' = 'email,score')"
    )
    assert "personal columns ['email']" in log_check(spark, target, spec)
