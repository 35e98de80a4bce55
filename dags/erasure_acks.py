"""Consume partners' acknowledgements of erasure events from Kafka, every 2 minutes.

Every 2 minutes (one run at a time): **consume_acks** polls the catalog's ack topics (`kafka.ack_topic`,
consumer group `erasure-pipeline-acks`) for at most 90 s, or until every partition is drained and no ack
came for 5 s (partners still at work keep it going), and for each batch of up to 500 messages, in one
database transaction (the lookups after success acks made 16 at a time):

* records it in `erasure.ack_log` as `matched`, `duplicate`, `unknown` (no such event id), `mismatch`
  (event sent to another target) or `malformed` (not JSON / not the ack schema; the raw text is kept) —
  unknown and malformed acks are recorded and skipped, never fatal;
* for a matched ack: sets `erasure.outbox.acked_at`/`ack` and moves the task to `succeeded`
  (outcome `erased` / `not_found`) or `failed` (outcome `failed`, retried by `erasure_reconcile` after its
  backoff), with the ack (event id, outcome, details, partition, offset) as evidence.

Consumer offsets are committed only after the transaction; a redelivered message is recognised by its
(topic, partition, offset) in `ack_log` and not applied twice. See docs/kafka.md.

Why a scheduled bounded poll and not `AssetWatcher` + `KafkaMessageQueueTrigger`: the trigger turns
every message into an asset event and a DAG run (seconds of scheduling each; acks come in thousands),
and it commits the consumer offset in the triggerer before any task has written the ack to the tracking
store, so a failing run would lose acks. A bounded poll handles thousands of acks per run, writes them
in batches and commits offsets only after each database transaction; 2 minutes of latency is nothing
next to the 30-minute ack timeout and the one-month SLA.

Code: `erasure.outbox.consume_acks` (no Airflow), wrapped by `erasure.airflow.kafka_tasks`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag

from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import dag_kwargs
from erasure.airflow.kafka_tasks import consume_kafka_acks


@dag(
    dag_id="erasure_acks",
    schedule=timedelta(minutes=2),
    start_date=datetime(2025, 1, 1),
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=5), description="erasure_acks did not finish in 5 min"),
    **dag_kwargs(__doc__, tags=["kafka", "acks"], retries=2, retry_delay=timedelta(seconds=30)),
)
def erasure_acks():
    consume_kafka_acks()


erasure_acks()
