"""Scheduled intake: registers requests that upstream systems put into `erasure.intake` and re-checks
held requests against the legal-hold list, every 5 minutes.

1. **recheck_holds**: held requests whose legal holds were all released go to `in_progress` (the
   tracking store logs `request_released`); open requests of a subject with an active hold go to `held`.
2. **ingest**: `pending` rows of `erasure.intake` (the integration contract, `docs/intake.md`) are
   validated and registered, oldest first, each in one transaction with its row's new status:
   `registered`, `duplicate` (`request_id` = the existing request) or `rejected` (`error` = the reason).
   Rows are locked with `SKIP LOCKED`, so overlapping runs never process a row twice.

Rejected rows do not fail the run (upstream reads them from the intake table); a database error does.

Code: `erasure.intake` and `erasure.holds` (no Airflow).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import dag_kwargs


@dag(
    dag_id="erasure_intake_scheduled",
    schedule="*/5 * * * *",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=5)),
    dagrun_timeout=timedelta(minutes=30),
    **dag_kwargs(__doc__, tags=["intake", "legal-hold"], retries=2, retry_delay=timedelta(seconds=30)),
)
def erasure_intake_scheduled():
    @task
    def recheck_holds() -> dict:
        from erasure.airflow.conn import tracking_dsn
        from erasure.holds import recheck_held_requests

        return recheck_held_requests(tracking_dsn()).to_dict()

    @task
    def ingest() -> dict:
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog
        from erasure.intake import ingest_pending, result_report

        result = ingest_pending(tracking_dsn(), load_catalog(), run_id=get_current_context()["run_id"])
        out = result.to_dict(max_outcomes=200)
        print(result_report(out))
        return out

    recheck_holds() >> ingest()


erasure_intake_scheduled()
