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

Code: `erasure.event_dataset` (no Airflow); Spark runs in the task's process, started only when there
is something to write.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from erasure.airflow.assets import ERASED_SUBJECTS, ERASURE_EVENTS, TRACKING_STORE
from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import DATA_PLATFORM, dag_kwargs


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
    @task(outlets=[ERASURE_EVENTS, ERASED_SUBJECTS])
    def build() -> dict:
        import json
        import logging
        from functools import partial

        from airflow.sdk.exceptions import AirflowFailException

        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog
        from erasure.dq import DataQualityError
        from erasure.event_dataset import build_event_dataset
        from erasure.settings import get_settings
        from erasure.spark import get_spark

        ctx = get_current_context()
        params = ctx["params"]
        settings = get_settings()
        try:
            report = build_event_dataset(
                # Spark starts only if there is something to write
                partial(get_spark, "erasure-event-dataset", settings=settings),
                tracking_dsn(),
                load_catalog(settings.catalog_path),
                settings.dataset_path,
                retention_days=params.get("retention_days") or settings.dataset_retention_days,
                full_refresh=bool(params.get("full_refresh")),
                apply_retention=False,
            )
        except DataQualityError as exc:
            logging.getLogger("erasure.dq").error(
                "GX report: %s", json.dumps(exc.summary.report, default=str)
            )
            raise AirflowFailException(str(exc)) from exc
        outlet_events = ctx["outlet_events"]
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
    def enforce_retention() -> dict:
        from erasure.event_dataset import enforce_retention as apply
        from erasure.settings import get_settings
        from erasure.spark import get_spark

        settings = get_settings()
        return apply(
            get_spark("erasure-event-dataset", settings=settings),
            settings.dataset_path,
            retention_days=get_current_context()["params"].get("retention_days")
            or settings.dataset_retention_days,
        )

    build() >> enforce_retention()


erasure_event_dataset()
