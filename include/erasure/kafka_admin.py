"""Kafka topics the pipeline uses, created idempotently by the set-up.

Replication: ``replication_factor`` and ``min.insync.replicas`` come from the settings
(``ERASURE_KAFKA_REPLICATION_FACTOR``, ``ERASURE_KAFKA_MIN_INSYNC_REPLICAS``; 1/1 on the single local
broker, 3/2 on the three-broker cluster topology). Client security (SASL/TLS) is librdkafka config
passed as ``client_config`` (in Airflow: the ``erasure_kafka`` connection's extra, docs/kafka.md).

Retention: erasure events carry subject identifiers (personal data). Kafka keeps them for
``retention.ms`` (7 days) after which the segments are deleted (segments roll daily: at most ~8 days);
see docs/kafka.md "Kafka retention holds personal data".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
SEGMENT_MS = 24 * 3600 * 1000  # issue 5: segments roll daily (docs/kafka.md, "Kafka retention")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    purpose: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("erasure.events", 6, SEVEN_DAYS_MS, "erasure events to async partners, keyed by subject"),
    TopicSpec("erasure.acks", 3, SEVEN_DAYS_MS, "partners' acknowledgements, correlated by event id"),
    TopicSpec("erasure.smoke", 1, 3600 * 1000, "smoke checks of the stack"),
)


# errors a retry cannot mend (a bad spec or missing rights): reported at once, not after the deadline
PERMANENT_ERRORS = (
    "INVALID_CONFIG",
    "INVALID_PARTITIONS",
    "TOPIC_EXCEPTION",  # an invalid topic name
    "POLICY_VIOLATION",
    "TOPIC_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
)


class TopicsError(RuntimeError):
    """Topics could not be created (a permanent error, or still failing at the deadline); the message
    names the bootstrap, each topic and its error."""


def ensure_topics(
    bootstrap: str,
    topics: tuple[TopicSpec, ...] | list[TopicSpec] = TOPICS,
    timeout: float = 120.0,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
    client_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.

    Each new topic gets ``replication_factor`` replicas and ``min.insync.replicas`` =
    ``min_insync_replicas`` (callers pass the settings' values). ``client_config`` is extra librdkafka
    configuration for the admin client (``security.protocol``, ``sasl.*``, ``ssl.*``);
    ``bootstrap`` wins over a ``bootstrap.servers`` in it.

    A broker that has just opened its port may not have registered with its KRaft controller yet:
    creating a topic then fails with ``INVALID_REPLICATION_FACTOR`` ("only 0 broker(s) are
    registered") or a timeout. Such errors are retried with backoff until ``timeout`` seconds have
    passed; what still fails then is raised as :class:`TopicsError`.
    """
    from confluent_kafka.admin import AdminClient

    if not 1 <= min_insync_replicas <= replication_factor:
        raise ValueError(
            f"min.insync.replicas {min_insync_replicas} must be between 1 and the replication factor "
            f"{replication_factor}"
        )
    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    created: list[str] = []
    delay = 0.5
    while True:
        errors = _create_missing(admin, topics, created, replication_factor, min_insync_replicas)
        if not errors:
            return created
        permanent = any(f"code={code}," in err for err in errors.values() for code in PERMANENT_ERRORS)
        if permanent or time.monotonic() + delay > deadline:
            detail = "; ".join(f"{name}: {err}" for name, err in errors.items())
            waited = "" if permanent else f" after {timeout:.0f}s"
            raise TopicsError(f"creating Kafka topics on {bootstrap} failed{waited}: {detail}")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _create_missing(
    admin: Any,
    topics: tuple[TopicSpec, ...] | list[TopicSpec],
    created: list[str],
    replication_factor: int,
    min_insync_replicas: int,
) -> dict[str, str]:
    """One attempt: create the topics that do not exist yet; returns {topic: error} for failures."""
    from confluent_kafka.admin import NewTopic

    try:
        md = admin.list_topics(timeout=10)
    except Exception as exc:  # noqa: BLE001 - broker not reachable yet: retried by the caller
        return {t.name: f"listing topics failed: {exc}" for t in topics}
    if len(md.brokers) < replication_factor:  # brokers still registering count as not ready yet
        return {
            t.name: f"{len(md.brokers)} broker(s) registered, replication factor {replication_factor}"
            for t in topics
        }
    new = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=replication_factor,
            config={
                "retention.ms": str(t.retention_ms),
                "min.insync.replicas": str(min_insync_replicas),
                # issue 5: Kafka deletes whole segments only; rolling daily bounds how long an event
                # (personal data) outlives retention.ms to about a day (docs/kafka.md)
                "segment.ms": str(min(t.retention_ms, SEGMENT_MS)),
                "cleanup.policy": "delete",
            },
        )
        for t in topics
        if t.name not in md.topics
    ]
    errors: dict[str, str] = {}
    if not new:
        return errors
    for name, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # noqa: BLE001 - every failure is reported by name
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # a concurrent creator is fine
                errors[name] = str(exc)
    return errors
