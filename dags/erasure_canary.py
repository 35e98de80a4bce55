"""erasure_canary: synthetic subjects are seeded everywhere, erased through the normal pipeline, verified.

Thin DAG file: the logic lives in ``erasure.canary`` (no Airflow in the core).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, task

DELAY_VARIABLE = "erasure_canary_delay_minutes"
TIMEOUT_VARIABLE = "erasure_canary_verify_timeout_minutes"
SCHEDULE = os.environ.get("ERASURE_CANARY_SCHEDULE", "17 * * * *")

DOC = f"""
### erasure_canary — the pipeline's own end-to-end test, in production

Every run (cron `{SCHEDULE}`, env `ERASURE_CANARY_SCHEDULE`) does three idempotent steps:

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

Delay before requesting: Param `delay_minutes`, else Variable `{DELAY_VARIABLE}`, else 60.
Verify timeout: Param `verify_timeout_minutes`, else Variable `{TIMEOUT_VARIABLE}`, else 4320 (3 days: the warehouse DAG runs daily and a task is done only after the VACUUM of a later run).
Canary subjects never mix with real ones: recognisable ids, own tables, `is_canary` on their requests.
"""


def _minutes(params: dict, name: str, variable: str, default: int) -> int:
    from airflow.sdk import Variable

    v = params.get(name)
    if v is None:
        v = Variable.get(variable, default=default)
    try:
        v = int(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be an integer number of minutes, got {v!r}") from exc
    if v < 0:
        raise ValueError(f"{name}: must be >= 0, got {v}")
    return v


@dag(
    dag_id="erasure_canary",
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["erasure", "canary", "testing"],
    default_args={"owner": "privacy-platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
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
)
def erasure_canary():
    @task
    def seed(params: dict | None = None, run_id: str | None = None) -> dict:
        from erasure import canary
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog

        params = params or {}
        dsn, cat = tracking_dsn(), load_catalog()
        delay = timedelta(minutes=_minutes(params, "delay_minutes", DELAY_VARIABLE, 60))
        seeded = []
        if int(params.get("count", 1)) > 0:
            seeded = canary.seed_subjects(
                dsn,
                cat,
                subject_types=params.get("subject_types") or ["customer"],
                count=int(params.get("count", 1)),
                delay=delay,
                run_id=run_id,
            )
        appended: dict = {}
        if canary.warehouse_seeding_pending(dsn, cat):
            from erasure.spark import get_spark

            spark = get_spark("erasure-canary-seed")
            try:
                appended = canary.seed_warehouse(spark, dsn, cat)
            finally:
                spark.stop()
        return {"subjects": [s["subject_id"] for s in seeded], "warehouse_rows": appended}

    @task
    def request(params: dict | None = None, run_id: str | None = None) -> list:
        from erasure import canary
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog

        return canary.file_requests(tracking_dsn(), load_catalog(), run_id=run_id)

    @task
    def verify(params: dict | None = None) -> list:
        from airflow.sdk.exceptions import AirflowFailException

        from erasure import canary
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog

        params = params or {}
        dsn, cat = tracking_dsn(), load_catalog()
        timeout = timedelta(minutes=_minutes(params, "verify_timeout_minutes", TIMEOUT_VARIABLE, 4320))
        spark = None
        if canary.ready_to_verify(dsn, cat, timeout=timeout, needs_spark=True):
            from erasure.spark import get_spark

            spark = get_spark("erasure-canary-verify")
        try:
            results = canary.verify_subjects(dsn, cat, spark=spark, timeout=timeout)
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
