"""Warehouse erasure against real Spark + Delta tables and the real tracking store (tiny tables).

One module-scoped set of generated tables; every test erases its own disjoint subjects and checks
the rest of each table (count and checksum of all other rows) is untouched.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from erasure.settings import get_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUBJECTS = [f"cus_whsub{i:03d}" for i in range(17)]
WH_TARGETS = ("wh_orders", "wh_page_views", "wh_customer_dim")


# --------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def warehouse(spark, catalog, tmp_path_factory) -> str:
    from erasure_demo.warehouse_gen import generate_tables

    d = str(tmp_path_factory.mktemp("warehouse"))
    tables = generate_tables(spark, catalog, 2000, SUBJECTS, customers=200, warehouse_dir=d)
    assert tables["wh_orders"].partition_columns == ["order_date"]
    assert tables["wh_page_views"].deletion_vectors and not tables["wh_orders"].deletion_vectors
    return d


def _spec(catalog, target: str):
    return catalog.target(target).spec


def _register(dsn: str, subjects: list[str], targets=WH_TARGETS, tag: str = "") -> dict[tuple[str, str], int]:
    """In-progress requests with one pending warehouse task per target; returns task ids."""
    ids = {}
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        for s in subjects:
            cur.execute(
                """INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source,
                                                status, due_at)
                   VALUES (%s, 'customer', %s, 'test', 'api', 'in_progress', now() + interval '30 days')
                   RETURNING id""",
                (f"wh-test-{s}{tag}-{time.time_ns()}", s),
            )
            rid = cur.fetchone()[0]
            for t in targets:
                cur.execute(
                    "INSERT INTO erasure.task (request_id, target, kind) VALUES (%s, %s, 'warehouse_delta') RETURNING id",
                    (rid, t),
                )
                ids[(s, t)] = cur.fetchone()[0]
    conn.close()
    return ids


def _tasks(dsn: str, ids) -> dict[int, dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT * FROM erasure.task WHERE id = ANY(%s)", (list(ids),))
        rows = {r["id"]: dict(r) for r in cur.fetchall()}
    conn.close()
    return rows


def _state(spark, path: str, key: str, subjects: list[str]) -> dict[str, Any]:
    """Count + order-independent checksum of all rows NOT of ``subjects``; rows of ``subjects``."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(path)
    is_subject = F.col(key).isin(subjects)
    others = df.where(~is_subject).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.xxhash64(*[F.col(c) for c in df.columns]).cast("decimal(38,0)")).alias("checksum"),
    )
    row = others.collect()[0]
    return {"others": (row["n"], row["checksum"]), "subject_rows": df.where(is_subject).count()}


def _version(spark, path: str) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, path).history(1).collect()[0]["version"]


def _raw_values(path: str, columns: list[str]) -> set[str]:
    """Every value of ``columns`` in every Parquet data file on disk (live or not)."""
    import pyarrow.parquet as pq

    values: set[str] = set()
    files = [f for f in glob.glob(f"{path}/**/*.parquet", recursive=True) if "_delta_log" not in f]
    assert files, f"no parquet files under {path}"
    for f in files:
        t = pq.read_table(f, columns=[c for c in columns if c in pq.read_schema(f).names])
        for c in t.column_names:
            values.update(str(v) for v in t.column(c).to_pylist() if v is not None)
    return values


def _data_files(path: str) -> set[str]:
    return {
        os.path.basename(f)
        for f in glob.glob(f"{path}/**/*.parquet", recursive=True)
        if "_delta_log" not in f
    }


def _unreferenced_files(spark, path: str) -> set[str]:
    """Parquet files on disk that the current version does not reference (VACUUM leftovers)."""
    live = {os.path.basename(f) for f in spark.read.format("delta").load(path).inputFiles()}
    return _data_files(path) - live


def spec_key_not_in_stats(spec, stats_columns: str) -> bool:
    cols = set(stats_columns.split(",")) if stats_columns else set()
    return not cols & {*spec.key_columns, *spec.rules()}


