"""Proof of erasure, on a schedule: signed receipts for completed requests, and the audit chain checked.

Runs hourly and whenever the asset `erasure_tracking_store` is updated (`erasure_reconcile` emits it
when requests complete). Against the tracking store (`erasure_tracking` connection):

1. **issue_receipts** - one Ed25519-signed receipt per completed request that has none, once every
   target is `verified` or explicitly `not_verifiable` (warehouse targets: after VACUUM made the
   version before the delete unreadable). Requests not ready yet are counted by reason and retried
   next run. Idempotent: a request never gets a second receipt.
2. **export_receipts** - new receipts as files (`ERASURE_RECEIPTS_DIR`, `<request id>.receipt.json`)
   and into the Delta table `erasure_receipts` under `ERASURE_DATASET_DIR` (insert-only MERGE, from
   the table's newest receipt on).
3. **verify_audit_chain** - recompute the hash chain of `erasure.event_log` and compare its end with
   the recorded head. A broken link fails the run (no retry) and the failed run alerts the pipeline
   owner; the task log names the first broken link.

Keys come from secret files named by settings (`ERASURE_RECEIPT_SIGNING_KEY_FILE`,
`ERASURE_IDENTIFIER_HMAC_KEY_FILE`); receipts hold identifiers only as keyed hashes. XCom holds counts
only. See docs/evidence.md (check a receipt: `python -m erasure.cli receipt verify <file>`).

Code: `erasure.evidence.receipts` and `erasure.evidence.audit` (no Airflow).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from erasure.airflow.assets import TRACKING_STORE
from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import dag_kwargs


@dag(
    dag_id="erasure_proof",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("40 * * * *", timezone="UTC"), assets=[TRACKING_STORE]
    ),
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=30), description="erasure_proof did not finish in 30 min"),
    **dag_kwargs(__doc__, tags=["proof", "receipts", "audit"], retries=2, retry_delay=timedelta(minutes=1)),
)
def erasure_proof():
    @task
    def issue_receipts() -> dict:
        from erasure.airflow.proof import issue_receipts as issue

        return issue()

    @task
    def export_receipts() -> dict:
        from erasure.airflow.proof import export_receipts as export

        return export()

    @task  # a broken link raises AirflowFailException: no retry
    def verify_audit_chain() -> dict:
        from erasure.airflow.proof import verify_audit_chain as verify

        return verify()

    issue_receipts() >> export_receipts()
    verify_audit_chain()


erasure_proof()
