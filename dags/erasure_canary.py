"""The pipeline's own end-to-end test, in production: synthetic subjects are seeded in every target,
erased through the normal pipeline and verified gone.

Every run (cron from `ERASURE_CANARY_SCHEDULE`, default `17 * * * *`) does three idempotent steps:

1. **seed**: creates `count` synthetic subjects per subject type (`canary_<random>` customers) and puts
   test data for them in **every** catalog target of that type: partners' test-data endpoints
   (`sync_api` `create_path`, Kafka partners' `lookup_url`), one appended row per warehouse Delta table
   (Spark), an `INSERT` for `postgres_table` targets. Recorded in `erasure.canary_subject` / `canary_check`.
2. **request**: for canaries older than the delay, files an erasure request through the normal intake
   (`source='canary'`, `is_canary=true`), so they travel the same path as real requests.
3. **verify**: once a canary's request has finished (or the verify timeout passed), checks every target
   no longer has the data (lookups 404, warehouse queries 0 rows / masked, Postgres rows gone), records
   pass/fail per target and **alerts the owning team** of each failing target. The task fails when a
   canary fails, so the run is red in the UI.

Delay before requesting: Param `delay_minutes`, else Variable `erasure_canary_delay_minutes`, else 60.
Verify timeout: Param `verify_timeout_minutes`, else Variable `erasure_canary_verify_timeout_minutes`,
else 4320 (3 days: the warehouse DAG runs daily and a task is done only after the VACUUM of a later run).
Canary subjects never mix with real ones: recognisable ids, own tables, `is_canary` on their requests.

Code: `erasure.canary` (no Airflow).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from erasure.airflow.defaults import dag_kwargs
from erasure.catalog import load_catalog
from erasure.settings import get_settings

DELAY_VARIABLE = "erasure_canary_delay_minutes"
TIMEOUT_VARIABLE = "erasure_canary_verify_timeout_minutes"


@dag(
    dag_id="erasure_canary",
    schedule=get_settings().canary_schedule,
    max_active_runs=1,
    params={
        "delay_minutes": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description=f"Minutes between seeding and requesting erasure (null: Variable {DELAY_VARIABLE}, else 60)",
        ),
        "verify_timeout_minutes": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description=f"Minutes after the request at which an unfinished canary fails (null: Variable {TIMEOUT_VARIABLE}, else 4320)",
        ),
        "count": Param(
            1, type="integer", minimum=0, maximum=100, description="Canaries per subject type (0: seed none)"
        ),
        "subject_types": Param(
            ["customer"],
            type="array",
            items={"type": "string"},
            description="Subject types to create canaries for",
        ),
    },
    **dag_kwargs(__doc__, tags=["canary", "testing"], retries=2, retry_delay=timedelta(minutes=1)),
)
def erasure_canary():
    @task
    def seed() -> dict:
        from erasure import canary
        from erasure.airflow.conn import tracking_dsn
        from erasure.airflow.params import minutes

        ctx = get_current_context()
        params = ctx["params"]
        settings = get_settings()
        dsn, cat = tracking_dsn(), load_catalog(settings.catalog_path)
        delay = timedelta(minutes=minutes(params, "delay_minutes", variable=DELAY_VARIABLE, default=60))
        seeded = []
        if int(params.get("count", 1)) > 0:
            seeded = canary.seed_subjects(
                dsn,
                cat,
                subject_types=params.get("subject_types") or ["customer"],
                count=int(params.get("count", 1)),
                delay=delay,
                settings=settings,
                run_id=ctx["run_id"],
            )
        appended: dict = {}
        if canary.warehouse_seeding_pending(dsn, cat):
            from erasure.spark import get_spark

            spark = get_spark("erasure-canary-seed", settings=settings)
            try:
                appended = canary.seed_warehouse(spark, dsn, cat, settings=settings)
            finally:
                spark.stop()
        return {"subjects": [s["subject_id"] for s in seeded], "warehouse_rows": appended}

    @task
    def request() -> list:
        from erasure import canary
        from erasure.airflow.conn import tracking_dsn

        return canary.file_requests(tracking_dsn(), load_catalog(), run_id=get_current_context()["run_id"])

    @task
    def verify() -> list:
        from airflow.sdk.exceptions import AirflowFailException

        from erasure import canary
        from erasure.airflow.conn import tracking_dsn
        from erasure.airflow.params import minutes

        params = get_current_context()["params"]
        settings = get_settings()
        dsn, cat = tracking_dsn(), load_catalog(settings.catalog_path)
        timeout = timedelta(
            minutes=minutes(params, "verify_timeout_minutes", variable=TIMEOUT_VARIABLE, default=4320)
        )
        spark = None
        if canary.ready_to_verify(dsn, cat, timeout=timeout, needs_spark=True):
            from erasure.spark import get_spark

            spark = get_spark("erasure-canary-verify", settings=settings)
        try:
            results = canary.verify_subjects(dsn, cat, settings=settings, spark=spark, timeout=timeout)
        finally:
            if spark is not None:
                spark.stop()
        out = [r.as_dict() for r in results]
        failed = [r for r in results if r.result == "fail"]
        if failed:
            raise AirflowFailException(
                "canary failed: " + "; ".join(canary.describe_failure(r) for r in failed)
            )
        return out

    seed() >> request() >> verify()


erasure_canary()
