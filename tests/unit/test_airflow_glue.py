"""The Airflow glue in ``erasure.airflow``: shared DAG defaults, the intake Params, a number from a Param
or a Variable, and the Spark job runner (with a stand-in job, no Spark)."""

from __future__ import annotations

import os
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from erasure.airflow.defaults import DATA_PLATFORM, PRIVACY_PLATFORM, dag_kwargs, default_args

ROOT = Path(__file__).resolve().parents[2]
DSN = "postgresql://erasure:s3cret-pw@db.example:5432/erasure_tracking"


# -- defaults ----------------------------------------------------------------------------------


def test_dag_kwargs_share_owner_retries_tags_and_no_catchup() -> None:
    kw = dag_kwargs("Erases things.\n\nDetails.", tags=["warehouse", "erasure"], owner=DATA_PLATFORM)
    assert kw["doc_md"] == "Erases things.\n\nDetails."
    assert kw["tags"] == ["erasure", "warehouse"]
    assert kw["catchup"] is False
    assert kw["default_args"] == {"owner": DATA_PLATFORM, "retries": 1, "retry_delay": timedelta(seconds=30)}
    assert dag_kwargs("doc", catchup=True, max_active_runs=1)["catchup"] is True
    assert default_args()["owner"] == PRIVACY_PLATFORM


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: default_args(retries=0), "retried at least once"),
        (lambda: default_args(owner=""), "owner"),
        (lambda: dag_kwargs(None), "documented"),
        (lambda: dag_kwargs("   "), "documented"),
    ],
)
def test_defaults_refuse_undocumented_unowned_or_unretried_dags(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_default_args_want_a_timedelta() -> None:
    with pytest.raises(TypeError, match="retry_delay"):
        default_args(retry_delay=30)  # type: ignore[arg-type]


# -- params ------------------------------------------------------------------------------------


def test_intake_params_single_fields_are_nullable_and_the_batch_is_bounded() -> None:
    from erasure.airflow.params import intake_params
    from erasure.catalog import load_catalog
    from erasure.intake import MAX_BATCH, field_schemas

    catalog = load_catalog(ROOT / "include" / "catalog")
    params = intake_params(catalog)
    singles = list(field_schemas(catalog))
    assert set(params) == {*singles, "requests"}
    for name in singles:
        schema = params[name].schema
        assert "null" in schema["type"], name
        assert schema.get("title") and params[name].description, name
        if "enum" in schema:  # the trigger form's selects start at a real value, not "null"
            assert schema["enum"][0] is None and params[name].value in schema["enum"][1:], name
        else:
            assert params[name].value is None, name
    assert (params["subject_type"].value, params["jurisdiction"].value) == ("customer", "GDPR")
    assert params["requests"].schema["maxItems"] == MAX_BATCH
    assert params["subject_type"].schema["enum"] == [None, *field_schemas(catalog)["subject_type"]["enum"]]


def test_a_batch_from_the_trigger_form_drops_the_selects_defaults() -> None:
    from erasure.airflow.params import conf_without_form_defaults
    from erasure.intake import requests_from_conf

    defaults = {"subject_type": "customer", "jurisdiction": "GDPR"}
    batch = [{"subject_type": "customer", "subject_id": "cus_abcd1234", "requested_by": "t"}]
    form = {
        "subject_type": "customer",
        "jurisdiction": "GDPR",
        "subject_id": None,
        "reason": "",
        "requests": batch,
    }
    assert conf_without_form_defaults(form, defaults) == {"requests": batch}
    assert requests_from_conf(conf_without_form_defaults(form, defaults), [*form]) == batch
    # a single request keeps its fields; a batch with a non-default single field is still refused
    single = {
        "subject_type": "customer",
        "subject_id": "cus_abcd1234",
        "requested_by": "t",
        "jurisdiction": "GDPR",
    }
    assert conf_without_form_defaults(single, defaults) == single
    mixed = {**form, "jurisdiction": "CCPA"}
    with pytest.raises(ValueError, match="not both"):
        requests_from_conf(conf_without_form_defaults(mixed, defaults), [*form])


def test_minutes_from_param_then_variable_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from erasure.airflow.params import minutes

    monkeypatch.setenv("AIRFLOW_VAR_ERASURE_TEST_DELAY", "7")
    assert minutes({"delay": 3}, "delay", variable="erasure_test_delay", default=60) == 3
    assert minutes({"delay": None}, "delay", variable="erasure_test_delay", default=60) == 7
    assert minutes({}, "delay", variable="erasure_test_unset_variable", default=60) == 60
    with pytest.raises(ValueError, match="delay: must be an integer"):
        minutes({"delay": "soon"}, "delay", variable="erasure_test_delay", default=60)
    with pytest.raises(ValueError, match="delay: must be >= 0"):
        minutes({"delay": -1}, "delay", variable="erasure_test_delay", default=60)


# -- the Spark job runner ----------------------------------------------------------------------

FAKE_JOB = """
import json, os, sys, time
args = sys.argv[1:]
report = args[args.index("--report") + 1]
print("INFO SparkContext: Running Spark version 4.2.0", flush=True)
print("INFO erasure.warehouse: table t1: 3 rows deleted", flush=True)
mode = os.environ.get("FAKE_JOB_MODE", "ok")
if mode == "hang":
    open(os.environ["FAKE_JOB_PID"], "w").write(str(os.getpid()))
    print("INFO erasure.warehouse: waiting", flush=True)
    time.sleep(120)
if mode == "no_report":
    for i in range(60):
        print(f"WARN noise line {i}", flush=True)
    print("error: the catalog is broken", flush=True)
    sys.exit(2)
out = {
    "argv": args,
    "dsn_in_env": os.environ.get("ERASURE_TRACKING_DSN"),
    "run_id": "r1",
    "targets": [
        {"target": "t1", "tasks_picked": 2, "advanced": 2, "waiting_for_retention": 0,
         "delete": {"version": 4, "metrics": {"numTargetRowsDeleted": 3}}, "error": None},
    ] + ([{"target": "t2", "tasks_picked": 1, "advanced": 0, "waiting_for_retention": 0,
           "delete": None, "error": "boom"}] if mode == "target_failed" else []),
}
open(report, "w").write(json.dumps(out))
sys.exit(1 if mode == "target_failed" else 0)
"""


@pytest.fixture
def fake_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ERASURE_ROOT`` with a ``spark_jobs/`` holding a stand-in for ``warehouse_erase.py``."""
    jobs = tmp_path / "spark_jobs"
    jobs.mkdir()
    (jobs / "warehouse_erase.py").write_text(textwrap.dedent(FAKE_JOB), encoding="utf-8")
    monkeypatch.setenv("ERASURE_ROOT", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_TRACKING", DSN)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[1]"}')
    return jobs


def test_runner_passes_the_dsn_in_the_environment_and_the_master_from_the_connection(
    fake_jobs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from erasure.airflow.spark import run_spark_job

    caplog.set_level("INFO", logger="erasure.airflow.spark")
    result = run_spark_job("warehouse_erase.py", ["--target", "t1"])
    assert result.returncode == 0
    argv = result.report["argv"]
    assert argv[argv.index("--master") + 1] == "local[1]"
    assert argv[-2:] == ["--target", "t1"]
    assert result.report["dsn_in_env"] == DSN
    assert "s3cret-pw" not in " ".join(argv)
    logged = [r.getMessage() for r in caplog.records if r.name == "erasure.airflow.spark"]
    assert any("erasure.warehouse: table t1: 3 rows deleted" in m for m in logged), logged
    assert not any("SparkContext" in m for m in logged), logged  # Spark's own noise is dropped
    assert not any("s3cret-pw" in m for m in logged)


def test_runner_without_spark_connection_leaves_the_master_to_the_job(
    fake_jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from erasure.airflow.spark import run_spark_job

    monkeypatch.delenv("AIRFLOW_CONN_SPARK_DEFAULT")
    assert "--master" not in run_spark_job("warehouse_erase.py").report["argv"]


def test_a_job_without_report_fails_with_the_tail_of_its_output(
    fake_jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from erasure.airflow.spark import TAIL_LINES, run_spark_job

    monkeypatch.setenv("FAKE_JOB_MODE", "no_report")
    with pytest.raises(RuntimeError, match="exited 2 without a report") as ei:
        run_spark_job("warehouse_erase.py")
    msg = str(ei.value)
    assert "error: the catalog is broken" in msg
    assert "noise line 59" in msg and "noise line 0\n" not in msg
    assert len(msg.splitlines()) == TAIL_LINES + 1


def test_a_stopped_task_kills_the_job(
    fake_jobs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When Airflow interrupts the task (timeout, marked failed) while the job runs, the job is killed."""
    from erasure.airflow.spark import job_log_line, run_spark_job

    pid_file = tmp_path / "job.pid"
    monkeypatch.setenv("FAKE_JOB_MODE", "hang")
    monkeypatch.setenv("FAKE_JOB_PID", str(pid_file))

    class Stopped(BaseException):
        """Stands in for the exception Airflow raises in a stopped task (e.g. AirflowTaskTimeout)."""

    def stop_when_waiting(line: str) -> bool:
        if line.endswith("waiting"):
            raise Stopped
        return job_log_line(line)

    started = time.monotonic()
    with pytest.raises(Stopped):
        run_spark_job("warehouse_erase.py", echo=stop_when_waiting)
    assert time.monotonic() - started < 60
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
        os.kill(pid, 0)


def test_erase_warehouse_summarises_the_report_and_fails_on_a_failed_target(
    fake_jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from erasure.airflow.spark import erase_warehouse

    out = erase_warehouse({"t1": 2})
    assert out == {
        "run_id": "r1",
        "targets": {
            "t1": {"tasks": 2, "advanced": 2, "waiting_for_retention": 0, "delete_version": 4, "rows": 3}
        },
    }
    monkeypatch.setenv("FAKE_JOB_MODE", "target_failed")
    with pytest.raises(RuntimeError, match=r"warehouse erasure failed \(exit 1\): t2: boom"):
        erase_warehouse(["t1", "t2"])


def test_job_path_names_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from erasure.airflow.spark import job_path

    monkeypatch.setenv("ERASURE_ROOT", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path / "dags"))
    with pytest.raises(FileNotFoundError, match="no_such_job.py") as ei:
        job_path("no_such_job.py")
    assert str(tmp_path / "spark_jobs" / "no_such_job.py") in str(ei.value)


def test_job_path_falls_back_to_spark_jobs_beside_the_dag_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the Docker image: the package is installed elsewhere, ``spark_jobs/`` is mounted beside ``dags/``."""
    from erasure.airflow.spark import job_path

    monkeypatch.setenv("ERASURE_ROOT", str(tmp_path / "package"))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    assert job_path("warehouse_erase.py") == ROOT / "spark_jobs" / "warehouse_erase.py"
