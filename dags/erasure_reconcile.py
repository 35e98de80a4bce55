"""Reconcile the tracking store every 10 minutes: replay, retry/escalate, complete requests, SLA, alerts.

Against the tracking store (`erasure_tracking` connection):

1. **replay_and_retry** - events published but not acknowledged within the target's
   `kafka.ack_timeout_minutes` are handed back to the outbox publisher (same event id, attempt + 1);
   failed tasks whose backoff elapsed go back to `pending` for `erasure_dispatch`; after a target's
   `max_attempts` the task is **escalated** and one alert goes to the owning team. Tasks still in
   progress past the dispatch lease (`ERASURE_DISPATCH_LEASE_MINUTES`, their worker died) raise one
   `lease_expired` alert per batch to the target's owner.
2. **recompute_requests** - a request completes only when every target succeeded *with evidence*;
   a completed request never changes again.
3. **sla** - one alert when a request is within `ERASURE_SLA_WARN_DAYS` (default 5) of `due_at`, one when
   it is past due, to the pipeline owner, naming the blocking targets; one `target_sla_breached` alert
   per task of a target with its own `sla_days` that is past it, to the target's owner.
4. **send_alerts** - unsent alerts (also from Deadline Alerts) go out through the team's channel
   (log, webhook, email); failed sends are retried next run.
5. **requests_changed** -> **announce_tracking_change** - when step 2 changed a request's status, the
   asset `erasure_tracking_store` is updated, which triggers `erasure_event_dataset`; otherwise the
   announcement is skipped.

Every step is idempotent: once everything is complete a run changes nothing.
A Deadline Alert fires if a run has not finished 10 minutes after it was queued.

Code: `erasure.reconcile` and `erasure.alerts` (no Airflow).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

from erasure.airflow.assets import REQUEST_CHANGES, TRACKING_STORE
from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import dag_kwargs


def _reconcile(*steps: str) -> dict:
    """One or more steps of ``erasure.reconcile.reconcile``; its counts for XCom."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.catalog import load_catalog
    from erasure.reconcile import reconcile
    from erasure.settings import get_settings

    settings = get_settings()
    return reconcile(
        tracking_dsn(),
        load_catalog(settings.catalog_path),
        steps=steps,
        sla_warn_days=settings.sla_warn_days,
        lease_minutes=settings.dispatch_lease_minutes,
        settings=settings,
    ).as_dict()


@dag(
    dag_id="erasure_reconcile",
    schedule=timedelta(minutes=10),
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=10), description="erasure_reconcile did not finish in 10 min"),
    **dag_kwargs(__doc__, tags=["reconcile", "alerts"], retries=2, retry_delay=timedelta(seconds=30)),
)
def erasure_reconcile():
    @task
    def replay_and_retry() -> dict:
        return _reconcile("replay", "retry", "leases")

    @task
    def recompute_requests() -> dict:
        return _reconcile("recompute")

    @task
    def sla() -> dict:
        return _reconcile("sla")

    @task
    def send_alerts() -> dict:
        return _reconcile("deliver")

    @task.short_circuit
    def requests_changed(stats: dict) -> bool:
        return sum(stats.get(k, 0) for k in REQUEST_CHANGES) > 0

    @task(outlets=[TRACKING_STORE])
    def announce_tracking_change(stats: dict) -> None:
        outlet_events = get_current_context()["outlet_events"]
        outlet_events[TRACKING_STORE].extra = {k: stats.get(k, 0) for k in REQUEST_CHANGES}

    recomputed = recompute_requests()
    replay_and_retry() >> recomputed >> sla() >> send_alerts()
    requests_changed(recomputed) >> announce_tracking_change(recomputed)


erasure_reconcile()