# ----------------------------------------------------------------------------------------- tests
def test_erasure_deletes_masks_purges_and_vacuums_with_evidence(spark, catalog, warehouse, tracking_db):
    from erasure.warehouse import MASK_STRING, erase_warehouse

    subjects = SUBJECTS[0:3]
    before = {}
    for t in WH_TARGETS:
        spec = _spec(catalog, t)
        p = spec.resolved_path(warehouse)
        before[t] = {"version": _version(spark, p), **_state(spark, p, spec.key_column, subjects)}
    cd = spark.read.format("delta").load(_spec(catalog, "wh_customer_dim").resolved_path(warehouse))
    personal = [r["email"] for r in cd.where(cd.customer_id.isin(subjects)).collect()]
    assert (
        len(personal) == 3
        and before["wh_orders"]["subject_rows"] == 9
        and before["wh_page_views"]["subject_rows"] == 15
    )

    ids = _register(tracking_db, subjects)
    report = erase_warehouse(spark, catalog, tracking_db, settings=get_settings(), warehouse_dir=warehouse)

    assert report.ok, report.to_dict()
    by_target = {r.target: r for r in report.targets}
    assert by_target["wh_orders"].delete.metrics["numTargetRowsDeleted"] == 9
    assert by_target["wh_page_views"].delete.metrics["numTargetRowsDeleted"] == 15
    assert by_target["wh_customer_dim"].delete.metrics["numTargetRowsUpdated"] == 3
    for t in WH_TARGETS:
        r = by_target[t]
        assert r.tasks_picked == 3 and r.subjects_in_batch == 3
        assert r.advanced == {"deleted": 3, "purged": 3, "vacuumed": 3}

    for t in WH_TARGETS:
        spec = _spec(catalog, t)
        p = spec.resolved_path(warehouse)
        after = _state(spark, p, spec.key_column, subjects)
        # other rows untouched: same count, same checksum over every column
        assert after["others"] == before[t]["others"], t
        if spec.mode == "delete":
            assert after["subject_rows"] == 0, t
        # the pre-erasure version is unreadable (files vacuumed) or no longer holds the subjects
        try:
            old = spark.read.format("delta").option("versionAsOf", before[t]["version"]).load(p)
            leaked = old.where(old[spec.key_column].isin(subjects)).count()
        except Exception as exc:  # noqa: BLE001
            assert (
                "FILE_NOT_EXIST" in str(exc) or "FileNotFound" in str(exc) or "does not exist" in str(exc)
            ), exc
            leaked = 0
        if spec.mode == "delete":
            assert leaked == 0, t
        # no data file on disk (live or not) holds a subject id or its personal values
        raw = _raw_values(p, [spec.key_column, "email"])
        if spec.mode == "delete":
            assert not raw & set(subjects), t
        assert not raw & set(personal), t
        assert _unreferenced_files(spark, p) == set(), t
        # the Delta log carries no personal values either (statistics on non-personal columns only)
        log_text = "".join(Path(f).read_text() for f in glob.glob(f"{p}/_delta_log/*.json"))
        assert not [s for s in [*subjects, *personal] if s in log_text], t

    cd = spark.read.format("delta").load(_spec(catalog, "wh_customer_dim").resolved_path(warehouse))
    masked = cd.where(cd.customer_id.isin(subjects)).collect()
    assert len(masked) == 3
    assert all(
        r["full_name"] == MASK_STRING and r["email"] == MASK_STRING and r["birth_date"] is None
        for r in masked
    )

    tasks = _tasks(tracking_db, ids.values())
    for (subj, t), tid in ids.items():
        row = tasks[tid]
        ev = row["evidence"]
        assert row["status"] == "succeeded" and row["stage"] == "vacuumed", row
        assert (
            ev["delete_version"] > before[t]["version"]
            and ev["vacuum_version"] >= ev["purge_version"] >= ev["delete_version"]
        )
        assert ev["run_id"] == report.run_id and ev["batch_subjects"] == 3 and "vacuumed_at" in ev
        if t == "wh_page_views":  # deletion vectors: REORG ... APPLY (PURGE) committed a new version
            assert ev["purge"] == "reorg_purge" and ev["purge_version"] > ev["delete_version"]
            assert ev["deletion_vectors_removed"] >= 1
        else:
            assert ev["purge"] == "not_needed_copy_on_write" and ev["purge_version"] == ev["delete_version"]
        assert ev["num_deleted_rows"] == {"wh_orders": 9, "wh_page_views": 15, "wh_customer_dim": 0}[t]
        # proof: looked up at the latest version, and the version before the delete is gone
        ver = ev["verification"]
        assert ver["outcome"] == "verified" and ver["method"].startswith("delta time travel"), ver
        assert f"at v{ev['vacuum_version']}" in ver["answer"], ver
        assert f"v{ev['delete_version'] - 1} (before the delete) unreadable: files vacuumed" in ver["answer"]
        assert subj not in ver["answer"]
        # the Delta log keeps no identifier statistics and expires within the SLA (checked by verification)
        assert ev["log_retention_days"] == 7 and "log files kept 7 days" in ver["answer"]
        assert spec_key_not_in_stats(_spec(catalog, t), ev["log_stats_columns"])
    conn = psycopg2.connect(tracking_db)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT event_type FROM erasure.event_log WHERE task_id = %s ORDER BY occurred_at",
            (ids[(subjects[0], "wh_page_views")],),
        )
        events = [r[0] for r in cur.fetchall()]
    conn.close()
    for e in ("task_dispatched", "rows_deleted", "files_purged", "vacuumed", "task_succeeded"):
        assert e in events, events


