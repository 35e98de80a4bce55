"""Smoke checks of the real parts (used by the erasure_smoke DAG and the foundation tests)."""

from __future__ import annotations

import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

from erasure.db import connect

if TYPE_CHECKING:
    from erasure.settings import Settings


def check_postgres(dsn: str) -> dict[str, Any]:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version_num FROM erasure.alembic_version")
            row = cur.fetchone()
            if row is None:
                raise RuntimeError("tracking store is not migrated (erasure.alembic_version is empty)")
            cur.execute("SELECT count(*) FROM erasure.request")
            (requests,) = cur.fetchone() or (0,)
        conn.rollback()
    finally:
        conn.close()
    return {"schema_version": row[0], "requests": requests}


def check_kafka(bootstrap: str, topic: str = "erasure.smoke", timeout: float = 30.0) -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    token = uuid.uuid4().hex
    delivered: list[Any] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    producer.produce(topic, key=token, value=token, on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(timeout)
    if not delivered or delivered[0][0] is not None:
        raise RuntimeError(
            f"smoke message not delivered to {topic}: {delivered[0][0] if delivered else 'timeout'}"
        )
    msg = delivered[0][1]
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"smoke-{token}", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, msg.partition(), msg.offset())])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = consumer.poll(1.0)
            if got is not None and got.error() is None and (got.value() or b"").decode() == token:
                return {"topic": topic, "partition": msg.partition(), "offset": msg.offset()}
    finally:
        consumer.close()
    raise RuntimeError(f"smoke message produced to {topic} but not read back within {timeout}s")


def check_spark(settings: Settings, master: str | None = None) -> dict[str, Any]:
    """A Delta round trip on a session built from ``settings`` (``master`` overrides its master)."""
    from erasure.spark import delta_version, get_spark

    spark = get_spark("erasure-smoke", settings=settings, master=master)
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/smoke"
        spark.range(100).write.format("delta").save(path)
        n = spark.read.format("delta").load(path).count()
    if n != 100:
        raise RuntimeError(f"Delta round trip read {n} rows, wrote 100")
    return {"rows": n, "delta": delta_version(settings.jars_path), "spark": spark.version}
