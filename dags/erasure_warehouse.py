"""Daily warehouse erasure: the Spark job on the catalog's warehouse Delta tables, with evidence.

Erases the subjects of in-progress requests from every catalog target of kind `warehouse_delta`
(Delta tables), physically:

1. **pending_work** (short-circuit) - counts workable `warehouse_delta` tasks in the tracking store
   (request `in_progress`; task `pending`, `in_progress`, or `failed` with attempts left). Nothing to
   do: the run ends here without starting Spark.
2. **erase** - one mapped task instance per table with work (its name is the map index), each
   submitting `spark_jobs/warehouse_erase.py --target <table>` with `spark-submit`
   (`SparkSubmitOperator`, `erasure.airflow.spark.WarehouseEraseOperator`; master from the
   `spark_default` connection: `local[*]` or a Spark cluster), at most two at a time per run: a broken table fails (and
   is retried) alone while the others complete. Per table ONE batched write: deletion vectors
   `DELETE ... WHERE <key> IN (<the batch's keys>)`, copy-on-write with most files touched a one-pass
   rewrite (or the catalog's field strategies), then `REORG TABLE ... APPLY (PURGE)` where deletion vectors are on, then `VACUUM`
   once the table's `retention_hours` have passed. Each task records the stages `deleted`
   (table version, `numTargetRowsDeleted`), `purged` and `vacuumed` with evidence; it succeeds only
   at `vacuumed`. A task waiting for its retention stays `in_progress` and a later run finishes it.

Re-running is harmless (0 rows deleted, stages only move forward). The task fails if a target
failed; its tasks are marked `failed` with the error for `erasure_reconcile` to retry or escalate.

Code: `erasure.warehouse` and the entry point `spark_jobs/warehouse_erase.py` (no Airflow in either).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import DATA_PLATFORM, dag_kwargs
from erasure.airflow.spark import WarehouseEraseOperator


@dag(
    dag_id="erasure_warehouse",
    schedule="@daily",
    max_active_runs=1,
    deadline=run_deadline(timedelta(hours=3)),
    **dag_kwargs(
        __doc__,
        tags=["warehouse", "spark", "delta"],
        owner=DATA_PLATFORM,
        retries=1,
        retry_delay=timedelta(minutes=5),
    ),
)
def erasure_warehouse():
    @task.short_circuit
    def pending_work() -> list[str]:
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog
        from erasure.warehouse import pending_counts

        counts = pending_counts(tracking_dsn(), load_catalog())
        print(f"workable warehouse tasks per target: {counts}")
        return sorted(k for k, v in counts.items() if v)

    WarehouseEraseOperator.partial(
        task_id="erase",
        execution_timeout=timedelta(hours=6),
        map_index_template="{{ table_label }}",
        max_active_tis_per_dagrun=2,
    ).expand(target=pending_work())


erasure_warehouse()
