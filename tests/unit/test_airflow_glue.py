"""The Airflow glue in ``erasure.airflow``: shared DAG defaults, the intake Params, a number from a Param
or a Variable, and the Spark submission path (a stand-in spark-submit and job, no Spark)."""

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


# -- the Spark submission path (SparkSubmitOperator) -------------------------------------------

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

# Stands in for spark-submit (no JVM): records its options, then becomes the application's Python
# process (exec: same PID, so killing "spark-submit" kills the job, as with the real one's driver).
FAKE_SPARK_SUBMIT = """
import json, os, sys
argv = sys.argv[1:]
app = next(i for i, a in enumerate(argv) if a.endswith(".py"))
with open(os.environ["FAKE_SUBMIT_LOG"], "w") as f:
    json.dump({"options": argv[:app], "env_dsn": os.environ.get("ERASURE_TRACKING_DSN")}, f)
os.execv(sys.executable, [sys.executable, argv[app], *argv[app + 1 :]])
"""


@pytest.fixture
def fake_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ERASURE_ROOT`` with a ``spark_jobs/`` holding a stand-in for ``warehouse_erase.py``, a stand-in
    ``spark-submit`` first on PATH and two jars in ``ERASURE_SPARK_JARS_DIR``."""
    import sys

    jobs = tmp_path / "spark_jobs"
    jobs.mkdir()
    (jobs / "warehouse_erase.py").write_text(textwrap.dedent(FAKE_JOB), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    submit = bin_dir / "spark-submit"
    submit.write_text(f"#!{sys.executable}\n" + FAKE_SPARK_SUBMIT, encoding="utf-8")
    submit.chmod(0o755)
    jars = tmp_path / "jars"
    jars.mkdir()
    for name in ("delta-spark_4.2_2.13-4.4.0.jar", "postgresql-42.7.14.jar"):
        (jars / name).write_bytes(b"")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SUBMIT_LOG", str(tmp_path / "submit.json"))
    monkeypatch.setenv("ERASURE_ROOT", str(tmp_path))
    monkeypatch.setenv("ERASURE_SPARK_JARS_DIR", str(jars))
    monkeypatch.delenv("ERASURE_TRACKING_DSN", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_ERASURE_TRACKING", DSN)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[1]"}')
    return jobs


def _submitted(tmp_path: Path) -> dict:
    import json

    return json.loads((tmp_path / "submit.json").read_text())


def _erase(target: str = "t1"):
    from erasure.airflow.spark import WarehouseEraseOperator

    return WarehouseEraseOperator(task_id=f"erase_{target}", target=target)


def test_spark_submit_gets_master_jars_and_python_and_the_job_the_dsn_only_in_its_environment(
    fake_jobs: Path, tmp_path: Path
) -> None:
    import sys

    context: dict = {"params": {}}
    out = _erase().execute(context)
    assert out == {
        "run_id": "r1",
        "targets": {
            "t1": {"tasks": 2, "advanced": 2, "waiting_for_retention": 0, "delete_version": 4, "rows": 3}
        },
    }
    assert context["table_label"] == "t1"  # the map index shown in the UI
    submitted = _submitted(tmp_path)
    opts = submitted["options"]
    assert opts[opts.index("--master") + 1] == "local[1]"
    jars = opts[opts.index("--jars") + 1].split(",")
    assert [Path(j).name for j in jars] == ["delta-spark_4.2_2.13-4.4.0.jar", "postgresql-42.7.14.jar"]
    assert f"spark.pyspark.python={sys.executable}" in opts
    assert submitted["env_dsn"] == DSN
    assert "s3cret-pw" not in " ".join(opts)


def test_the_job_gets_the_same_master_and_its_arguments(fake_jobs: Path, tmp_path: Path) -> None:
    from erasure.airflow.spark import SparkJobOperator

    op = SparkJobOperator(task_id="j", job="warehouse_erase.py", job_args=["--run-id", "x"])
    report = op.execute({"params": {}})
    argv = report["argv"]
    assert argv[argv.index("--master") + 1] == "local[1]"
    assert argv[-2:] == ["--run-id", "x"]
    assert report["dsn_in_env"] == DSN and "s3cret-pw" not in " ".join(argv)


def test_without_a_spark_connection_the_task_fails_naming_it(
    fake_jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_SPARK_DEFAULT")
    with pytest.raises(RuntimeError, match="AIRFLOW_CONN_SPARK_DEFAULT"):
        _erase().execute({"params": {}})


def test_a_job_without_report_fails_with_the_tail_of_its_output(
    fake_jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_JOB_MODE", "no_report")
    with pytest.raises(RuntimeError, match="exited 2 without a report") as ei:
        _erase().execute({"params": {}})
    msg = str(ei.value)
    assert "error: the catalog is broken" in msg
    assert "s3cret-pw" not in msg


def test_a_failed_target_fails_the_task_with_its_error(
    fake_jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from erasure.airflow.spark import SparkJobFailed

    monkeypatch.setenv("FAKE_JOB_MODE", "target_failed")
    with pytest.raises(SparkJobFailed, match=r"warehouse erasure failed \(exit 1\): t2: boom"):
        _erase().execute({"params": {}})


def _wait_for(path: Path, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)
    return int(path.read_text())


def test_a_timed_out_task_kills_the_job(
    fake_jobs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's execution timeout raises in the task's main thread (SIGALRM) while spark-submit runs:
    the job is killed, not left behind."""
    import signal

    class Stopped(BaseException):
        """Stands in for AirflowTaskTimeout."""

    def on_alarm(signum, frame):
        raise Stopped

    pid_file = tmp_path / "job.pid"
    monkeypatch.setenv("FAKE_JOB_MODE", "hang")
    monkeypatch.setenv("FAKE_JOB_PID", str(pid_file))
    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    try:
        signal.alarm(5)
        with pytest.raises(Stopped):
            _erase().execute({"params": {}})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 60
    pid = _wait_for(pid_file)
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
        os.kill(pid, 0)


def test_a_task_marked_failed_kills_the_job(
    fake_jobs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marked failed in the UI: Airflow calls the operator's on_kill while execute runs."""
    import threading

    pid_file = tmp_path / "job.pid"
    monkeypatch.setenv("FAKE_JOB_MODE", "hang")
    monkeypatch.setenv("FAKE_JOB_PID", str(pid_file))
    op = _erase()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute({"params": {}})
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    pid = _wait_for(pid_file)
    op.on_kill()
    t.join(60)
    assert not t.is_alive()
    assert errors and "without a report" in str(errors[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_event_dataset_jobs_take_the_run_params() -> None:
    from erasure.airflow.spark import EventDatasetBuildOperator, EventDatasetRetentionOperator

    build = EventDatasetBuildOperator(task_id="build")
    assert build.extra_job_args({"params": {"full_refresh": True, "retention_days": 30}}) == [
        "--no-retention",
        "--full-refresh",
        "--retention-days",
        "30",
    ]
    assert build.extra_job_args({"params": {"full_refresh": False, "retention_days": None}}) == [
        "--no-retention"
    ]
    retention = EventDatasetRetentionOperator(task_id="r")
    assert retention.extra_job_args({"params": {}}) == ["--retention-only"]
    assert build.job == retention.job == "build_event_dataset.py"
    assert (ROOT / "spark_jobs" / build.job).is_file()


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
