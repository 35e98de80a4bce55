"""PII drift detection on real Spark + Delta tables (issue 21): a new personal column in a catalogued
table and an uncatalogued table holding customer ids are found, alerted once, and reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from erasure.catalog import load_catalog
from tests.conftest import ROOT
from tests.helpers.db import query

pytestmark = pytest.mark.integration

TARGET = {
    "name": "wh_customers",
    "kind": "warehouse_delta",
    "owner": "data-platform",
    "subject_types": ["customer"],
    "identity_key": "customer_id",
    "personal_data": ["email", "full_name"],
    "warehouse_delta": {"table": "customers", "path": "customers", "key_column": "customer_id"},
}


@pytest.fixture
def drift_env(tmp_path, spark, monkeypatch):
    """A catalog with one warehouse table, its warehouse and dataset dirs (the job reads them from env)."""
    cat_dir = tmp_path / "catalog"
    cat_dir.mkdir()
    demo = yaml.safe_load((ROOT / "include" / "catalog" / "demo.yaml").read_text())
    for key in ("identifier_types", "resolvers"):  # the identity graph refers to the demo's targets
        demo.pop(key, None)
    (cat_dir / "demo.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    (cat_dir / "targets.yaml").write_text(yaml.safe_dump({"targets": [TARGET]}))
    wh = tmp_path / "warehouse"
    people = [(f"cus_drift{i:04d}", f"p{i}@example.com", f"Person {i}", i) for i in range(40)]
    spark.createDataFrame(
        people, "customer_id string, email string, full_name string, score int"
    ).write.format("delta").save(str(wh / "customers"))
    for k, v in {
        "ERASURE_CATALOG": str(cat_dir),
        "ERASURE_WAREHOUSE_DIR": str(wh),
        "ERASURE_DATASET_DIR": str(tmp_path / "datasets"),
    }.items():
        monkeypatch.setenv(k, v)
    return load_catalog(cat_dir), wh, tmp_path / "datasets"


def test_new_personal_column_and_uncatalogued_table_are_found_alerted_once_and_reported(
    drift_env, spark, tracking_db
):
    from erasure.drift import record_findings, scan_warehouse, write_report

    catalog, wh, datasets = drift_env
    spark.createDataFrame([("sku1", 9.5)], "sku string, price double").write.format("delta").save(
        str(wh / "products")
    )  # no personal data: not a finding
    assert scan_warehouse(spark, catalog, wh) == []  # everything personal is declared

    # the table gains a `phone` column and a free-text column holding e-mail addresses
    more = [
        (f"cus_drift9{i:03d}", "x@example.com", "X", 1, f"+44 20 7946 0{i:03d}", f"c{i}@mail.example.org")
        for i in range(30)
    ]
    spark.createDataFrame(
        more, "customer_id string, email string, full_name string, score int, phone string, contact string"
    ).write.format("delta").mode("append").option("mergeSchema", "true").save(str(wh / "customers"))
    # an uncatalogued table keyed by customer id
    spark.createDataFrame([("cus_drift0001", "/home")], "customer_id string, page string").write.format(
        "delta"
    ).save(str(wh / "team_x" / "clicks"))

    findings = scan_warehouse(spark, catalog, wh)
    by = {(f.kind, f.column or f.table): f for f in findings}
    assert set(by) == {
        ("undeclared_personal_column", "phone"),
        ("undeclared_personal_column", "contact"),
        ("uncatalogued_table", "clicks"),
    }, findings
    assert by[("undeclared_personal_column", "phone")].reason == "column name"
    assert by[("undeclared_personal_column", "phone")].team == "data-platform"
    assert by[("undeclared_personal_column", "contact")].reason.endswith("sampled values look like email")
    clicks = by[("uncatalogued_table", "clicks")]
    assert "customer_id: identifier column" in clicks.reason and clicks.team == catalog.pipeline_owner
    assert all("@" not in f.reason and "cus_" not in f.reason for f in findings)  # no values

    assert record_findings(tracking_db, catalog, findings) == 3
    assert record_findings(tracking_db, catalog, findings) == 0  # once per column / table
    alerts = query(tracking_db, "SELECT kind, team, target, message FROM erasure.alert ORDER BY id")
    assert [a["kind"] for a in alerts] == ["pii_drift"] * 3
    assert {a["team"] for a in alerts} == {"data-platform", catalog.pipeline_owner}
    assert any("column 'phone' of wh_customers" in a["message"] for a in alerts)

    path = write_report(spark, findings, datasets, "run-1")
    from deltalake import DeltaTable

    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    assert sorted((r["kind"], r["column"]) for r in rows) == sorted(
        [
            ("undeclared_personal_column", "phone"),
            ("undeclared_personal_column", "contact"),
            ("uncatalogued_table", None),
        ]
    )


def test_the_dag_runs_the_job_and_reports_counts(drift_env, spark, tracking_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    _catalog, wh, _datasets = drift_env
    spark.createDataFrame([("cus_drift0001", "10.0.0.1")], "customer_id string, ip string").write.format(
        "delta"
    ).save(str(wh / "sessions"))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[1]"}')
    dag = DagBag(dag_folder=str(ROOT / "dags" / "erasure_pii_drift.py")).get_dag("erasure_pii_drift")
    run = dag.test()
    assert run.state == "success"
    [ti] = run.get_task_instances()
    assert ti.xcom_pull(task_ids="scan") == {"findings": {"uncatalogued_table": 1}, "new_alerts": 1}
    assert Path(_datasets / "pii_drift" / "_delta_log").is_dir()
