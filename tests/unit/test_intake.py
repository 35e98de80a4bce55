"""Intake validation without a database: every bad-input kind gives an error naming the field, the
JSON schema behind the Airflow Params refuses the same inputs, and helpers shape conf and reports."""

from __future__ import annotations

import json

import jsonschema
import pytest

from erasure.intake import (
    FIELDS,
    MAX_LEN,
    MAX_PAYLOAD_BYTES,
    IntakeResult,
    Outcome,
    field_schemas,
    request_item_schema,
    requests_from_conf,
    result_report,
    sanitise_payload,
    validate_request,
)

GOOD = {"subject_type": "customer", "subject_id": "cus_ab12cd", "requested_by": "alice@example.com"}


def bad(**changes):
    out = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            out.pop(k)
        else:
            out[k] = v
    return out


_DROP = object()

# (case id, payload, field named in the error, words of the problem)
BAD_INPUTS = [
    ("unknown_subject_type", bad(subject_type="alien"), "subject_type", "unknown subject type"),
    ("subject_type_sql", bad(subject_type="customer' OR '1'='1"), "subject_type", "unknown subject type"),
    ("id_not_matching_pattern", bad(subject_id="12345"), "subject_id", "id pattern"),
    ("id_of_other_type", bad(subject_id="emp_00123"), "subject_id", "id pattern"),
    (
        "id_sql_injection",
        bad(subject_id="cus_1'; DROP TABLE erasure.request; --"),
        "subject_id",
        "id pattern",
    ),
    ("id_union_select", bad(subject_id="cus_x UNION SELECT * FROM pg_user"), "subject_id", "id pattern"),
    ("id_trailing_newline", bad(subject_id="cus_ab12cd\n"), "subject_id", "control character"),
    ("id_nul", bad(subject_id="cus_ab\x0012cd"), "subject_id", "U+0000"),
    ("id_wrong_type_int", bad(subject_id=12345), "subject_id", "must be a string, got integer"),
    ("id_wrong_type_list", bad(subject_id=["cus_ab12cd"]), "subject_id", "must be a string, got array"),
    ("id_wrong_type_bool", bad(subject_id=True), "subject_id", "must be a string, got boolean"),
    ("id_oversized", bad(subject_id="cus_" + "a" * 300), "subject_id", "more than the maximum"),
    ("missing_subject_id", bad(subject_id=_DROP), "subject_id", "is required"),
    ("null_subject_type", bad(subject_type=None), "subject_type", "must not be null"),
    ("missing_requested_by", bad(requested_by=_DROP), "requested_by", "is required"),
    ("empty_requested_by", bad(requested_by=""), "requested_by", "must not be empty"),
    ("blank_requested_by", bad(requested_by="   "), "requested_by", "must not be empty"),
    ("requested_by_too_long", bad(requested_by="a" * 201), "requested_by", "more than the maximum of 200"),
    ("requested_by_sql", bad(requested_by="admin'--"), "requested_by", "must match"),
    ("requested_by_control", bad(requested_by="bob\x1b[31m"), "requested_by", "control character U+001B"),
    ("requested_by_bidi", bad(requested_by="bob\u202eevil"), "requested_by", "bidirectional"),
    ("empty_external_id", bad(external_id=""), "external_id", "must not be empty"),
    ("external_id_sql", bad(external_id="x'); DELETE FROM erasure.task; --"), "external_id", "must match"),
    ("external_id_too_long", bad(external_id="T" * 129), "external_id", "more than the maximum of 128"),
    ("external_id_wrong_type", bad(external_id=42), "external_id", "must be a string, got integer"),
    ("unknown_jurisdiction", bad(jurisdiction="MARS"), "jurisdiction", "unknown jurisdiction"),
    ("jurisdiction_lowercase", bad(jurisdiction="gdpr"), "jurisdiction", "unknown jurisdiction"),
    ("unknown_extra_field", bad(email="a@b.c"), "email", "unknown field"),
    ("reason_too_long", bad(reason="r" * 1001), "reason", "more than the maximum of 1000"),
    ("reason_nul", bad(reason="please\x00erase"), "reason", "U+0000"),
    ("reason_lone_surrogate", bad(reason="bad \ud800 text"), "reason", "UTF-8"),
    ("reason_wrong_type", bad(reason={"text": "x"}), "reason", "must be a string, got object"),
    ("oversized_payload", bad(**{f"x{i}": "y" * 200 for i in range(25)}), "(request)", "bytes, more than"),
    ("not_an_object", ["customer", "cus_ab12cd"], "(request)", "must be a JSON object, got array"),
    ("null_request", None, "(request)", "must be a JSON object, got null"),
]


