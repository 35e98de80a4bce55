"""Resolve settings from Airflow connections/variables (secrets stay in AIRFLOW_CONN_* / the secrets backend).

* ``erasure_tracking`` - the tracking store (:func:`tracking_dsn`);
* ``erasure_kafka`` - the Kafka client config in the connection's ``extra`` (:func:`kafka_bootstrap`,
  ``erasure.airflow.kafka_tasks.kafka_config``);
* ``spark_default`` - the Spark master in the connection's host (:func:`spark_master`).

"""

from __future__ import annotations

import logging

TRACKING_CONN_ID = "erasure_tracking"
KAFKA_CONN_ID = "erasure_kafka"
SPARK_CONN_ID = "spark_default"

log = logging.getLogger(__name__)


def tracking_dsn(conn_id: str = TRACKING_CONN_ID, *, fallback_to_settings: bool = False) -> str:
    """A psycopg2 DSN for the tracking store from the Airflow connection.

    ``fallback_to_settings``: when the connection cannot be read (a process without Airflow
    connections, e.g. a callback outside a task), use ``ERASURE_TRACKING_DSN`` instead.
    """
    from airflow.sdk import BaseHook

    try:
        uri = BaseHook.get_connection(conn_id).get_uri()
    except Exception as exc:
        if not fallback_to_settings:
            raise
        from erasure.settings import get_settings

        dsn = get_settings().tracking_dsn
        if not dsn:
            raise RuntimeError(
                f"no tracking store: set AIRFLOW_CONN_{conn_id.upper()} or ERASURE_TRACKING_DSN"
            ) from exc
        return dsn
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://") :]
    return uri.split("?")[0] if uri.endswith("?") else uri


def kafka_bootstrap(conn_id: str = KAFKA_CONN_ID) -> str:
    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(conn_id).extra_dejson
    return str(extra["bootstrap.servers"])


def spark_master(conn_id: str = SPARK_CONN_ID) -> str | None:
    """The Spark master from the connection's host (``local[2]``, ``spark://host:7077``, ``yarn``),
    or None when there is no such connection or it has no host (the job's own default then:
    ``ERASURE_SPARK_MASTER``)."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id).host or None
    except Exception as exc:  # noqa: BLE001 (no connection: the job's own default)
        log.info("no Spark master from connection '%s' (%s): the job's default is used", conn_id, exc)
        return None
