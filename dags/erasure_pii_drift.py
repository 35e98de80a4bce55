"""Daily PII drift check of the warehouse: personal data the catalog does not declare.

**scan** submits `spark_jobs/pii_drift.py` with `spark-submit` (`SparkSubmitOperator`,
`erasure.airflow.spark.PiiDriftOperator`, master from `spark_default`, like the warehouse erasure): every catalogued `warehouse_delta` table's schema and a sample of its values are compared
with the target's declared `personal_data`, key columns and field rules, and every Delta table under
the warehouse root that no target names is looked at too. Findings:

* `undeclared_personal_column` - e.g. a new `phone` column, or one whose values look like e-mail
  addresses, phone or card numbers, IP addresses or subject ids: alert to the target's owner team;
* `uncatalogued_table` - a table holding an identifier column (`customer_id`, ...) or personal-looking
  columns: alert to the pipeline owner.

Each finding alerts once (`pii_drift`, deduplicated by table and column) and is appended to the
Delta table `pii_drift` under `ERASURE_DATASET_DIR` (no values, only what looked personal and why).
Findings do not fail the run; a job that cannot run does.

Code: `erasure.drift` and `spark_jobs/pii_drift.py` (no Airflow in either).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import DATA_PLATFORM, dag_kwargs
from erasure.airflow.spark import PiiDriftOperator


@dag(
    dag_id="erasure_pii_drift",
    schedule="@daily",
    max_active_runs=1,
    deadline=run_deadline(timedelta(hours=2)),
    **dag_kwargs(
        __doc__,
        tags=["warehouse", "spark", "data-quality"],
        owner=DATA_PLATFORM,
        retries=1,
        retry_delay=timedelta(minutes=10),
    ),
)
def erasure_pii_drift():
    PiiDriftOperator(task_id="scan", execution_timeout=timedelta(hours=1))


erasure_pii_drift()
