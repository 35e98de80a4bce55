"""Fault settings of the demo Kafka partner (validation only; the behaviour is tested on the real broker)."""

from __future__ import annotations

import pytest

from erasure_demo.partners.kafka_partner import KafkaFaults


def test_faults_merge_and_coerce():
    f = KafkaFaults()
    f.update({"slow_ms": "20", "drop_rate": 0.5, "crash_every": 3})
    assert (f.slow_ms, f.drop_rate, f.crash_every, f.fail_rate) == (20.0, 0.5, 3, 0.0)


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"drop_rate": 1.5}, "'drop_rate' must be between 0 and 1"),
        ({"fail_rate": -0.1}, "'fail_rate' must be between 0 and 1"),
        ({"slow_ms": -1}, "'slow_ms' must be >= 0"),
        ({"crash_every": "often"}, "'crash_every' must be a number"),
        ({"explode": True}, "unknown kafka fault setting 'explode'"),
    ],
)
def test_bad_faults_are_named(data, msg):
    with pytest.raises(ValueError, match=msg):
        KafkaFaults().update(data)
