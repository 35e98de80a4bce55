"""Dispatch due erasure work every 5 minutes: mapped delete batches against sync partner APIs and
Postgres tables, and the Kafka outbox (enqueue, publish).

Every 5 minutes (no catch-up, one run at a time):

0. **resolve_identities** (catalogs with `resolvers`) – expands the identifiers of requests that are
   `resolving` through the catalog's resolvers (batched lookups, to a fixed point) and releases the
   settled ones, so their tasks are due in this same run (docs/identity.md). Identifiers stay sealed in
   the tracking store; only counts reach XCom.
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
   skips what already succeeded. A batch whose task instance fails for good (killed, timed out)
   releases its tasks at once for the next run and alerts the target's owner. A batch times out after `ERASURE_DISPATCH_BATCH_TIMEOUT_MINUTES`
   (default 10), well before its lease expires, so no other run can re-claim a live batch.
3. **kafka_enqueue → kafka_publish** – for due `pending` tasks of Kafka targets, writes an
   outbox row (a versioned erasure event) in the same transaction as the task's move to `awaiting_ack`,
   then publishes every unpublished row, new events and reconcile's replays (idempotent producer,
   `acks=all`, keyed by subject) and marks it published only after the broker acknowledged it; a failed
   delivery fails the task. Independent of the deletes above. Acks are consumed by `erasure_acks`;
   see docs/kafka.md.

Failed subjects get `attempts + 1` and `next_attempt_at` from the target's `retry_backoff_minutes`
(exponential); escalation after `max_attempts` is done by `erasure_reconcile`.

Code: `erasure.dispatch` / `erasure.sync_delete` (no Airflow). The catalog is read when the file is
parsed (a local YAML read) to generate one mapped task per target, each in the target's own Airflow
pool (`erasure_<target>`; created by `scripts/stack.sh up airflow`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from erasure.airflow.callbacks import batch_failed, claim_key
from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import dag_kwargs
from erasure.airflow.identity import resolve_identities
from erasure.airflow.kafka_tasks import enqueue_kafka_events, publish_kafka_events
from erasure.catalog import load_catalog
from erasure.dispatch import dispatch_targets
from erasure.settings import get_settings
from erasure.targets import kinds_run_by
from erasure.vocab import Runner

SETTINGS = get_settings()
CATALOG = load_catalog(SETTINGS.catalog_path)
DISPATCH_TARGETS = dispatch_targets(CATALOG)  # enabled targets whose kind is run by Runner.DISPATCH
HAS_OUTBOX_TARGETS = any(CATALOG.of_kind(kind) for kind in kinds_run_by(Runner.OUTBOX))
BATCH_TIMEOUT = timedelta(minutes=SETTINGS.dispatch_batch_timeout_minutes)


@dag(
    dag_id="erasure_dispatch",
    schedule=timedelta(minutes=5),
    start_date=datetime(2025, 1, 1),
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=5)),
    **dag_kwargs(__doc__, tags=["dispatch"], retries=1, retry_delay=timedelta(seconds=30)),
)
def erasure_dispatch():
    @task
    def plan(target: str) -> list[dict]:
        """Batches of due task ids of one target: ``[{"target", "batch", "of", "task_ids"}, ...]``,
        at most ``[core] max_map_length`` of them (the rest waits for the next run)."""
        from airflow.sdk.configuration import conf

        from erasure.airflow.conn import tracking_dsn
        from erasure.dispatch import plan_batches

        settings = get_settings()
        return plan_batches(
            tracking_dsn(),
            load_catalog(settings.catalog_path),
            target,
            max_batches=conf.getint("core", "max_map_length"),
            lease_minutes=settings.dispatch_lease_minutes,
        )

    @task(
        map_index_template="{{ batch_label }}",
        execution_timeout=BATCH_TIMEOUT,
        on_failure_callback=batch_failed,
    )
    def delete_batch(target: str, batch: int, of: int, task_ids: list[int]) -> dict:
        """Erase one batch of subjects from one target; returns outcome counts."""
        from erasure.airflow.conn import tracking_dsn
        from erasure.airflow.identity import identity_codec
        from erasure.dispatch import run_batch

        ctx = get_current_context()
        ctx["batch_label"] = f"{target} batch {batch + 1}/{of} ({len(task_ids)} subjects)"  # type: ignore[typeddict-unknown-key]
        settings = get_settings()
        catalog = load_catalog(settings.catalog_path)
        return run_batch(
            tracking_dsn(),
            catalog,
            target,
            task_ids,
            claim_key=claim_key(ctx["run_id"], target, batch),
            settings=settings,
            lease_minutes=settings.dispatch_lease_minutes,
            codec=identity_codec() if catalog.has_identity else None,
        ).as_dict()

    resolved = resolve_identities() if CATALOG.resolvers else None
    for t in DISPATCH_TARGETS:
        batches = plan.override(task_id=f"plan_{t.name}")(target=t.name)
        if resolved is not None:
            resolved >> batches
        delete_batch.override(task_id=f"delete_{t.name}", pool=t.pool).expand_kwargs(batches)

    if HAS_OUTBOX_TARGETS:
        enqueue = enqueue_kafka_events()
        if resolved is not None:
            resolved >> enqueue
        enqueue >> publish_kafka_events()


erasure_dispatch()
