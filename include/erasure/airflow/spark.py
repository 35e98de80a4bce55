"""Run a Spark entry point of ``spark_jobs/`` from an Airflow task, as a subprocess.

:func:`run_spark_job` starts ``python spark_jobs/<job> --report <file> [--master M] <args>`` and:

* passes the tracking store's DSN (``erasure_tracking`` connection) in the job's environment as
  ``ERASURE_TRACKING_DSN``, never on the command line (arguments are visible in the process list);
* takes the master from the ``spark_default`` connection's host; without one the job uses its own
  default (``ERASURE_SPARK_MASTER``);
* streams the job's own log lines into the task log (lines of the ``erasure.*`` loggers, errors);
  Spark's INFO/WARN noise is dropped, the last lines are kept for the error message;
* kills the job when the task is stopped (execution timeout, marked failed): the ``finally`` runs
  when Airflow interrupts the task;
* reads the job's JSON report from a temporary file; a job that exits without one fails the task
  with the tail of its output.

Why a subprocess rather than ``SparkSubmitOperator`` or ``@task.pyspark``: both need the Apache Spark
provider, which is not part of this project's pinned environment. A subprocess also keeps the Spark
driver JVM (2 GB, ~10 s start) out of the Airflow worker process: its memory is returned when the job
ends, a JVM crash or OOM fails the task instead of killing the worker, and a timeout or a killed task
instance kills the job cleanly (Delta's commit protocol keeps the tables consistent; the next run
finishes the work). It is the same entry point ``spark-submit`` runs on a cluster.

:func:`erase_warehouse` is the ``erasure_warehouse`` DAG's use of it (``spark_jobs/warehouse_erase.py``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAIL_LINES = 40
"""Lines of the job's output kept for the error message of a job that left no report."""


def job_log_line(line: str) -> bool:
    """Whether a line of the job's output goes to the task log: the job's own loggers and errors."""
    return "erasure." in line or "ERROR" in line or line.startswith("error:")


@dataclass(frozen=True)
class SparkJobResult:
    returncode: int
    report: dict[str, Any]
    """The JSON report the job wrote to ``--report``."""


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


def run_spark_job(
    job: str,
    args: Sequence[str] = (),
    *,
    echo: Callable[[str], bool] = job_log_line,
) -> SparkJobResult:
    """Run ``spark_jobs/<job>`` with ``args`` to its end and return its exit status and report.

    Raises ``RuntimeError`` with the tail of the job's output when it wrote no report. A report with
    failures is returned as it is: what counts as failed is the caller's business.
    """
    from erasure.airflow.conn import spark_master, tracking_dsn
    from erasure.settings import environ

    path = job_path(job)
    env = {**environ(), "ERASURE_TRACKING_DSN": tracking_dsn()}
    master = spark_master()
    with tempfile.TemporaryDirectory(prefix="erasure-spark-") as tmp:
        report_file = Path(tmp) / "report.json"
        cmd = [sys.executable, str(path), "--report", str(report_file)]
        if master:
            cmd += ["--master", master]
        cmd += list(args)
        log.info("running: %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                tail.append(line)
                if echo(line):
                    log.info("%s", line)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # the task was stopped (timeout, marked failed): stop the job too
                proc.kill()
                proc.wait()
        if not report_file.exists():
            raise RuntimeError(f"Spark job {job} exited {returncode} without a report:\n" + "\n".join(tail))
        report = json.loads(report_file.read_text(encoding="utf-8"))
    return SparkJobResult(returncode=returncode, report=report)


def erase_warehouse(targets: Iterable[str]) -> dict[str, Any]:
    """Run ``spark_jobs/warehouse_erase.py`` for ``targets`` and return a small summary for XCom
    (per target: tasks picked, advanced, waiting for retention, delete version, rows deleted).

    Raises ``RuntimeError`` when a target failed or the job exited non-zero; the failed targets'
    tasks are already marked ``failed`` with the error, for ``erasure_reconcile`` to retry or escalate.
    """
    args = [arg for target in sorted(targets) for arg in ("--target", target)]
    result = run_spark_job("warehouse_erase.py", args)
    report = result.report
    failed = [f"{t['target']}: {t['error']}" for t in report["targets"] if t.get("error")]
    if failed or result.returncode != 0:
        raise RuntimeError(f"warehouse erasure failed (exit {result.returncode}): " + "; ".join(failed))
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
