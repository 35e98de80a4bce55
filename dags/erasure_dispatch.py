"""Dispatch due erasure work: mapped deletes against sync partner APIs and Postgres tables, plus
(issue 5) the Kafka outbox publisher.

Thin DAG file: the logic lives in ``erasure.dispatch`` / ``erasure.sync_delete`` (no Airflow there).
The catalog is read at parse time (a local YAML read) to generate one mapped task per target, each
in the target's own Airflow pool (``erasure_<target>``; created by ``scripts/stack.sh up airflow``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from erasure.airflow.deadlines import run_deadline  # issue 6: Deadline Alert
from erasure.airflow.kafka_tasks import enqueue_kafka_events, publish_kafka_events  # issue 5
from erasure.catalog import load_catalog

CATALOG = load_catalog()
DISPATCH_TARGETS = [*CATALOG.of_kind("sync_api"), *CATALOG.of_kind("postgres_table")]
MAX_MAP_LENGTH = int(os.environ.get("AIRFLOW__CORE__MAX_MAP_LENGTH", "1024"))
# A batch must end well before its lease expires, so no other run can re-claim a live batch.
BATCH_TIMEOUT = timedelta(minutes=float(os.environ.get("ERASURE_DISPATCH_BATCH_TIMEOUT_MINUTES", "10")))

DOC = """
### erasure_dispatch
Every 5 minutes (no catch-up, one run at a time):

1. **plan_&lt;target&gt;** – reads due tasks from the tracking store (request `in_progress`; task `pending`, or
   `failed` with its backoff elapsed, or `in_progress` with an expired lease after a killed worker)
   and cuts them into batches per target (`sync_api.batch_size`, at most `max_map_length` batches per
   target; the rest waits for the next run). Only task *ids* travel through XCom — subject identifiers
   never enter the Airflow metadata database.
2. **delete_&lt;target&gt;** – one mapped task per target, one mapped instance per batch (named
   "&lt;target&gt; batch i/n"), in the target's pool `erasure_<target>`. A `sync_api` batch calls the
   partner's delete endpoint with bounded concurrency, a client-side rate limit, timeouts, an
   idempotency key per task and retries (5xx/timeouts/connection errors with exponential backoff and
   jitter, 429 honouring `Retry-After`; 404/409 = already gone; other 4xx = permanent failure). A
   `postgres_table` batch runs one `DELETE ... WHERE key = ANY(...)`. Every subject's outcome and
   evidence is written to `erasure.task` as it happens: a killed batch loses nothing and a re-run
   skips what already succeeded.
3. **kafka_enqueue → kafka_publish** (issue 5) – for due `pending` tasks of Kafka targets, writes an
   outbox row (a versioned erasure event) in the same transaction as the task's move to `awaiting_ack`,
   then publishes every unpublished row (idempotent producer, `acks=all`, keyed by subject) and marks it
   published only after the broker acknowledged it; a failed delivery fails the task. Acks are consumed
   by `erasure_acks`; see docs/kafka.md.

Failed subjects get `attempts + 1` and `next_attempt_at` from the target's `retry_backoff_minutes`
(exponential); escalation after `max_attempts` is done by `erasure_reconcile`.
"""


@dag(
    dag_id="erasure_dispatch",
    schedule=timedelta(minutes=5),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=5)),  # issue 6: alert if a run is not done in time
    doc_md=DOC,
    tags=["erasure", "dispatch"],
    default_args={"owner": "privacy-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
)
def erasure_dispatch():
    @task
    def plan(target: str, max_batches: int) -> list[dict]:
        """Batches of due task ids of one target: ``[{"target", "batch", "of", "task_ids"}, ...]``."""
        from erasure.airflow.conn import tracking_dsn
        from erasure.dispatch import plan_batches

        return plan_batches(tracking_dsn(), load_catalog(), target, max_batches=max_batches)

    @task(map_index_template="{{ batch_label }}", execution_timeout=BATCH_TIMEOUT)
    def delete_batch(target: str, batch: int, of: int, task_ids: list[int]) -> dict:
        """Erase one batch of subjects from one target; returns outcome counts."""
        from erasure.airflow.conn import tracking_dsn
        from erasure.dispatch import run_batch

        ctx = get_current_context()
        ctx["batch_label"] = f"{target} batch {batch + 1}/{of} ({len(task_ids)} subjects)"  # type: ignore[typeddict-unknown-key]
        claim = f"{ctx['run_id']}/{target}/{batch}"
        return run_batch(tracking_dsn(), load_catalog(), target, task_ids, claim_key=claim).as_dict()

    for t in DISPATCH_TARGETS:
        batches = plan.override(task_id=f"plan_{t.name}")(target=t.name, max_batches=MAX_MAP_LENGTH)
        delete_batch.override(task_id=f"delete_{t.name}", pool=t.pool).expand_kwargs(batches)

    # --- Kafka outbox (issue 5); independent of the sync dispatch above ---
    # kafka_enqueue: due pending Kafka tasks -> erasure.outbox rows + awaiting_ack (one transaction);
    # kafka_publish: every unpublished row (new events and reconcile's replays) -> Kafka, marked published
    # only after the broker acknowledged; a failed delivery fails the task. Acks: dags/erasure_acks.py.
    if CATALOG.of_kind("kafka"):
        enqueue_kafka_events() >> publish_kafka_events()


erasure_dispatch()
