"""The Great Expectations suite of the event dataset on in-memory batches (no Spark, no database)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from erasure.dq import DataQualityError, validate_events
from erasure.event_dataset import (
    EVENT_COLUMN_NAMES,
    _interval_hours,
    check_retention_days,
    enrich,
    events_path,
    evidence_fields,
    outcome_of,
    to_arrow,
    to_frame,
)
from erasure.settings import Settings, SettingsError, get_settings

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
_SEQ = itertools.count(1)


def _src(event_type: str, request_id: int, *, target: str | None = None, status: str = "received", **kw):
    row = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "status": status,
        "attempt": 0,
        "occurred_at": T0 + timedelta(minutes=request_id),
        "request_id": request_id,
        "task_id": request_id * 10 if target else None,
        "target": target,
        "details_json": "{}",
        "external_id": f"ext-{request_id}",
        "subject_type": "customer",
        "subject_id": f"cus_subject{request_id:04d}",
        "jurisdiction": "GDPR",
        "request_source": "api",
        "is_canary": False,
        "received_at": T0,
        "due_at": T0 + timedelta(days=30),
        "task_kind": "sync_api" if target else None,
        "seq": next(_SEQ),
        "prev_hash": "0" * 64,
        "hash": "a" * 64,
    }
    row.update(kw)
    return row


@pytest.fixture
def rows():
    return [
        _src("request_received", 1),
        _src("task_created", 1, target="crm_contacts", status="pending"),
        _src(
            "task_succeeded",
            1,
            target="crm_contacts",
            status="succeeded",
            details_json='{"http_status": 204}',
        ),
        _src("ack_received", 1, target="marketing_events", status="erased", task_kind="kafka"),
        _src("request_completed", 1, status="completed"),
        _src("request_received", 2),
    ]


def _validate(catalog, rows, **kw):
    frame = to_frame(enrich(rows, catalog, built_at=T0))
    kw.setdefault("expected_rows", len(frame))
    kw.setdefault("expected_requests", frame["request_id"].nunique())
    return validate_events(frame, teams=[t.name for t in catalog.teams], columns=EVENT_COLUMN_NAMES, **kw)


def _failed(exc: DataQualityError) -> set[str]:
    return {f.expectation for f in exc.summary.failed}


def test_a_clean_batch_passes_and_enrichment_is_right(catalog, rows):
    summary = _validate(catalog, rows)
    assert summary.success and summary.evaluated >= 20 and summary.rows == 6
    frame = to_frame(enrich(rows, catalog, built_at=T0))
    by_type = frame.set_index("event_type")
    assert by_type.loc["task_succeeded", "owner_team"] == "crm"
    assert by_type.loc["task_succeeded", "http_status"] == 204
    assert by_type.loc["task_succeeded", "outcome"] == "success"
    assert by_type.loc["ack_received", "outcome"] == "success"
    assert by_type.loc["ack_received", "owner_team"] == "marketing"
    assert (frame[frame.target.isna()]["owner_team"] == catalog.pipeline_owner).all()
    assert str(by_type.loc["request_completed", "event_date"]) == "2025-03-01"
    # the Arrow conversion keeps the declared schema (what Spark MERGEs)
    assert to_arrow(frame).schema.names == list(EVENT_COLUMN_NAMES)


def test_duplicate_event_id_fails(catalog, rows):
    rows[1]["event_id"] = rows[0]["event_id"]
    with pytest.raises(DataQualityError) as ei:
        _validate(catalog, rows)
    assert "expect_column_values_to_be_unique" in _failed(ei.value)
    assert "expect_column_values_to_be_unique(event_id)" in str(ei.value)
    assert "nothing was written" in str(ei.value)


def test_null_keys_fail_without_leaking_identifiers(catalog, rows):
    rows[0]["subject_id"] = None
    rows[2]["target"] = None  # a task event without its target
    rows[2]["task_kind"] = None
    with pytest.raises(DataQualityError) as ei:
        _validate(catalog, rows)
    text = str(ei.value)
    assert "expect_column_values_to_not_be_null(subject_id)" in text
    assert "expect_column_values_to_not_be_null(target where" in text
    assert "cus_subject" not in text


def test_invalid_enums_fail(catalog, rows):
    rows[1]["task_kind"] = "carrier_pigeon"
    rows[3]["status"] = "maybe"  # an ack outcome that does not exist
    with pytest.raises(DataQualityError) as ei:
        _validate(catalog, rows)
    text = str(ei.value)
    assert "expect_column_values_to_be_in_set(target_kind)" in text
    assert "carrier_pigeon" in text
    assert "expect_column_values_to_be_in_set(status where" in text


def test_event_before_its_request_was_received_fails(catalog, rows):
    rows[0]["occurred_at"] = T0 - timedelta(hours=1)
    with pytest.raises(DataQualityError) as ei:
        _validate(catalog, rows)
    assert "expect_column_pair_values_a_to_be_greater_than_b(occurred_at, received_at)" in str(ei.value)


def test_counts_must_match_the_tracking_store(catalog, rows):
    with pytest.raises(DataQualityError) as ei:
        _validate(catalog, rows, expected_rows=7, expected_requests=3)
    assert {"expect_table_row_count_to_equal", "expect_column_unique_value_count_to_be_between"} <= _failed(
        ei.value
    )
    assert ei.value.summary.report["success"] is False  # the full GX report travels with the error


def test_target_missing_from_catalog_is_attributed_to_unknown_not_rejected(catalog, rows):
    rows.append(_src("task_created", 2, target="retired_system", status="pending"))
    frame = to_frame(enrich(rows, catalog, built_at=T0))
    assert frame.iloc[-1]["owner_team"] == "unknown"
    assert _validate(catalog, rows).success


def test_outcome_and_evidence_mapping():
    assert outcome_of("ack_received", "not_found") == "success"
    assert outcome_of("ack_received", "failed") == "failure"
    assert outcome_of("task_escalated", "escalated") == "escalated"
    assert outcome_of("task_dispatched", "in_progress") == "pending"
    ev = evidence_fields(
        {"ack": {"event_id": "e1", "outcome": "erased"}, "error": "x" * 3000, "rows_deleted": "12"}
    )
    assert ev["kafka_event_id"] == "e1" and ev["partner_outcome"] == "erased"
    assert ev["rows_deleted"] == 12 and len(ev["error"]) == 2000


def test_settings_are_checked(monkeypatch, tmp_path):
    assert _interval_hours("interval 2 days") == 48
    with pytest.raises(ValueError, match="deletedFileRetentionDuration"):
        _interval_hours("2 fortnights")
    with pytest.raises(ValueError, match="dataset_dir"):
        events_path(str(tmp_path / "we`ird"))
    monkeypatch.setenv("ERASURE_DATASET_RETENTION_DAYS", "0")
    with pytest.raises(SettingsError, match="ERASURE_DATASET_RETENTION_DAYS"):
        get_settings()
    monkeypatch.delenv("ERASURE_DATASET_RETENTION_DAYS")
    assert Settings().dataset_retention_days == 90
    with pytest.raises(ValueError, match="retention_days"):
        check_retention_days(0)
    with pytest.raises(ValueError, match="ERASURE_DATASET_RETENTION_DAYS"):
        check_retention_days(None)  # type: ignore[arg-type]


def test_identity_resolved_is_a_request_level_event():
    """It names no task or target (erasure.resolution), so the dataset's task-level checks skip it."""
    from erasure.dq import REQUEST_EVENT_TYPES, TASK_EVENT_TYPES

    assert "identity_resolved" in REQUEST_EVENT_TYPES and "identity_resolved" not in TASK_EVENT_TYPES
    assert "task_succeeded" in TASK_EVENT_TYPES and "request_completed" in REQUEST_EVENT_TYPES