@pytest.mark.parametrize(
    ("payload", "field", "words"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_names_field_and_problem(catalog, payload, field, words):
    req, errors = validate_request(catalog, payload)
    assert req is None
    assert errors, "a bad input must give at least one error"
    matching = [e for e in errors if e.field == field]
    assert matching, f"no error for field {field!r}: {errors}"
    assert any(words in e.problem for e in matching), f"{words!r} not in {[e.problem for e in matching]}"


def test_at_least_twenty_kinds_of_bad_input():
    assert len({c[0] for c in BAD_INPUTS}) >= 20


# Cases the batch JSON schema (the Airflow Param of `requests`) refuses by itself.
SCHEMA_CASES = [
    c for c in BAD_INPUTS if c[0] not in {"oversized_payload", "reason_lone_surrogate", "null_request"}
]


@pytest.mark.parametrize("payload", [c[1] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_param_schema_refuses_the_same_bad_inputs(catalog, payload):
    schema = {"type": "array", "items": request_item_schema(catalog)}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([payload], schema, format_checker=jsonschema.FormatChecker())


def test_param_schema_accepts_good_requests(catalog):
    schema = {"type": "array", "items": request_item_schema(catalog)}
    good = [
        GOOD,
        {
            **GOOD,
            "external_id": "ZD-12345",
            "reason": "Customer asked by email.\nTwice.",
            "jurisdiction": "CCPA",
        },
        {"subject_type": "employee", "subject_id": "emp_00123", "requested_by": "hr-bot"},
    ]
    jsonschema.validate(good, schema)
    for g in good:
        req, errors = validate_request(catalog, g)
        assert errors == [] and req is not None


def test_field_schemas_follow_the_catalog(catalog):
    f = field_schemas(catalog)
    assert f["subject_type"]["enum"] == ["customer", "employee"]
    assert f["jurisdiction"]["enum"] == sorted(catalog.jurisdiction_sla_days)
    assert f["requested_by"]["maxLength"] == MAX_LEN["requested_by"]


def test_valid_request_is_normalised(catalog):
    req, errors = validate_request(catalog, {**GOOD, "reason": ""})
    assert errors == []
    assert req.jurisdiction == "GDPR" and req.reason is None and req.external_id_generated
    req2, _ = validate_request(catalog, {**GOOD, "external_id": "ticket:42", "jurisdiction": "UK-GDPR"})
    assert (
        req2.external_id == "ticket:42" and not req2.external_id_generated and req2.jurisdiction == "UK-GDPR"
    )


def test_payload_limit_counts_bytes_not_characters(catalog):
    # 1000 characters of 3-byte text is within the reason limit but over the payload byte limit? No:
    # 3000 bytes < MAX_PAYLOAD_BYTES, so it is accepted; 1000 4-byte emoji push it over.
    ok, errs = validate_request(catalog, {**GOOD, "reason": "é" * 1000})
    assert errs == [] and ok is not None
    _, errs = validate_request(catalog, {**GOOD, "reason": "\U0001f600" * 1000})
    assert any(e.field == "(request)" and str(MAX_PAYLOAD_BYTES) in e.problem for e in errs)


def test_sanitise_payload_is_storable_and_bounded():
    payload = {
        "subject_id": "a\x00b\u202e" + "x" * 1000,
        "nested": {"deep": {"deeper": [1, 2]}},
        **{f"k{i}": i for i in range(30)},
    }
    out = sanitise_payload(payload)
    text = json.dumps(out)
    assert "\\u0000" not in json.dumps(payload["subject_id"][:0]) and "\x00" not in text
    assert out["subject_id"].startswith("a\\u0000b\\u202e") and "more" not in out["subject_id"][:10]
    assert "(+" in out["subject_id"] and len(out["subject_id"]) < 300
    assert out["nested"] == {"deep": "<object>"}
    assert out["..."].endswith("more keys")
    assert sanitise_payload("\ud800") == "\\ud800"


DECLARED = [*FIELDS, "requests"]


def test_requests_from_conf_single_batch_and_errors():
    assert requests_from_conf(GOOD, DECLARED) == [GOOD]
    # the UI form sends every param; empty ones are null
    assert requests_from_conf({**dict.fromkeys(DECLARED), **GOOD}, DECLARED) == [GOOD]
    # undeclared conf keys become part of the request (so it is rejected as an unknown field)
    assert requests_from_conf({**GOOD, "colour": "red"}, DECLARED) == [{**GOOD, "colour": "red"}]
    assert requests_from_conf({"requests": [GOOD, GOOD], "reason": None}, DECLARED) == [GOOD, GOOD]
    with pytest.raises(ValueError, match="not both"):
        requests_from_conf({"requests": [GOOD], "subject_id": "cus_ab12cd"}, DECLARED)
    with pytest.raises(ValueError, match="not both"):
        requests_from_conf({"requests": [GOOD], "colour": "red"}, DECLARED)
    with pytest.raises(ValueError, match="no request given"):
        requests_from_conf(dict.fromkeys(DECLARED), DECLARED)
    with pytest.raises(ValueError, match="no request given"):
        requests_from_conf({}, DECLARED)


def test_result_counts_and_report():
    r = IntakeResult()
    r.add(Outcome(index=0, status="registered", request_id=1))
    r.add(Outcome(index=1, status="registered", request_id=2, held=True, message="legal hold 3: litigation"))
    r.add(Outcome(index=2, status="duplicate", request_id=1, message="duplicate of request 1"))
    r.add(
        Outcome(
            index=3,
            status="rejected",
            errors=[{"field": "subject_id", "problem": "x"}],
            message="subject_id: x",
        )
    )
    assert (r.received, r.registered, r.held, r.duplicates, r.rejected) == (4, 2, 1, 1, 1)
    assert r.consistent
    text = result_report(r.to_dict())
    assert "REJECTED request #3" in text and "HELD request #1" in text and "DUPLICATE request #2" in text
    small = r.to_dict(max_outcomes=2)
    assert small["outcomes_truncated"] and [o["status"] for o in small["outcomes"]] == [
        "duplicate",
        "rejected",
    ]
