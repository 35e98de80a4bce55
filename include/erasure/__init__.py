"""The erasure pipeline's domain package.

The core (catalog, tracking, sync deletes, events, reconcile, alerts, warehouse) does not import
Airflow, so Spark jobs, CLIs and tests use it directly. Airflow glue lives in ``erasure.airflow``.
"""

__version__ = "0.1.0"
