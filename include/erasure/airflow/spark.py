"""Submit a Spark entry point of ``spark_jobs/`` from an Airflow task: the one submission path.

Every Spark job of the pipeline (the warehouse erasure, the PII drift scan, the event dataset's build
and retention) is run by :class:`SparkJobOperator`, a ``SparkSubmitOperator`` (Apache Spark provider)
that runs ``spark-submit`` with the master of the ``spark_default`` connection: ``local[*]``-style on
the local topology, ``spark://host:7077`` on a Spark standalone cluster (``yarn``, ``k8s://...`` work
the same for client deploy mode). The job's driver runs in client mode next to the Airflow worker;
its executors run wherever the master puts them. On top of ``SparkSubmitOperator`` it

* passes the tracking store's DSN (``erasure_tracking`` connection) in the job's environment as
  ``ERASURE_TRACKING_DSN``, set at execution time, so it is neither on the command line (arguments are
  visible in the process list) nor among the task's rendered template fields (shown in the UI);
* hands Spark the Delta and JDBC jars of ``ERASURE_SPARK_JARS_DIR`` (``--jars``: jars set by the session
  builder arrive after the driver JVM has started), the driver memory of the settings and the Python
  interpreter of the worker (driver and executors);
* passes ``--master`` (the connection's) to the job too, so the job's own session builder asks for the
  master spark-submit was given;
* reads the job's JSON report from a temporary file (``--report``): the job writes its outcome
  (per-table stages and evidence) to the tracking store itself; the report is what the task returns
  to XCom. A job that exits without a report fails the task with the tail of its output. A report
  with failures is judged by the subclass (:meth:`SparkJobOperator.summarize`);
* kills ``spark-submit`` when the task is stopped (execution timeout, marked failed).

The subclasses are the DAGs' jobs: :class:`WarehouseEraseOperator` (one mapped task per table),
:class:`PiiDriftOperator`, :class:`EventDatasetBuildOperator`, :class:`EventDatasetRetentionOperator`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from erasure.airflow.conn import SPARK_CONN_ID

TAIL_LINES = 40
"""Lines of the job's output kept for the error message of a job that left no report."""


def job_path(job: str) -> Path:
    """``spark_jobs/<job>`` under the pipeline's root (``ERASURE_ROOT``), else next to the DAG folder
    (images that mount ``spark_jobs/`` beside ``dags/``)."""
    from airflow.sdk.configuration import conf

    from erasure.settings import get_settings

    candidates = [get_settings().root / "spark_jobs" / job]
    dags_folder = conf.get("core", "dags_folder", fallback=None)
    if dags_folder:
        candidates.append(Path(dags_folder).resolve().parent / "spark_jobs" / job)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"Spark job {job!r} not found; looked at: {', '.join(map(str, candidates))}")


class SparkJobFailed(RuntimeError):
    """The job's report says it failed (or it exited non-zero); its tasks are already marked in the
    tracking store."""