def test_rerun_for_the_same_subjects_is_harmless(spark, catalog, warehouse, tracking_db):
    from erasure.warehouse import erase_warehouse

    subjects = SUBJECTS[3:5]
    _register(tracking_db, subjects)
    assert erase_warehouse(spark, catalog, tracking_db, settings=get_settings(), warehouse_dir=warehouse).ok
    paths = {t: _spec(catalog, t).resolved_path(warehouse) for t in WH_TARGETS}
    snap = {
        t: (_version(spark, p), _state(spark, p, _spec(catalog, t).key_column, subjects))
        for t, p in paths.items()
    }

    # same run again: nothing is picked (all succeeded), nothing is written
    again = erase_warehouse(spark, catalog, tracking_db, settings=get_settings(), warehouse_dir=warehouse)
    assert again.ok and all(r.tasks_picked == 0 and r.delete is None for r in again.targets)

    # a new request for the same subjects (the first ones completed): succeeds with 0 rows erased
    conn = psycopg2.connect(tracking_db)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE erasure.request SET status = 'completed' WHERE subject_id = ANY(%s)", (subjects,))
    conn.close()
    ids = _register(tracking_db, subjects, tag="-again")
    third = erase_warehouse(spark, catalog, tracking_db, settings=get_settings(), warehouse_dir=warehouse)
    assert third.ok
    for r in (x for x in third.targets if x.target in WH_TARGETS):  # nothing matched: no new version
        assert (
            r.advanced["vacuumed"] == 2 and not r.delete.committed and r.delete.version == snap[r.target][0]
        ), r
    for row in _tasks(tracking_db, ids.values()).values():
        assert row["status"] == "succeeded" and row["stage"] == "vacuumed"
        assert row["evidence"]["num_deleted_rows"] == 0 and row["evidence"]["num_masked_rows"] == 0
    for t, p in paths.items():
        assert _state(spark, p, _spec(catalog, t).key_column, subjects) == snap[t][1], t


def test_task_waits_at_purged_until_retention_passed(spark, catalog, warehouse, tracking_db):
    """With a 2 h retention, VACUUM would not delete the erased files yet: the task stays in progress."""
    from erasure.catalog import Catalog
    from erasure.warehouse import erase_warehouse

    data = catalog.model_dump()
    for t in data["targets"]:
        if t["name"] == "wh_orders":
            t["warehouse_delta"]["retention_hours"] = 2
    cat2 = Catalog.model_validate(data)
    subjects = SUBJECTS[5:6]
    ids = _register(tracking_db, subjects, targets=("wh_orders",))
    for _ in range(2):  # the second run changes nothing: retention still not passed
        rep = erase_warehouse(
            spark, cat2, tracking_db, settings=get_settings(), warehouse_dir=warehouse, targets=["wh_orders"]
        )
        assert rep.ok and rep.targets[0].waiting_for_retention == 1 and rep.targets[0].vacuum is None
    row = _tasks(tracking_db, ids.values())[ids[(subjects[0], "wh_orders")]]
    assert row["status"] == "in_progress" and row["stage"] == "purged" and row["attempts"] == 1
    ev = row["evidence"]
    assert ev["retention_hours"] == 2 and ev["vacuum_due_at"] > ev["purged_at"] and "vacuum_version" not in ev


