"""Topic replication comes from the settings (issue 20), not from the code."""

from __future__ import annotations

import pytest

from erasure.kafka_admin import TopicSpec, ensure_topics
from erasure.settings import SettingsError, get_settings


def test_replication_defaults_fit_one_broker(monkeypatch):
    monkeypatch.delenv("ERASURE_KAFKA_REPLICATION_FACTOR", raising=False)
    monkeypatch.delenv("ERASURE_KAFKA_MIN_INSYNC_REPLICAS", raising=False)
    s = get_settings()
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (1, 1)


def test_replication_from_the_environment(monkeypatch):
    monkeypatch.setenv("ERASURE_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("ERASURE_KAFKA_MIN_INSYNC_REPLICAS", "2")
    s = get_settings()
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)


@pytest.mark.parametrize(("rf", "isr"), [("1", "2"), ("0", "1"), ("3", "0")])
def test_impossible_replication_is_refused_naming_the_variable(monkeypatch, rf, isr):
    monkeypatch.setenv("ERASURE_KAFKA_REPLICATION_FACTOR", rf)
    monkeypatch.setenv("ERASURE_KAFKA_MIN_INSYNC_REPLICAS", isr)
    with pytest.raises(SettingsError, match="ERASURE_"):
        get_settings()


def test_ensure_topics_refuses_isr_above_replicas_before_connecting():
    # port 9 (discard) on loopback: nothing is contacted, the arguments are refused first
    with pytest.raises(ValueError, match="min.insync.replicas 3"):
        ensure_topics(
            "127.0.0.1:9",
            [TopicSpec("t", 1, 1000, "test")],
            timeout=1,
            replication_factor=2,
            min_insync_replicas=3,
        )
