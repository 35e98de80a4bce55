"""Topic creation by the set-up (``python -m erasure.cli kafka-topics``, called by ``scripts/stack.sh up``).

A KRaft broker opens its port before it has registered with its controller; creating topics at that
moment fails ("only 0 broker(s) are registered"). CI once failed exactly there, so the set-up retries
until the broker is ready. These tests use a private broker started for the test, never the shared one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from erasure.kafka_admin import SEGMENT_MS, TopicsError, TopicSpec, ensure_topics
from tests.integration._outbox_support import ROOT, PrivateBroker

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_broker(tmp_path):
    """A newly formatted broker, started WITHOUT waiting for it to be ready (like the set-up)."""
    b = PrivateBroker(tmp_path / "broker").setup().start(wait=False)
    try:
        b.wait_port()  # like the set-up: the port is open, nothing more is known
        yield b
    finally:
        b.kill()


def _kafka_topics_cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m erasure.cli kafka-topics` as scripts/stack.sh runs it, against ``bootstrap``."""
    env = {**os.environ, "ERASURE_KAFKA_BOOTSTRAP": bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "erasure.cli", "kafka-topics", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(30)
    return {k: v.value for k, v in entries.items()}


def test_cli_creates_the_topics_as_soon_as_the_port_opens_and_again_is_a_noop(fresh_broker):
    first = _kafka_topics_cli(fresh_broker.bootstrap)
    assert first.returncode == 0, first.stderr
    assert "created topics: erasure.events, erasure.acks, erasure.smoke" in first.stdout

    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": fresh_broker.bootstrap}).list_topics(timeout=30)
    assert {t: len(md.topics[t].partitions) for t in ("erasure.events", "erasure.acks", "erasure.smoke")} == {
        "erasure.events": 6,
        "erasure.acks": 3,
        "erasure.smoke": 1,
    }
    cfg = _topic_config(fresh_broker.bootstrap, "erasure.events")
    assert cfg["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert cfg["segment.ms"] == str(SEGMENT_MS)
    assert cfg["cleanup.policy"] == "delete"

    again = _kafka_topics_cli(fresh_broker.bootstrap)
    assert again.returncode == 0, again.stderr
    assert "(none, all exist)" in again.stdout


def test_a_bad_topic_spec_is_named_at_once_not_retried_until_the_deadline(fresh_broker):
    ensure_topics(fresh_broker.bootstrap, [TopicSpec("t.ok", 1, 3600 * 1000, "test")])
    with pytest.raises(TopicsError) as exc:
        ensure_topics(fresh_broker.bootstrap, [TopicSpec("t.bad", 0, 3600 * 1000, "test")], timeout=600)
    msg = str(exc.value)
    assert "t.bad" in msg and "INVALID_PARTITIONS" in msg
    assert "after 600s" not in msg  # a permanent error is reported on the first attempt

    with pytest.raises(TopicsError) as exc:
        ensure_topics(fresh_broker.bootstrap, [TopicSpec("bad/name", 1, 3600 * 1000, "test")], timeout=600)
    assert "bad/name" in str(exc.value) and "after 600s" not in str(exc.value)


def test_an_unreachable_broker_fails_with_the_bootstrap_named_after_the_deadline():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TopicsError) as exc:
        ensure_topics(f"127.0.0.1:{port}", [TopicSpec("t.x", 1, 3600 * 1000, "test")], timeout=3)
    msg = str(exc.value)
    assert f"127.0.0.1:{port}" in msg and "after 3s" in msg and "t.x" in msg


def test_cli_reports_an_unreachable_broker_in_one_line_without_a_traceback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _kafka_topics_cli(f"127.0.0.1:{port}", "--timeout", "2")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"creating Kafka topics on 127.0.0.1:{port} failed after 2s" in r.stderr