def test_old_version_still_readable_fails_verification_until_vacuumed(spark, catalog, warehouse, tracking_db):
    """VACUUM ran (its due time was reached on paper) but kept the erased files: the version before the
    delete still holds the subject, so the task must not succeed; with the files really gone it does."""
    from erasure.catalog import Catalog
    from erasure.evidence.receipts import readiness
    from erasure.warehouse import erase_warehouse

    def with_retention(hours: int) -> Catalog:
        data = catalog.model_dump()
        for t in data["targets"]:
            if t["name"] == "wh_orders":
                t["warehouse_delta"]["retention_hours"] = hours
        return Catalog.model_validate(data)

    subjects = SUBJECTS[14:15]
    tid = _register(tracking_db, subjects, targets=("wh_orders",))[(subjects[0], "wh_orders")]
    run = {"settings": get_settings(), "warehouse_dir": warehouse, "targets": ["wh_orders"]}
    rep = erase_warehouse(spark, with_retention(2), tracking_db, **run)
    assert rep.ok and rep.targets[0].waiting_for_retention == 1
    # pretend the 2 h passed: VACUUM RETAIN 2 HOURS runs, but the erased files are seconds old and stay
    with psycopg2.connect(tracking_db) as conn, conn.cursor() as cur:
        cur.execute(
            """UPDATE erasure.task SET evidence = evidence || jsonb_build_object('purged_at', %s::text)
                WHERE id = %s""",
            ((datetime.now(UTC) - timedelta(hours=3)).isoformat(), tid),
        )
    conn.close()
    rep = erase_warehouse(spark, with_retention(2), tracking_db, **run)
    assert rep.targets[0].vacuum is not None and rep.targets[0].verification_failed == 1, rep.to_dict()
    row = _tasks(tracking_db, [tid])[tid]
    ver = row["evidence"]["verification"]
    assert row["status"] == "failed" and row["stage"] == "purged", row
    assert ver["outcome"] == "failed" and "still readable with 3 row(s)" in ver["answer"], ver
    assert "verification failed" in row["last_error"] and subjects[0] not in row["last_error"]
    assert readiness({"status": "completed"}, [{"target": "wh_orders", **row}]) is not None

    # the retry, with the retention the table really has (0 h): the files go, the task is verified
    with psycopg2.connect(tracking_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE erasure.task SET next_attempt_at = now() WHERE id = %s", (tid,))
    conn.close()
    rep = erase_warehouse(spark, with_retention(0), tracking_db, **run)
    assert rep.ok and rep.targets[0].advanced["vacuumed"] == 1, rep.to_dict()
    row = _tasks(tracking_db, [tid])[tid]
    assert row["status"] == "succeeded" and row["stage"] == "vacuumed" and row["attempts"] == 2
    assert row["evidence"]["verification"]["outcome"] == "verified"
    assert readiness({"status": "completed"}, [{"target": "wh_orders", **row}]) is None


def test_a_failed_write_names_no_subject_in_the_log_or_the_task(
    spark, catalog, warehouse, tracking_db, monkeypatch, caplog
):
    """A Spark error that quotes the write's predicate (``customer_id IN ('cus_...')``) is recorded
    and logged without the batch's keys."""
    import erasure.warehouse as wh

    subjects = SUBJECTS[5:6]

    def failing(spark, spec, subject_ids, **kw):  # what Spark raises on a bad plan, keys quoted
        raise RuntimeError(
            f"[INTERNAL_ERROR] cannot plan coalesce(customer_id IN ('{subject_ids[0]}'), false)"
        )

    monkeypatch.setattr(wh, "delete_subjects", failing)
    ids = _register(tracking_db, subjects, targets=("wh_orders",))
    with caplog.at_level("ERROR", logger="erasure.warehouse"):
        rep = wh.erase_warehouse(
            spark,
            catalog,
            tracking_db,
            settings=get_settings(),
            warehouse_dir=warehouse,
            targets=["wh_orders"],
        )
    assert not rep.ok and "cannot plan" in rep.targets[0].error
    row = next(iter(_tasks(tracking_db, ids.values()).values()))
    assert row["status"] == "failed" and "cannot plan" in row["last_error"], row
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot plan" in logged
    for text in (row["last_error"], rep.targets[0].error, logged):
        assert subjects[0] not in text, text


def test_bad_catalog_table_fails_the_target_with_a_clear_error(
    spark, catalog, warehouse, tracking_db, tmp_path
):
    from erasure.catalog import Catalog
    from erasure.warehouse import erase_warehouse

    data = catalog.model_dump()
    for t in data["targets"]:
        if t["name"] == "wh_orders":
            t["warehouse_delta"].update(key_column="buyer_id", key_columns=["buyer_id"])
    cat2 = Catalog.model_validate(data)
    ids = _register(tracking_db, SUBJECTS[6:7], targets=("wh_orders",))
    rep = erase_warehouse(
        spark, cat2, tracking_db, settings=get_settings(), warehouse_dir=warehouse, targets=["wh_orders"]
    )
    assert not rep.ok and "key_column 'buyer_id'" in rep.targets[0].error
    row = next(iter(_tasks(tracking_db, ids.values()).values()))
    assert row["status"] == "failed" and row["stage"] is None and "buyer_id" in row["last_error"]
    # the one retry policy: the next attempt waits the target's exponential retry delay
    target = cat2.target("wh_orders")
    wait = row["next_attempt_at"] - row["updated_at"]
    assert row["attempts"] == 1 and abs(wait - target.retry_delay(1)) < timedelta(seconds=5)
    _reopen = "UPDATE erasure.task SET status = 'pending', next_attempt_at = now() WHERE id = ANY(%s)"
    with psycopg2.connect(tracking_db) as conn, conn.cursor() as cur:
        cur.execute(_reopen, (list(ids.values()),))
    erase_warehouse(
        spark, cat2, tracking_db, settings=get_settings(), warehouse_dir=warehouse, targets=["wh_orders"]
    )
    row = next(iter(_tasks(tracking_db, ids.values()).values()))
    wait = row["next_attempt_at"] - row["updated_at"]
    assert row["attempts"] == 2 and abs(wait - target.retry_delay(2)) < timedelta(seconds=5)
    assert target.retry_delay(2) == 2 * target.retry_delay(1)


def test_killed_job_leaves_tables_consistent_and_next_run_completes(spark, catalog, warehouse, tracking_db):
    """SIGKILL the spark job (python + JVM) while its first MERGE runs; Delta's commit protocol keeps
    the table at a committed version; the next run finishes the erasure and vacuums the debris."""
    from erasure.warehouse import erase_warehouse, harden_log

    subjects = SUBJECTS[7:10]
    spec = _spec(catalog, "wh_orders")
    p = spec.resolved_path(warehouse)
    harden_log(spark, catalog.target("wh_orders"), spec, warehouse)  # its one metadata commit, if due, first
    v0 = _version(spark, p)
    s0 = _state(spark, p, spec.key_column, subjects)
    ids = _register(tracking_db, subjects, targets=("wh_orders",))
    on_disk = _data_files(p)

    env = {
        **os.environ,
        "ERASURE_TRACKING_DSN": tracking_db,
        "ERASURE_WAREHOUSE_DIR": warehouse,
        "ERASURE_SPARK_MASTER": "local[1]",
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "spark_jobs" / "warehouse_erase.py"), "--target", "wh_orders"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: python driver + Spark JVM
    )
    merging = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "target=wh_orders step=delete status=start" in line:
                merging.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert merging.wait(300), "the job never started its MERGE"
        # kill the moment the MERGE has written its first new data file (written, not yet committed)
        deadline = time.monotonic() + 300
        while not (_data_files(p) - on_disk) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    # consistent: the table reads in full at a committed version, before or after the MERGE, never between
    v1 = _version(spark, p)
    s1 = _state(spark, p, spec.key_column, subjects)
    assert s1["others"] == s0["others"]
    assert (v1, s1["subject_rows"]) in ((v0, s0["subject_rows"]), (v0 + 1, 0)), (v0, v1, s1)
    rows = _tasks(tracking_db, ids.values())
    assert {r["status"] for r in rows.values()} <= {"in_progress", "pending"}
    debris = _unreferenced_files(spark, p)
    print(f"killed at version {v1} (before the MERGE: {v0}); files written but not committed: {len(debris)}")
    if v1 == v0:  # killed mid-write: the new files exist but no version references them
        assert debris, "the kill came before the MERGE wrote anything"

    report = erase_warehouse(spark, catalog, tracking_db, settings=get_settings(), warehouse_dir=warehouse)
    assert report.ok, report.to_dict()
    rows = _tasks(tracking_db, ids.values())
    assert all(r["status"] == "succeeded" and r["stage"] == "vacuumed" for r in rows.values()), rows
    s2 = _state(spark, p, spec.key_column, subjects)
    assert s2["subject_rows"] == 0 and s2["others"] == s0["others"]
    assert _unreferenced_files(spark, p) == set()  # the killed write's files are vacuumed


