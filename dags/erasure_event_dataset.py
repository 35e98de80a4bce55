"""The erasure event dataset: a Delta table of every erasure event, validated with Great Expectations.

Builds the **erasure event dataset** (Delta, `$ERASURE_DATASET_DIR/erasure_events`, partitioned by
`event_date`) from the tracking store's event log, plus the compact **erased subjects** table
(`$ERASURE_DATASET_DIR/erased_subjects`, one row per completed request) that offline jobs use to erase
subjects from their own tables.

1. **build** - read new events (one Postgres snapshot), enrich with the catalog (owner team, kind),
   validate with Great Expectations (unique event ids, keys, enums, timestamp order, counts equal to
   the tracking store), then `MERGE` on `event_id`. A failed validation fails the task with the report
   and writes nothing (no retry: the data must be fixed first).
2. **enforce_retention** - delete rows older than the documented retention (default 90 days,
   `ERASURE_DATASET_RETENTION_DAYS`) and `VACUUM`, so identifiers do not outlive it.

Runs hourly, and whenever the asset `erasure_tracking_store` is updated (`erasure_reconcile` emits it
when requests started, completed, failed or re-opened). Produces the assets
`erasure_events` and `erased_subjects` (schedule downstream DAGs on them).
Params: `full_refresh` re-reads the whole retention window (idempotent); `retention_days` overrides it.
See docs/event-dataset.md for the schema, access rules and example queries.

Code: `erasure.event_dataset` (no Airflow), run by `spark_jobs/build_event_dataset.py` (`--no-retention`,
then `--retention-only`), each submitted with `spark-submit` (`SparkSubmitOperator`,
`erasure.airflow.spark`; master from the `spark_default` connection). Inside the job the Spark session
starts only when there is something to write.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag

from erasure.airflow.assets import ERASED_SUBJECTS, ERASURE_EVENTS, TRACKING_STORE
from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import DATA_PLATFORM, dag_kwargs
from erasure.airflow.spark import EventDatasetBuildOperator, EventDatasetRetentionOperator


@dag(
    dag_id="erasure_event_dataset",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("20 * * * *", timezone="UTC"), assets=[TRACKING_STORE]
    ),
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=45)),
    dagrun_timeout=timedelta(minutes=50),
    params={
        "full_refresh": Param(False, type="boolean", description="re-read the whole retention window"),
        "retention_days": Param(
            None, type=["null", "integer"], minimum=1, maximum=3650, description="override the retention"
        ),
    },
    **dag_kwargs(
        __doc__,
        tags=["dataset", "delta", "data-quality"],
        owner=DATA_PLATFORM,
        retries=1,
        retry_delay=timedelta(minutes=2),
    ),
)
def erasure_event_dataset():
    build = EventDatasetBuildOperator(task_id="build", outlets=[ERASURE_EVENTS, ERASED_SUBJECTS])
    enforce_retention = EventDatasetRetentionOperator(task_id="enforce_retention")
    build >> enforce_retention


erasure_event_dataset()