class SparkJobOperator(SparkSubmitOperator):
    """``spark-submit spark_jobs/<job> --report <tmp> --master <M> <job_args>``; returns
    :meth:`summarize` of the job's report (to XCom).

    :param job: file name under ``spark_jobs/``.
    :param job_args: the job's own arguments (templated).
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")
    job: str = ""

    def __init__(self, *, job: str | None = None, job_args: Sequence[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("conn_id", SPARK_CONN_ID)
        job = job or self.job
        if not job:
            raise ValueError("SparkJobOperator needs job= (a file of spark_jobs/)")
        kwargs.setdefault("name", f"erasure-{job.removesuffix('.py').replace('_', '-')}")
        super().__init__(application="", **kwargs)
        self.job = job
        self.job_args = list(job_args)
        self.returncode: int | None = None
        self.output_tail: deque[str] = deque(maxlen=TAIL_LINES)

    # -- what a subclass decides --------------------------------------------------------------------
    def extra_job_args(self, context: Any) -> list[str]:
        """Arguments from the run (params, map index) appended to ``job_args``."""
        return []

    def summarize(self, report: dict[str, Any], returncode: int, context: Any) -> Any:
        """What the task returns; raise to fail it. Default: the report, failing on a non-zero exit."""
        if returncode != 0:
            raise SparkJobFailed(f"Spark job {self.job} exited {returncode}")
        return report

    # -- the submission -----------------------------------------------------------------------------
    def execute(self, context: Any) -> Any:
        from erasure.airflow.conn import spark_master, tracking_dsn
        from erasure.settings import get_settings

        settings = get_settings()
        master = spark_master(self._conn_id)
        if not master:
            raise RuntimeError(
                f"no Spark master: set the '{self._conn_id}' connection's host "
                f"(AIRFLOW_CONN_{self._conn_id.upper()}, e.g. local[2] or spark://host:7077)"
            )
        jars = sorted(str(p) for p in settings.jars_path.glob("*.jar"))
        with tempfile.TemporaryDirectory(prefix="erasure-spark-") as tmp:
            report_file = Path(tmp) / "report.json"
            self.application = str(job_path(self.job))
            self.application_args = [
                "--report",
                str(report_file),
                "--master",
                master,
                *self.job_args,
                *self.extra_job_args(context),
            ]
            # set here, after the template fields were rendered and stored: never shown in the UI
            self.env_vars = {**(self.env_vars or {}), "ERASURE_TRACKING_DSN": tracking_dsn()}
            self.jars = ",".join(jars) or None
            self._driver_memory = self._driver_memory or settings.spark_driver_memory
            self.conf = {
                "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable,
                "spark.ui.enabled": str(settings.spark_ui).lower(),
                **(self.conf or {}),
            }
            self._hook = None  # built from the values above
            self.returncode = 0
            try:
                super().execute(context)
            except Exception as exc:  # noqa: BLE001 - spark-submit failed: the report (if any) says why
                sp = getattr(self._hook, "_submit_sp", None)
                self.returncode = sp.returncode if sp is not None and sp.returncode is not None else 1
                self.output_tail.extend(str(exc).splitlines()[-TAIL_LINES:])
            finally:
                self._kill_if_running()
            if not report_file.exists():
                raise RuntimeError(
                    f"Spark job {self.job} exited {self.returncode} without a report:\n"
                    + "\n".join(self.output_tail)
                )
            report = json.loads(report_file.read_text(encoding="utf-8"))
        return self.summarize(report, self.returncode, context)

    def _kill_if_running(self) -> None:
        """The task was stopped (timeout, marked failed) while spark-submit ran: stop it too."""
        sp = getattr(self._hook, "_submit_sp", None)
        if sp is not None and sp.poll() is None:
            sp.kill()
            sp.wait()


class WarehouseEraseOperator(SparkJobOperator):
    """``spark_jobs/warehouse_erase.py --target <target>``: one table's batched delete, purge and vacuum, stages
    and evidence written to the tracking store by the job. Returns a small summary for XCom; fails when
    the target failed (its tasks are already ``failed`` with the error, for ``erasure_reconcile``)."""

    job = "warehouse_erase.py"

    def __init__(self, *, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target

    def extra_job_args(self, context: Any) -> list[str]:
        context["table_label"] = self.target  # the map index shown in the UI
        return ["--target", self.target]

    def summarize(self, report: dict[str, Any], returncode: int, context: Any) -> Any:
        return warehouse_summary(report, returncode)


def warehouse_summary(report: dict[str, Any], returncode: int) -> dict[str, Any]:
    """Per target: tasks picked, advanced, waiting for retention, delete version, rows deleted.
    Raises :class:`SparkJobFailed` when a target failed or the job exited non-zero."""
    failed = [f"{t['target']}: {t['error']}" for t in report["targets"] if t.get("error")]
    if failed or returncode != 0:
        raise SparkJobFailed(f"warehouse erasure failed (exit {returncode}): " + "; ".join(failed))
    return {
        "run_id": report["run_id"],
        "targets": {
            t["target"]: {
                "tasks": t["tasks_picked"],
                "advanced": t["advanced"],
                "waiting_for_retention": t["waiting_for_retention"],
                "delete_version": (t["delete"] or {}).get("version"),
                "rows": (t["delete"] or {}).get("metrics", {}).get("numTargetRowsDeleted"),
            }
            for t in report["targets"]
        },
    }


class PiiDriftOperator(SparkJobOperator):
    """``spark_jobs/pii_drift.py``: findings per kind and new alerts (findings do not fail the run)."""

    job = "pii_drift.py"

    def summarize(self, report: dict[str, Any], returncode: int, context: Any) -> Any:
        if returncode != 0:
            raise SparkJobFailed(f"pii_drift job exited {returncode}")
        kinds: dict[str, int] = {}
        for f in report["findings"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        return {"findings": kinds, "new_alerts": report["new_alerts"]}


def _retention_args(params: dict[str, Any]) -> list[str]:
    days = params.get("retention_days")
    return ["--retention-days", str(int(days))] if days else []


class EventDatasetBuildOperator(SparkJobOperator):
    """``spark_jobs/build_event_dataset.py --no-retention``: new events MERGEd into the Delta dataset
    after the GX checks. A failed validation fails the task at once (no retry: the data must be fixed
    first) with the report in the log; the assets' extras carry the new versions and counts."""

    job = "build_event_dataset.py"

    def extra_job_args(self, context: Any) -> list[str]:
        params = context["params"]
        return ["--no-retention", *(["--full-refresh"] if params.get("full_refresh") else [])] + (
            _retention_args(params)
        )

    def summarize(self, report: dict[str, Any], returncode: int, context: Any) -> Any:
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        if report.get("status") == "failed_validation":
            logging.getLogger("erasure.dq").error(
                "GX report: %s", json.dumps(report["validation"], default=str)
            )
            raise AirflowFailException(f"the event batch failed data quality (exit {returncode})")
        if returncode != 0:
            raise SparkJobFailed(f"build_event_dataset job exited {returncode}")
        from erasure.airflow.assets import ERASED_SUBJECTS, ERASURE_EVENTS

        outlet_events = context["outlet_events"]
        outlet_events[ERASURE_EVENTS].extra = {
            "version": report.get("events_version"),
            "inserted": report.get("inserted"),
            "updated": report.get("updated"),
            "max_occurred_at": report.get("max_occurred_at"),
        }
        outlet_events[ERASED_SUBJECTS].extra = {
            "version": report.get("subjects_version"),
            "inserted": report.get("subjects_inserted"),
        }
        return {k: v for k, v in report.items() if k != "status"}


class EventDatasetRetentionOperator(SparkJobOperator):
    """``spark_jobs/build_event_dataset.py --retention-only``: rows older than the retention deleted
    and both tables vacuumed, so identifiers do not outlive it."""

    job = "build_event_dataset.py"

    def extra_job_args(self, context: Any) -> list[str]:
        return ["--retention-only", *_retention_args(context["params"])]

    def summarize(self, report: dict[str, Any], returncode: int, context: Any) -> Any:
        if returncode != 0:
            raise SparkJobFailed(f"event dataset retention exited {returncode}")
        return {k: v for k, v in report.items() if k != "status"}


class RetentionJobOperator(SparkJobOperator):
    """``spark_jobs/retention_job.py``: the event dataset pseudonymised after minimisation, recorded
    backup restores re-applied (docs/personal-data.md). Fails when a restore could not be fully
    re-applied (it is tried again next run)."""

    job = "retention_job.py"

    def summarize(self, report: dict[str, Any], returncode: int, context: Any) -> Any:
        if returncode != 0 or report.get("status") != "ok":
            raise SparkJobFailed(f"retention job: {report.get('status')} {report.get('error', '')}".strip())
        return {k: v for k, v in report.items() if k != "status"}
