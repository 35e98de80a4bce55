"""erasure_event_dataset: the Delta dataset of erasure events, validated with Great Expectations.

Thin DAG file: the work is in ``erasure.event_dataset`` (no Airflow there) and docs/event-dataset.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from erasure.airflow.assets import ERASED_SUBJECTS, ERASURE_EVENTS, TRACKING_STORE
from erasure.airflow.deadlines import run_deadline  # issue 6: Deadline Alert

DOC = """
### erasure_event_dataset
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
"""


@dag(
    dag_id="erasure_event_dataset",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("20 * * * *", timezone="UTC"), assets=[TRACKING_STORE]
    ),
    catchup=False,
    max_active_runs=1,
    deadline=run_deadline(timedelta(minutes=45)),  # issue 6: alert if a run is not done in time
    dagrun_timeout=timedelta(minutes=50),
    doc_md=DOC,
    tags=["erasure", "dataset", "delta", "data-quality"],
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "full_refresh": Param(False, type="boolean", description="re-read the whole retention window"),
        "retention_days": Param(
            None, type=["null", "integer"], minimum=1, maximum=3650, description="override the retention"
        ),
    },
)
def erasure_event_dataset():
    @task(outlets=[ERASURE_EVENTS, ERASED_SUBJECTS])
    def build(params: dict | None = None, outlet_events=None) -> dict:
        import json
        import logging
        from functools import partial

        from airflow.sdk.exceptions import AirflowFailException

        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog
        from erasure.config import Settings
        from erasure.dq import DataQualityError
        from erasure.event_dataset import build_event_dataset
        from erasure.spark import get_spark

        params = params or {}
        settings = Settings.from_env()
        try:
            report = build_event_dataset(
                partial(get_spark, "erasure-event-dataset"),  # started only if there is something to write
                tracking_dsn(),
                load_catalog(settings.catalog_path),
                settings.dataset_dir,
                full_refresh=bool(params.get("full_refresh")),
                retention_days=params.get("retention_days"),
                apply_retention=False,
            )
        except DataQualityError as exc:
            logging.getLogger("erasure.dq").error(
                "GX report: %s", json.dumps(exc.summary.report, default=str)
            )
            raise AirflowFailException(str(exc)) from exc
        if outlet_events is not None:
            outlet_events[ERASURE_EVENTS].extra = {
                "version": report.events_version,
                "inserted": report.inserted,
                "updated": report.updated,
                "max_occurred_at": report.max_occurred_at,
            }
            outlet_events[ERASED_SUBJECTS].extra = {
                "version": report.subjects_version,
                "inserted": report.subjects_inserted,
            }
        return report.to_dict()

    @task
    def enforce_retention(params: dict | None = None) -> dict:
        from erasure.config import Settings
        from erasure.event_dataset import enforce_retention as apply
        from erasure.spark import get_spark

        params = params or {}
        return apply(
            get_spark("erasure-event-dataset"),
            Settings.from_env().dataset_dir,
            retention_days=params.get("retention_days"),
        )

    build() >> enforce_retention()


erasure_event_dataset()
