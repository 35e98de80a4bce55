"""Issue 18 on the real stack: no raw identifier survives retention; erasures re-applied after a restore.

One scenario, every store real: a customer with data in two sync partners, a Kafka consumer and two
warehouse Delta tables (copy-on-write and deletion vectors), and an employee in a sync partner and
the HR Postgres table. They are filed through the ``erasure_intake`` DAG (``dag.test``, the conf holds
the ids), erased by the pipeline's functions, get receipts and rows in the Delta event dataset. Then
the clock is moved past the raw-identifier retention and the ``erasure_retention`` DAG runs. A scan
of every table of the tracking store and of the Airflow metadata DB, the event dataset's files, the
receipts and the erased warehouse tables (``_delta_log`` and data files) finds neither id; before
retention the same scan found them (the scan can fail). Receipts and the audit chain still verify.

Then a backup taken before the erasure is restored (the warehouse table's directory, the HR rows)
and ``reapply`` erases both people again from the ledger's keyed hashes (no raw id left anywhere in
the pipeline), with ``erasure_reapplied`` events in the audit log.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from erasure.db import transaction
from erasure.settings import get_settings
from tests.e2e.test_canary import _run_pipeline, world_factory  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {
    "crm_contacts",
    "billing_profiles",
    "support_desk",
    "marketing_events",
    "wh_orders",
    "wh_page_views",
    "hr_directory",
}
WAREHOUSE = ("wh_orders", "wh_page_views")


# -- scanning every store for raw identifiers -------------------------------------------------------
def scan_database(dsn: str, needles: list[str]) -> dict[str, int]:
    """Rows per table column (every schema but the system ones) whose text holds one of ``needles``."""
    found: dict[str, int] = {}
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables
                    WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"""
            )
            for (table,) in cur.fetchall():
                cur.execute(
                    f"SELECT count(*) FROM {table} x WHERE x::text LIKE ANY(%s)",  # noqa: S608 - quoted names
                    ([f"%{n}%" for n in needles],),
                )
                if cur.fetchone()[0]:  # which columns: the message names them
                    schema, _, name = table.partition(".")
                    cur.execute(
                        "SELECT quote_ident(column_name) FROM information_schema.columns WHERE "
                        "quote_ident(table_schema) = %s AND quote_ident(table_name) = %s",
                        (schema, name),
                    )
                    for (col,) in cur.fetchall():
                        cur.execute(
                            f"SELECT count(*) FROM {table} WHERE {col}::text LIKE ANY(%s)",  # noqa: S608
                            ([f"%{n}%" for n in needles],),
                        )
                        n = cur.fetchone()[0]
                        if n:
                            found[f"{table}.{col}"] = n
    finally:
        conn.close()
    return found