def test_dag_runs_the_job_and_skips_spark_when_idle(spark, catalog, warehouse, tracking_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("ERASURE_WAREHOUSE_DIR", warehouse)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[1]"}')
    dag = DagBag(dag_folder=str(ROOT / "dags" / "erasure_warehouse.py")).get_dag("erasure_warehouse")

    idle = dag.test()
    assert idle.state == "success"
    assert {ti.task_id: ti.state for ti in idle.get_task_instances()}["erase"] == "skipped"

    subjects = SUBJECTS[10:12]
    ids = _register(tracking_db, subjects, targets=("wh_page_views",))
    run = dag.test()
    assert run.state == "success"
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "pending_work": "success",
        "erase": "success",
    }
    rows = _tasks(tracking_db, ids.values())
    assert all(r["status"] == "succeeded" and r["stage"] == "vacuumed" for r in rows.values()), rows
    sp = _spec(catalog, "wh_page_views")
    assert _state(spark, sp.resolved_path(warehouse), sp.key_column, subjects)["subject_rows"] == 0


def test_dag_a_broken_table_fails_alone(spark, catalog, warehouse, tracking_db, monkeypatch, tmp_path):
    """One mapped task instance per table: a table whose catalog entry does not fit fails (its tasks
    failed with the error), the other table of the same run completes."""
    import shutil

    import yaml
    from airflow.dag_processing.dagbag import DagBag

    cat_dir = tmp_path / "catalog"
    shutil.copytree(ROOT / "include" / "catalog", cat_dir)
    data = yaml.safe_load((cat_dir / "targets.yaml").read_text())
    for t in data["targets"]:
        if t["name"] == "wh_orders":
            t["warehouse_delta"]["key_column"] = "buyer_id"
    (cat_dir / "targets.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("ERASURE_CATALOG", str(cat_dir))
    monkeypatch.setenv("ERASURE_WAREHOUSE_DIR", warehouse)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[1]"}')
    subjects = SUBJECTS[15:17]
    ids = _register(tracking_db, subjects, targets=("wh_orders", "wh_page_views"))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "erasure_warehouse.py")).get_dag("erasure_warehouse")
    dag.get_task("erase").retries = 0  # the retry would wait minutes; here one try shows the isolation

    run = dag.test()
    assert run.state == "failed"
    erase = {ti.rendered_map_index: ti.state for ti in run.get_task_instances() if ti.task_id == "erase"}
    assert erase == {"wh_orders": "failed", "wh_page_views": "success"}, erase
    rows = _tasks(tracking_db, ids.values())
    for (_s, t), tid in ids.items():
        if t == "wh_page_views":
            assert rows[tid]["status"] == "succeeded" and rows[tid]["stage"] == "vacuumed", rows[tid]
        else:
            assert rows[tid]["status"] == "failed" and "buyer_id" in rows[tid]["last_error"], rows[tid]


