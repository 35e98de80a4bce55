"""Airflow tasks of the Kafka outbox, used by ``dags/erasure_dispatch.py`` and ``dags/erasure_acks.py``.

The logic is in :mod:`erasure.outbox` (no Airflow). These wrappers resolve the tracking DSN and the Kafka
client config from Airflow connections (``erasure_tracking``, ``erasure_kafka``; the connection's
``extra`` is the full librdkafka config, so SASL/TLS settings work unchanged) and return small counts
for XCom (never subject identifiers).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task

from erasure.airflow.conn import KAFKA_CONN_ID


def kafka_config(conn_id: str = KAFKA_CONN_ID) -> dict[str, Any]:
    """The librdkafka client config of the Kafka connection (its ``extra``; ``bootstrap.servers`` required)."""
    from airflow.sdk import BaseHook

    extra = dict(BaseHook.get_connection(conn_id).extra_dejson)
    if not extra.get("bootstrap.servers"):
        raise ValueError(f"Airflow connection '{conn_id}': extra field 'bootstrap.servers' is missing")
    return extra


@task(task_id="kafka_enqueue")
def enqueue_kafka_events(limit: int = 10000) -> dict[str, Any]:
    """Due pending tasks of Kafka targets -> outbox rows + ``awaiting_ack``, in one transaction."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.catalog import load_catalog
    from erasure.outbox import enqueue_due

    res = enqueue_due(tracking_dsn(), load_catalog(), limit=limit)
    return {"enqueued": res.enqueued, "invalid": res.invalid, "by_target": res.by_target}


@task(task_id="kafka_publish")
def publish_kafka_events(limit: int | None = None) -> dict[str, Any]:
    """Publish every unpublished outbox row (new events and replays). A failed delivery fails the task."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.outbox import publish_pending

    res = publish_pending(tracking_dsn(), kafka_config(), limit=limit)
    return {
        "published": res.published,
        "batches": res.batches,
        "seconds": round(res.seconds, 3),
        "by_topic": res.by_topic,
    }


def ack_keys(targets: list[str]) -> dict[str, list[str]]:
    """Ack signing keys per Kafka target from Airflow connections ``erasure_ack_<target>`` (password =
    current key, extra ``{"previous": "..."}`` during a rotation). A target without a connection has no
    key: its acks are recorded as ``unauthenticated`` (``erasure.ack_auth``)."""
    from airflow.sdk import BaseHook

    keys: dict[str, list[str]] = {}
    for t in targets:
        try:
            conn = BaseHook.get_connection(f"erasure_ack_{t}")
        except Exception:  # noqa: BLE001 - a missing connection: no key, every ack refused (logged there)
            continue
        found = [k for k in (conn.password, conn.extra_dejson.get("previous")) if k]
        if found:
            keys[t] = found
    return keys


@task(task_id="consume_acks")
def consume_kafka_acks(
    max_seconds: float = 90.0, max_messages: int = 100_000, eof_grace_s: float = 5.0
) -> dict[str, Any]:
    """A bounded poll of the ack topics, in batches of 500 (one transaction each, offsets committed
    after it): until every partition is drained and no ack came for ``eof_grace_s`` (partners still at
    work keep it going), or ``max_seconds``/``max_messages``."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.catalog import load_catalog
    from erasure.outbox import consume_acks
    from erasure.vocab import TargetKind

    catalog = load_catalog()
    res = consume_acks(
        tracking_dsn(),
        kafka_config(),
        catalog=catalog,
        ack_keys=ack_keys([t.name for t in catalog.of_kind(TargetKind.KAFKA)]),
        max_seconds=max_seconds,
        max_messages=max_messages,
        eof_grace_s=eof_grace_s,
    )
    return {
        "messages": res.messages,
        **res.counts,
        "already_seen": res.already_seen,
        "tasks_succeeded": res.tasks_succeeded,
        "tasks_failed": res.tasks_failed,
        "unauthenticated": res.counts.get("unauthenticated", 0),
        "seconds": round(res.seconds, 1),
    }
