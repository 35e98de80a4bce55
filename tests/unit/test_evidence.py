"""Audit-chain canonical serialisation and receipt signing, without a database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from erasure.evidence import audit, receipts
from erasure.evidence.keys import (
    ReceiptKeys,
    b64url_decode,
    init_keys,
    jwks,
    key_id,
    load_jwks,
    public_keys_from_jwks,
)

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)


def test_canonical_event_is_a_compact_json_array_of_text():
    raw = audit.canonical_event(
        7, audit.GENESIS, "e-1", 12, None, "crm", "task_created", "pending", 0, T0, '{"a": 1}'
    )
    assert (
        raw
        == (
            '["erasure-audit-v1","7","'
            + audit.GENESIS
            + '","e-1","12",null,"crm","task_created","pending","0",'
            '"2026-11-24T10:00:00.123456Z","{\\"a\\": 1}"]'
        ).encode()
    )
    # text values and typed values serialise the same way (what the store returns vs. the Delta copy)
    assert audit.canonical_event("7", audit.GENESIS, "e-1", "12", None, "crm", "task_created", "pending", "0",
                                 "2026-11-24T10:00:00.123456Z", '{"a": 1}') == raw  # fmt: skip


def test_format_ts_is_utc_with_microseconds():
    cet = T0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert audit.format_ts(cet) == "2026-11-24T10:00:00.123456Z"
    assert audit.format_ts(T0.replace(microsecond=0)) == "2026-11-24T10:00:00.000000Z"


def _chain(n: int) -> list[list]:
    rows, prev = [], audit.GENESIS
    for i in range(1, n + 1):
        fields = [
            f"ev-{i}",
            "1",
            None,
            None,
            "request_received",
            "received",
            None,
            T0 + timedelta(seconds=i),
            "{}",
        ]
        h = audit.event_hash(i, prev, *fields)
        rows.append([i, prev, h, *fields])
        prev = h
    return rows


def test_verify_rows_accepts_a_chain_and_names_the_first_broken_link():
    rows = _chain(5)
    assert audit.verify_rows(rows).ok and audit.verify_rows(rows).events == 5
    altered = [list(r) for r in rows]
    altered[2][8] = "failed"  # status of seq 3
    rep = audit.verify_rows(altered)
    assert not rep.ok and rep.broken.seq == 3 and rep.broken.event_id == "ev-3"
    assert "hash does not match" in str(rep.broken) and rows[2][2] in str(rep.broken)
    gap = rows[:2] + rows[3:]
    assert audit.verify_rows(gap).broken.problem.startswith("sequence gap")
    relinked = [list(r) for r in rows]
    relinked[1][2] = audit.event_hash(2, relinked[1][1], *relinked[1][3:])  # unchanged content, same hash
    relinked[3][1] = "f" * 64
    assert audit.verify_rows(relinked).broken.seq == 4


def test_verify_rows_of_a_window_starts_at_its_first_link():
    rows = _chain(6)[2:]
    assert not audit.verify_rows(rows).ok  # seq 3 is not seq 1
    assert audit.verify_rows(rows, start_seq=3, start_prev=None).ok


@pytest.fixture
def keys(tmp_path):
    init_keys(tmp_path)
    return ReceiptKeys.from_files(
        tmp_path / "receipt-signing-key.pem", tmp_path / "identifier-hmac.key"
    ), tmp_path


def _doc(hmac_key: bytes) -> dict:
    request = {
        "id": 42, "external_id": "ext-abc-123", "subject_type": "customer", "subject_id": "cus_secret_1",
        "jurisdiction": "GDPR", "received_at": T0, "due_at": T0 + timedelta(days=30),
        "completed_at": T0 + timedelta(hours=2),
    }  # fmt: skip
    verification = {"outcome": "verified", "verified_at": "2026-11-24T11:00:00Z", "method": "GET lookup",
                    "answer": "GET /customers/cus_secret_1 -> 404"}  # fmt: skip
    tasks = [
        {"target": "crm_contacts", "kind": "sync_api", "status": "succeeded", "completed_at": T0,
         "evidence": {"http_status": 204, "outcome": "deleted", "verification": verification}},
        {"target": "app_db", "kind": "postgres_table", "status": "succeeded", "completed_at": T0,
         "evidence": {"rows_deleted": 2, "verification": dict(verification, outcome="not_verifiable")}},
    ]  # fmt: skip
    assert receipts.readiness({"status": "completed"}, tasks) is None
    last = {"seq": 9, "event_id": "0b3f", "hash": "ab" * 32}
    return receipts.build_receipt(
        request, tasks, last, hmac_key=hmac_key, owners={"crm_contacts": "crm"}, issued_at=T0
    )


def test_receipt_holds_identifiers_only_as_keyed_hashes(keys):
    k, _ = keys
    doc = _doc(k.hmac_key)
    text = receipts.canonical_json(doc).decode()
    assert "cus_secret_1" not in text and "ext-abc-123" not in text
    assert doc["request"]["subject_hash"] == receipts.keyed_hash(k.hmac_key, "customer:cus_secret_1")
    assert [t["target"] for t in doc["targets"]] == ["app_db", "crm_contacts"]
    assert doc["targets"][1]["owner"] == "crm" and doc["targets"][0]["owner"] == "unknown"
    assert doc["audit"]["last_event_seq"] == 9 and doc["request"]["on_time"] is True


def test_canonical_json_sorted_compact():
    assert (
        receipts.canonical_json({"b": 1, "a": {"d": [1, "é"], "c": None}})
        == '{"a":{"c":null,"d":[1,"é"]},"b":1}'.encode()
    )


def test_signed_receipt_verifies_with_the_jwks_only(keys):
    k, d = keys
    data = receipts.sign_receipt(_doc(k.hmac_key), k)
    public = load_jwks(d / "receipt-keys.jwks.json")
    assert list(public) == [k.kid]
    res = receipts.verify_receipt(data, public)
    assert res.ok, res.reason
    assert json.loads(data)["signature"]["kid"] == key_id(k.signing_key.public_key())


def test_every_one_byte_change_fails_verification(keys):
    k, d = keys
    data = receipts.sign_receipt(_doc(k.hmac_key), k)
    public = load_jwks(d / "receipt-keys.jwks.json")
    reasons = set()
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] ^= 0x01
        res = receipts.verify_receipt(bytes(changed), public)
        assert not res.ok, f"byte {i} changed ({bytes(data[max(0, i - 20) : i + 20])!r}) still verifies"
        reasons.add(res.reason.split(" (")[0].split(":")[0])
    assert "signature does not match the receipt's content" in reasons


def test_wrong_key_and_readiness(keys):
    k, _ = keys
    data = receipts.sign_receipt(_doc(k.hmac_key), k)
    other = Ed25519PrivateKey.generate().public_key()
    res = receipts.verify_receipt(data, public_keys_from_jwks(jwks(other)))
    assert not res.ok and res.reason.startswith("unknown key id")
    res = receipts.verify_receipt(data, {k.kid: other})
    assert not res.ok and res.reason.startswith("signature does not match")
    tasks = [{"target": "a", "status": "succeeded", "evidence": {"verification": {"outcome": "failed"}}}]
    assert "verification is failed" in receipts.readiness({"status": "completed"}, tasks)
    assert "is awaiting_ack" in receipts.readiness(
        {"status": "completed"}, [{"target": "a", "status": "awaiting_ack"}]
    )
    assert "verification is missing" in receipts.readiness(
        {"status": "completed"}, [{"target": "a", "status": "succeeded", "evidence": {}}]
    )


def test_keys_init_is_idempotent_and_private(keys):
    k, d = keys
    before = (d / "receipt-signing-key.pem").read_bytes()
    out = init_keys(d)
    assert out["created"] == [] and (d / "receipt-signing-key.pem").read_bytes() == before
    assert (d / "receipt-signing-key.pem").stat().st_mode & 0o077 == 0
    assert len(b64url_decode(json.loads((d / "receipt-keys.jwks.json").read_text())["keys"][0]["x"])) == 32
