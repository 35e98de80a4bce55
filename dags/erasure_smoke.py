"""Smoke check of the stack: Postgres (tracking store), Kafka (produce + consume) and Spark (Delta).

Touches every real part the pipeline needs and fails loudly if one is missing:

* **postgres**: the tracking store is migrated (`erasure.request` exists) and writable in a rolled-back transaction;
* **kafka**: produces a message to `erasure.smoke` with the idempotent producer and reads it back;
* **spark**: writes and reads a Delta table with the jars fetched from Maven Central.

Trigger it from the UI or `POST /api/v2/dags/erasure_smoke/dagRuns` with `{"logical_date": null}`.

Code: `erasure.smoke` (no Airflow).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from erasure.airflow.defaults import dag_kwargs


@dag(
    dag_id="erasure_smoke",
    schedule=None,
    **dag_kwargs(__doc__, tags=["smoke"], retries=1, retry_delay=timedelta(seconds=10)),
)
def erasure_smoke():
    @task
    def postgres() -> dict:
        from erasure import smoke
        from erasure.airflow.conn import tracking_dsn

        return smoke.check_postgres(tracking_dsn())

    @task
    def kafka() -> dict:
        from erasure import smoke
        from erasure.airflow.conn import kafka_bootstrap

        return smoke.check_kafka(kafka_bootstrap())

    @task
    def spark() -> dict:
        from erasure import smoke
        from erasure.settings import get_settings

        return smoke.check_spark(get_settings())

    postgres() >> kafka() >> spark()


erasure_smoke()
