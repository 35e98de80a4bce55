"""Daily warehouse erasure: the Spark job on the catalog's warehouse Delta tables, with evidence.

Thin DAG file: the erasure lives in ``erasure.warehouse`` and the entry point
``spark_jobs/warehouse_erase.py`` (no Airflow in either).

Why a ``@task`` that starts the job as a subprocess (``python spark_jobs/warehouse_erase.py``)
rather than ``SparkSubmitOperator`` or ``@task.pyspark``: both need the Apache Spark provider, which is
not part of this project's pinned environment. A subprocess also keeps the Spark driver JVM (2 GB,
~10 s start) out of the Airflow worker process: its memory is returned when the job ends, a JVM crash
or OOM fails this task instead of killing the worker, and a timeout or a killed task instance kills
the job cleanly (Delta's commit protocol keeps the tables consistent; the next run finishes the
work). It is the same entry point ``spark-submit`` runs on a cluster; set the master with the
``spark_default`` connection's host (or ERASURE_SPARK_MASTER).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from erasure.airflow.deadlines import run_deadline  # issue 6: Deadline Alert

DOC = """
### erasure_warehouse
Daily. Erases the subjects of in-progress requests from every catalog target of kind
`warehouse_delta` (Delta tables), physically:

1. **pending_work** (short-circuit) - counts workable `warehouse_delta` tasks in the tracking store
   (request `in_progress`; task `pending`, `in_progress`, or `failed` with attempts left). Nothing to
   do: the run ends here without starting Spark.
2. **erase** - runs `spark_jobs/warehouse_erase.py` in a subprocess. Per table ONE batched
   `MERGE ... USING broadcast(subjects) ... WHEN MATCHED THEN DELETE` (or masking of the catalog's
   `mask_columns`), then `REORG TABLE ... APPLY (PURGE)` where deletion vectors are on, then `VACUUM`
   once the table's `retention_hours` have passed. Each task records the stages `deleted`
   (table version, `numTargetRowsDeleted`), `purged` and `vacuumed` with evidence; it succeeds only
   at `vacuumed`. A task waiting for its retention stays `in_progress` and a later run finishes it.

Re-running is harmless (0 rows deleted, stages only move forward). The task fails if a target
failed; its tasks are marked `failed` with the error for `erasure_reconcile` to retry or escalate.
"""


@dag(
    dag_id="erasure_warehouse",
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    deadline=run_deadline(timedelta(hours=3)),  # issue 6: alert if a run is not done in time
    doc_md=DOC,
    tags=["erasure", "warehouse", "spark", "delta"],
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=5)},
)
def erasure_warehouse():
    @task.short_circuit
    def pending_work() -> dict[str, int]:
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog
        from erasure.warehouse import pending_counts

        counts = pending_counts(tracking_dsn(), load_catalog())
        print(f"workable warehouse tasks per target: {counts}")
        return {k: v for k, v in counts.items() if v}

    @task(execution_timeout=timedelta(hours=6))
    def erase(counts: dict[str, int]) -> dict:
        import json
        import os
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        from erasure.airflow.conn import tracking_dsn

        root = Path(os.environ.get("ERASURE_ROOT") or Path(__file__).resolve().parents[1])
        job = root / "spark_jobs" / "warehouse_erase.py"
        env = {**os.environ, "ERASURE_TRACKING_DSN": tracking_dsn()}  # the DSN never goes on the command line
        try:
            from airflow.sdk import BaseHook

            master = BaseHook.get_connection("spark_default").host
        except Exception:  # noqa: BLE001 (no connection: the job's own default)
            master = None
        with tempfile.TemporaryDirectory(prefix="erasure-wh-") as tmp:
            report_file = Path(tmp) / "report.json"
            cmd = [sys.executable, str(job), "--report", str(report_file)]
            if master:
                cmd += ["--master", master]
            for target in sorted(counts):
                cmd += ["--target", target]
            print("running:", " ".join(cmd))
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            tail: list[str] = []
            try:
                assert proc.stdout is not None
                for line in proc.stdout:  # stream the job's own log lines; Spark's INFO/WARN noise is dropped
                    tail = [*tail[-39:], line.rstrip()]
                    if "erasure." in line or "ERROR" in line or line.startswith("error:"):
                        print(line.rstrip())
                returncode = proc.wait()
            finally:
                if proc.poll() is None:  # this task was stopped (timeout, marked failed): stop the job too
                    proc.kill()
                    proc.wait()
            if not report_file.exists():
                raise RuntimeError(f"warehouse job exited {returncode} without a report:\n" + "\n".join(tail))
            report = json.loads(report_file.read_text(encoding="utf-8"))
        failed = [f"{t['target']}: {t['error']}" for t in report["targets"] if t.get("error")]
        if failed or returncode != 0:
            raise RuntimeError(f"warehouse erasure failed (exit {returncode}): " + "; ".join(failed))
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

    erase(pending_work())


erasure_warehouse()
