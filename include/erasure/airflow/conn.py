"""Resolve settings from Airflow connections/variables (secrets stay in AIRFLOW_CONN_* / the secrets backend)."""

from __future__ import annotations

TRACKING_CONN_ID = "erasure_tracking"
KAFKA_CONN_ID = "erasure_kafka"


def tracking_dsn(conn_id: str = TRACKING_CONN_ID) -> str:
    """A psycopg2 DSN for the tracking store from the Airflow connection."""
    from airflow.sdk import BaseHook

    uri = BaseHook.get_connection(conn_id).get_uri()
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://") :]
    return uri.split("?")[0] if uri.endswith("?") else uri


def kafka_bootstrap(conn_id: str = KAFKA_CONN_ID) -> str:
    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(conn_id).extra_dejson
    return str(extra["bootstrap.servers"])
