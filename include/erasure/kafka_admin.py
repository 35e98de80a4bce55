"""Kafka topics the pipeline uses, created idempotently by the set-up.

Retention: erasure events carry subject identifiers (personal data). Kafka keeps them for
``retention.ms`` (7 days) after which the segments are deleted (segments roll daily: at most ~8 days);
see docs/kafka.md "Kafka retention holds personal data".
"""

from __future__ import annotations

from dataclasses import dataclass

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


def ensure_topics(bootstrap: str, topics: tuple[TopicSpec, ...] | list[TopicSpec] = TOPICS) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=30).topics)
    new = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=1,
            config={
                "retention.ms": str(t.retention_ms),
                "min.insync.replicas": "1",
                # issue 5: Kafka deletes whole segments only; rolling daily bounds how long an event
                # (personal data) outlives retention.ms to about a day (docs/kafka.md)
                "segment.ms": str(min(t.retention_ms, SEGMENT_MS)),
                "cleanup.policy": "delete",
            },
        )
        for t in topics
        if t.name not in existing
    ]
    if not new:
        return []
    for _name, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result()
        except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return [t.topic for t in new]
