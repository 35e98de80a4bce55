"""Retention: the pipeline keeps no personal data it does not need (docs/personal-data.md).

Daily, against the tracking store (`erasure_tracking`) and Airflow's metadata DB (`erasure_airflow_db`):

1. **retention** - the suppression ledger (`erasure.tombstone`: keyed hashes of every identifier of
   every completed erasure), then minimisation: `ERASURE_RETENTION_RAW_IDENTIFIER_DAYS` (30) after a
   request finished, its raw identifiers are replaced by keyed hashes in every table of the tracking
   store; rejected payloads expire after `ERASURE_RETENTION_REJECTED_DAYS` (30); delivery records after
   `ERASURE_RETENTION_REQUEST_DAYS` (730). The audit log and receipts never hold a raw identifier.
2. **spark_retention** (`spark_jobs/retention_job.py`) - the Delta event dataset gets the keyed hashes
   too (rewritten, vacuumed with no retention); recorded backup restores (`erasure.restore`) are
   re-applied: everyone erased after the restore point is erased again.
3. **scrub_airflow_metadata** - the confs of finished erasure runs and their API log rows lose their
   identifiers (the intake DAG already does it for its own run).
4. **clean_airflow_db** - `airflow db clean --skip-archive` of the erasure DAGs' history older than
   `ERASURE_RETENTION_AIRFLOW_DAYS` (30).

XCom holds counts only. Re-running any task is harmless: each step selects what is still to do.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import DATA_PLATFORM, dag_kwargs
from erasure.airflow.spark import RetentionJobOperator


@dag(
    dag_id="erasure_retention",
    schedule=CronTriggerTimetable("25 3 * * *", timezone="UTC"),
    max_active_runs=1,
    deadline=run_deadline(timedelta(hours=3), description="erasure_retention did not finish in 3 h"),
    **dag_kwargs(__doc__, tags=["retention", "privacy"], retries=2, retry_delay=timedelta(minutes=5)),
)
def erasure_retention():
    @task
    def retention() -> dict:
        from erasure.airflow.retention import run_retention

        return run_retention()

    @task
    def scrub_airflow_metadata() -> dict:
        from erasure.airflow.retention import scrub_airflow_metadata as scrub

        return scrub()

    @task
    def clean_airflow_db() -> dict:
        from erasure.airflow.retention import clean_airflow_db as clean

        return clean()

    spark_retention = RetentionJobOperator(task_id="spark_retention", owner=DATA_PLATFORM)
    scrub = scrub_airflow_metadata()
    retention() >> [spark_retention, scrub]
    [spark_retention, scrub] >> clean_airflow_db()


erasure_retention()