def scan_files(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` holding a needle: raw bytes, and for Parquet every value read back (a
    compressed page would hide a value from a byte search)."""
    import pyarrow.parquet as pq

    hits = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        text = [data.decode("utf-8", "replace")]
        if p.suffix == ".parquet":
            text.append(json.dumps(pq.read_table(p).to_pylist(), default=str))
        if any(n in t for n in needles for t in text):
            hits.append(str(p.relative_to(root)))
    return hits


def scan_everything(dsn: str, airflow_dsn: str, dirs: list[Path], needles: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, d in (("tracking", dsn), ("airflow", airflow_dsn)):
        hits = scan_database(d, needles)
        if hits:
            out[name] = hits
    for d in dirs:
        hits = scan_files(d, needles)
        if hits:
            out[str(d)] = hits
    return out


# -- helpers ----------------------------------------------------------------------------------------
def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERASURE_TRACKING_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "erasure.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _dag(name: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{name}.py"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[name]


def _hr_rows(cat: Any, emp: str) -> list[tuple[Any, ...]]:
    from erasure.targets import adapter_for

    t = cat.target("hr_directory")
    conn = psycopg2.connect(adapter_for(t).dsn(t))  # type: ignore[attr-defined]
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT * FROM hr.directory WHERE employee_id = %s", (emp,))
            return cur.fetchall()
    finally:
        conn.close()


def _hr_restore(cat: Any, rows: list[tuple[Any, ...]]) -> None:
    from erasure.targets import adapter_for

    t = cat.target("hr_directory")
    conn = psycopg2.connect(adapter_for(t).dsn(t))  # type: ignore[attr-defined]
    try:
        with conn, conn.cursor() as cur:
            for r in rows:
                cur.execute(f"INSERT INTO hr.directory VALUES ({', '.join(['%s'] * len(r))})", r)  # noqa: S608
    finally:
        conn.close()


def _rows_in_delta(spark: Any, path: str, column: str, value: str) -> int:
    return spark.read.format("delta").load(path).where(f"{column} = '{value}'").count()


# -- the scenario -----------------------------------------------------------------------------------
def test_retention_leaves_no_raw_identifier_and_reapply_erases_restored_people(
    tracking_db,
    spark,
    kafka_bootstrap,
    world_factory,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
):
    from erasure import retention
    from erasure.event_dataset import build_event_dataset
    from erasure.evidence import audit, receipts
    from erasure.evidence.keys import ReceiptKeys, load_hmac_key
    from erasure.reapply import ReapplyContext, reapply
    from erasure.targets import Context, adapter_for
    from erasure_demo import warehouse_gen

    dsn = tracking_db
    airflow_dsn = os.environ["AIRFLOW_CONN_ERASURE_AIRFLOW_DB"]
    world = world_factory(only=TARGETS)
    cat = world.catalog
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(cat.model_dump(mode="json"), sort_keys=False))
    for var, value in {
        "ERASURE_CATALOG": tmp_path / "catalog.yaml",
        "ERASURE_DATASET_DIR": tmp_path / "datasets",
        "ERASURE_RECEIPTS_DIR": tmp_path / "receipts",
    }.items():
        monkeypatch.setenv(var, str(value))
    # spark-submit of the pinned pyspark (the scheduler's PATH has the venv too)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    settings = get_settings()
    warehouse_gen.generate_tables(spark, cat, rows="tiny")
    wh_paths = {n: cat.target(n).spec.resolved_path() for n in WAREHOUSE}

    # two people with data in every target of their type
    cus, emp = f"cus_{uuid.uuid4().hex[:12]}", f"emp_{random.randint(10**6, 10**7 - 1)}"
    needles = [cus, emp]
    import httpx

    with httpx.Client(timeout=10) as http:
        ctx = Context(settings=settings, dsn=dsn, catalog=cat, http=http, spark=spark)
        for st, sid in (("customer", cus), ("employee", emp)):
            for t in cat.targets_for(st):
                adapter_for(t).seed_test_subjects(ctx, t, [(sid, st)])
    assert _rows_in_delta(spark, wh_paths["wh_orders"], "customer_id", cus) > 0
    hr_backup = _hr_rows(cat, emp)
    assert hr_backup
    backup_at = datetime.now(UTC)  # the backup: the warehouse table's directory and the HR rows
    shutil.copytree(wh_paths["wh_orders"], tmp_path / "backup" / "orders")

    # filed through the intake DAG (the run's conf holds both ids), erased by the pipeline
    run = _dag("erasure_intake").test(
        run_conf={
            "requests": [
                {"subject_type": "customer", "subject_id": cus, "requested_by": "privacy-portal", "reason": f"Art. 17 for {cus}"},
                {"subject_type": "employee", "subject_id": emp, "requested_by": "hr-portal"},
            ]
        }
    )  # fmt: skip
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "success", {k: ti.state for k, ti in tis.items()}
    forgot = tis["forget_conf"].xcom_pull(task_ids="forget_conf")
    assert forgot["forgotten"] is True and forgot["dag_run"] == 1, forgot
    # (dag.test() writes its in-memory run back when it ends, conf included; with the scheduler the
    # conf stays scrubbed: test_intake_rest checks that. The retention DAG's scrub catches either.)

    _run_pipeline(world, dsn, kafka_bootstrap, spark)
    with transaction(dsn) as cur:
        cur.execute("SELECT id, subject_id, status FROM erasure.request ORDER BY id")
        reqs = cur.fetchall()
    assert [r["status"] for r in reqs] == ["completed", "completed"], reqs
    ids = {r["subject_id"]: r["id"] for r in reqs}

    keys = ReceiptKeys.from_files(settings.receipt_signing_key_path, settings.identifier_hmac_key_path)
    issued = receipts.issue_receipts(dsn, keys, owners={t.name: t.owner for t in cat.targets})
    assert issued.issued == 2, issued.not_ready
    receipts.export_receipts(dsn, out_dir=settings.receipts_path, dataset_dir=settings.dataset_path)
    build_event_dataset(spark, dsn, cat, settings.dataset_path, retention_days=90, full_refresh=True)

    dirs = [settings.dataset_path, settings.receipts_path, *(Path(p) for p in wh_paths.values())]
    before = scan_everything(dsn, airflow_dsn, dirs, needles)
    # the scan finds what is there: the tracking store and the event dataset hold the raw ids now
    assert "erasure.request.subject_id" in before.get("tracking", {}), before
    assert str(settings.dataset_path) in before, before

    # the clock moves past the raw-identifier retention (30 days) ...
    with transaction(dsn) as cur:
        cur.execute(
            """UPDATE erasure.request SET completed_at = completed_at - interval '31 days',
                      received_at = received_at - interval '31 days', due_at = due_at - interval '31 days'"""
        )
    # (the warehouse tables' log files too: Delta expires them by modification time, 30 days at most)
    aged = datetime.now(UTC).timestamp() - 31 * 86400
    for p in wh_paths.values():
        for f in (Path(p) / "_delta_log").iterdir():
            os.utime(f, (aged, aged))
    # ... and the retention DAG runs
    dag = _dag("erasure_retention")
    for t in dag.tasks:  # fail fast here: no retry delays
        t.retries = 0
    run = dag.test()
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "success", {k: ti.state for k, ti in tis.items()}
    done = tis["retention"].xcom_pull(task_ids="retention")
    assert done["minimised_requests"] == 2 and done["tombstones"] >= 2, done
    spark_done = tis["spark_retention"].xcom_pull(task_ids="spark_retention")
    assert spark_done["dataset"]["requests"] == 2, spark_done
    assert all(spark_done["warehouse_logs"][n]["log_entries_deleted"] > 0 for n in WAREHOUSE), spark_done

    assert scan_everything(dsn, airflow_dsn, dirs, needles) == {}
    # receipts and the audit chain still verify; the minimisation is in the audit log
    for rid in ids.values():
        out = _cli("receipt", "verify", str(rid), dsn=dsn)
        assert out.returncode == 0, out.stdout + out.stderr
    chain = audit.verify_chain(dsn)
    assert chain.ok, chain.summary()
    with transaction(dsn) as cur:
        cur.execute(
            "SELECT request_id, details FROM erasure.event_log WHERE event_type = 'identifiers_minimised' ORDER BY request_id"
        )
        events = cur.fetchall()
        cur.execute("SELECT count(*) AS n FROM erasure.identity WHERE sealed IS NOT NULL")
        assert cur.fetchone()["n"] == 0
    assert [e["request_id"] for e in events] == sorted(ids.values())
    assert all(e["details"]["rows"]["request"] == 1 for e in events), events
    # the person's erasure is still found by their id (through its keyed hash), never shown in clear
    out = _cli("status", "--subject", f"customer:{cus}", dsn=dsn)
    assert out.returncode == 0 and f"request {ids[cus]} " in out.stdout and cus not in out.stdout, out.stdout
    # a second run has nothing left to do
    again = retention.run_retention(dsn, cat, _codec(settings), settings)
    assert (again.tombstones, again.minimised_requests, again.rows) == (0, 0, {})

    # -- a backup from before the erasure is restored: both people are back ----------------------------
    shutil.rmtree(wh_paths["wh_orders"])
    shutil.copytree(tmp_path / "backup" / "orders", wh_paths["wh_orders"])
    _hr_restore(cat, hr_backup)
    assert _rows_in_delta(spark, wh_paths["wh_orders"], "customer_id", cus) > 0
    assert _hr_rows(cat, emp)

    backup_at -= timedelta(days=31)  # the whole timeline moved with the clock (see above)
    rctx = ReapplyContext(dsn, cat, settings, load_hmac_key(settings.identifier_hmac_key_path), spark=spark)
    # as an operator runs it: the CLI, its own Spark session
    out = _cli(
        "reapply", "--restored-at", backup_at.isoformat(), "--target", "wh_orders", "--target", "hr_directory",
        "--json", dsn=dsn,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rep = json.loads(out.stdout[out.stdout.index("{") :])
    by_target = {t["target"]: t for t in rep["targets"]}
    assert rep["ok"] and set(by_target) == {"wh_orders", "hr_directory"}, rep
    assert list(by_target["wh_orders"]["matched"]) == [str(ids[cus])]
    assert list(by_target["hr_directory"]["matched"]) == [str(ids[emp])]
    assert by_target["wh_orders"]["rows"] > 0 and by_target["hr_directory"]["rows"] == len(hr_backup)
    assert all(t["verified"] for t in rep["targets"]) and cus not in out.stdout and emp not in out.stdout
    assert _rows_in_delta(spark, wh_paths["wh_orders"], "customer_id", cus) == 0
    assert _hr_rows(cat, emp) == []
    with transaction(dsn) as cur:
        cur.execute(
            "SELECT target, request_id, task_id, details FROM erasure.event_log WHERE event_type = 'erasure_reapplied' ORDER BY target"
        )
        evs = cur.fetchall()
    assert [(e["target"], e["details"]["rows"] > 0, e["task_id"] is not None) for e in evs] == [
        ("hr_directory", True, True),
        ("wh_orders", True, True),
    ]
    assert audit.verify_chain(dsn).ok
    # idempotent: nothing found the second time; a restore point after the erasures matches no one
    twice = reapply(rctx, backup_at, ["wh_orders", "hr_directory"])
    assert all(t.rows == 0 and t.verified for t in twice.targets), twice.to_dict()
    assert reapply(rctx, datetime.now(UTC), None).requests == 0
    # the sync API and Kafka owners get a report of what to re-run (request ids, no identifier)
    report = reapply(rctx, backup_at, ["crm_contacts", "marketing_events"])
    assert {t.target: (t.report_only, sorted(t.matched)) for t in report.targets} == {
        "crm_contacts": (True, [ids[cus]]),
        "marketing_events": (True, [ids[cus]]),
    }


def _codec(settings: Any) -> Any:
    from erasure.identity import IdentityCodec

    return IdentityCodec.from_settings(settings)


def test_a_recorded_restore_is_reapplied_once_and_a_bad_one_stays_pending(tracking_db, world_factory):  # noqa: F811
    """``reapply --record`` leaves the restore to the scheduled job (``reapply_recorded``, the retention
    DAG's Spark task): re-applied once and marked done; a restore naming a target the catalog no longer
    has is kept pending with the reason, and retried next run."""
    from erasure import dispatch, reconcile, retention
    from erasure.evidence.keys import load_hmac_key
    from erasure.identity import IdentityCodec
    from erasure.intake import register_requests
    from erasure.reapply import ReapplyContext, reapply_recorded, record_restore
    from erasure.targets import Context, adapter_for

    dsn = tracking_db
    cat = world_factory(only={"hr_directory"}).catalog
    settings = get_settings()
    emp = f"emp_{random.randint(10**6, 10**7 - 1)}"
    t = cat.target("hr_directory")
    adapter_for(t).seed_test_subjects(
        Context(settings=settings, dsn=dsn, catalog=cat), t, [(emp, "employee")]
    )
    backup = _hr_rows(cat, emp)
    backup_at = datetime.now(UTC)
    res = register_requests(
        dsn, cat, [{"subject_type": "employee", "subject_id": emp, "requested_by": "hr"}], source="cli"
    )
    assert res.registered == 1
    for b in dispatch.plan_batches(dsn, cat, "hr_directory"):
        dispatch.run_batch(dsn, cat, "hr_directory", b["task_ids"], claim_key="rec/0", settings=settings)
    reconcile.reconcile(dsn, cat)
    assert _hr_rows(cat, emp) == []
    assert retention.record_tombstones(dsn, cat, IdentityCodec.from_settings(settings)) == 1
    _hr_restore(cat, backup)  # the backup comes back

    good = record_restore(dsn, backup_at, "dba-oncall", ["hr_directory"])
    bad = record_restore(dsn, backup_at, "dba-oncall", ["no_such_target"])
    ctx = ReapplyContext(dsn, cat, settings, load_hmac_key(settings.identifier_hmac_key_path))
    out = reapply_recorded(ctx)
    assert out == [{"restore": good, "ok": True, "requests": 1}, {"restore": bad, "ok": False, "requests": 0}]
    assert _hr_rows(cat, emp) == []
    with transaction(dsn) as cur:
        cur.execute("SELECT id, reapplied_at IS NOT NULL AS done, result FROM erasure.restore ORDER BY id")
        rows = {r["id"]: r for r in cur.fetchall()}
    assert rows[good]["done"] and rows[good]["result"]["targets"][0]["rows"] == len(backup)
    assert not rows[bad]["done"] and "no_such_target" in rows[bad]["result"]["error"]
    # next run: only the bad one is tried again
    assert [r["restore"] for r in reapply_recorded(ctx)] == [bad]
