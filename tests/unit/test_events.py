"""The erasure event and ack schemas (pure validation, no services)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from erasure.events import (
    EVENT_TYPE,
    SCHEMA_VERSION,
    ErasureEvent,
    SchemaError,
    message_key,
    new_ack,
    new_event,
    parse_ack,
    parse_event,
)


def _event_dict(**over):
    d = {
        "event_id": str(uuid.uuid4()),
        "type": EVENT_TYPE,
        "schema_version": 1,
        "subject": {"type": "customer", "id": "cus_abc123"},
        "target": "marketing_events",
        "request_id": 7,
        "issued_at": "2025-01-02T03:04:05+00:00",
        "attempt": 1,
    }
    d.update(over)
    return d


def test_event_round_trip_bytes_and_key():
    ev = new_event(subject_type="customer", subject_id="cus_abc123", target="marketing_events", request_id=7)
    assert ev.schema_version == SCHEMA_VERSION and ev.type == EVENT_TYPE and ev.attempt == 1
    assert ev.key == "customer:cus_abc123" == message_key("customer", "cus_abc123")
    again = parse_event(ev.to_bytes())
    assert again == ev
    assert dict(ev.headers())["event_id"] == str(ev.event_id).encode()
    # every field of the envelope is in the JSON
    assert set(json.loads(ev.to_json())) == {
        "event_id", "type", "schema_version", "subject", "target", "request_id", "issued_at", "attempt",
    }  # fmt: skip


def test_event_accepts_dict_str_and_bytes():
    d = _event_dict()
    for raw in (d, json.dumps(d), json.dumps(d).encode()):
        assert str(parse_event(raw).event_id) == d["event_id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"type": "erasure.done"}, "type"),
        ({"subject": {"type": "customer"}}, "subject.id"),
        ({"subject": {"type": "Customer!", "id": "x"}}, "subject.type"),
        ({"target": "Bad Target"}, "target"),
        ({"request_id": 0}, "request_id"),
        ({"issued_at": "2025-01-02T03:04:05"}, "issued_at"),  # naive timestamps are rejected
        ({"attempt": 0}, "attempt"),
        ({"extra": 1}, "extra"),
    ],
)
def test_event_errors_name_the_field(change, field):
    with pytest.raises(SchemaError) as ei:
        parse_event(_event_dict(**change))
    assert f"field '{field}'" in str(ei.value)


def test_version_2_carries_identifiers_and_version_1_cannot():
    from erasure.events import new_event

    ev = new_event(
        subject_type="customer",
        subject_id="dev_aaaa1",
        target="marketing_events",
        request_id=3,
        identifiers={"device_id": ["dev_aaaa1", "dev_bbbb2"]},
    )
    assert ev.schema_version == 2 and ev.values() == ["dev_aaaa1", "dev_bbbb2"]
    assert parse_event(ev.to_bytes()) == ev
    plain = new_event(subject_type="customer", subject_id="cus_1", target="marketing_events", request_id=3)
    assert plain.schema_version == 1 and "identifiers" not in json.loads(plain.to_bytes())
    d = json.loads(ev.to_bytes())
    d["schema_version"] = 1
    with pytest.raises(SchemaError, match="identifiers: needs schema_version 2"):
        parse_event(json.dumps(d))


def test_event_missing_field_is_named():
    d = _event_dict()
    del d["attempt"]
    with pytest.raises(SchemaError, match="field 'attempt'"):
        parse_event(json.dumps(d))


@pytest.mark.parametrize("version", [3, 0, "1", True, None])
def test_event_unsupported_schema_version(version):
    d = _event_dict(schema_version=version)
    if version is None:
        del d["schema_version"]
    with pytest.raises(SchemaError, match="field 'schema_version'"):
        parse_event(json.dumps(d))


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (None, "no value"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_event_garbage(raw, msg):
    with pytest.raises(SchemaError, match=msg):
        parse_event(raw)


def test_new_event_validates_input():
    with pytest.raises(SchemaError, match="field 'request_id'"):
        new_event(subject_type="customer", subject_id="cus_1", target="marketing_events", request_id=-1)


def test_ack_round_trip_and_outcomes():
    ev = new_event(subject_type="customer", subject_id="cus_abc123", target="recommendations", request_id=1)
    for outcome, ok in (("erased", True), ("not_found", True), ("failed", False)):
        ack = new_ack(ev, "recommendations", outcome, {"rows": 3})
        back = parse_ack(ack.to_bytes())
        assert back == ack and back.succeeded is ok and back.event_id == ev.event_id
    # schema_version is optional in acks
    raw = {
        "event_id": str(ev.event_id),
        "target": "x",
        "outcome": "erased",
        "acked_at": datetime.now(UTC).isoformat(),
    }
    assert parse_ack(json.dumps(raw)).schema_version == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"outcome": "deleted"}, "outcome"),
        ({"event_id": "123"}, "event_id"),
        ({"acked_at": "yesterday"}, "acked_at"),
        ({"details": "text"}, "details"),
        ({"schema_version": 9}, "schema_version"),
    ],
)
def test_ack_errors_name_the_field(change, field):
    raw = {
        "event_id": str(uuid.uuid4()),
        "target": "recommendations",
        "outcome": "erased",
        "details": {},
        "acked_at": "2025-01-02T03:04:05Z",
    }
    raw.update(change)
    with pytest.raises(SchemaError) as ei:
        parse_ack(json.dumps(raw))
    assert f"field '{field}'" in str(ei.value)


def test_models_are_frozen():
    ev = ErasureEvent.model_validate(_event_dict())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        ev.attempt = 2  # type: ignore[misc]