def test_job_runs_under_spark_submit(spark, catalog, warehouse, tracking_db, tmp_path):
    """The entry point as README documents it: ``spark-submit --master ... --jars <Delta, JDBC> job.py``
    (spark-submit from the pinned pyspark; the driver is this environment's Python)."""
    subjects = SUBJECTS[12:14]
    spec = _spec(catalog, "wh_page_views")
    p = spec.resolved_path(warehouse)
    s0 = _state(spark, p, spec.key_column, subjects)
    assert s0["subject_rows"] > 0
    ids = _register(tracking_db, subjects, targets=("wh_page_views",))

    jars = sorted(glob.glob(os.path.join(os.environ["ERASURE_SPARK_JARS_DIR"], "*.jar")))
    assert any("delta-spark" in j for j in jars), jars
    report_file = tmp_path / "report.json"
    env = {
        **os.environ,
        "ERASURE_TRACKING_DSN": tracking_db,
        "ERASURE_WAREHOUSE_DIR": warehouse,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    env.pop("ERASURE_SPARK_MASTER", None)  # the master is spark-submit's --master
    spark_submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--jars", ",".join(jars),
         str(ROOT / "spark_jobs" / "warehouse_erase.py"), "--target", "wh_page_views",
         "--run-id", "spark-submit-test", "--report", str(report_file)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["run_id"] == "spark-submit-test"
    [t] = report["targets"]
    assert t["target"] == "wh_page_views" and not t.get("error") and t["tasks_picked"] == 2, t
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report  # the report is also stdout's last line
    rows = _tasks(tracking_db, ids.values())
    assert all(r["status"] == "succeeded" and r["stage"] == "vacuumed" for r in rows.values()), rows
    s1 = _state(spark, p, spec.key_column, subjects)
    assert s1["subject_rows"] == 0 and s1["others"] == s0["others"]
