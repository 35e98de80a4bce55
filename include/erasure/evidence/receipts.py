"""Signed receipts: one JSON document per completed request, signed with Ed25519, checkable with the public key.

A receipt is issued only when the request is ``completed`` and every one of its tasks ``succeeded`` with
``evidence.verification.outcome`` ``verified`` or ``not_verifiable`` (:func:`readiness`). It holds no
identifier in clear: the subject and the external id appear only as keyed hashes (HMAC-SHA256 with the
identifier key), and any occurrence of them in evidence text is replaced by the hash.

File format (canonical JSON: sorted keys, no whitespace, UTF-8)::

    {"receipt": {...}, "signature": {"alg": "EdDSA", "kid": "<RFC 7638 thumbprint>", "value": "<base64url>"}}

The signature covers the canonical JSON of ``receipt``. :func:`verify_receipt` needs only the bytes and
the public keys (a JWKS): it names why a receipt fails. No Airflow here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from erasure.evidence.keys import ReceiptKeys, b64url, b64url_decode
from erasure.pseudonym import keyed_hash as keyed_hash  # a receipt's identifiers: keyed hashes (own key)

RECEIPT_VERSION = "erasure-receipt-v1"
ISSUER = "erasure-pipeline"
VERIFICATION_OK = frozenset({"verified", "not_verifiable"})
RECEIPTS_TABLE = "erasure_receipts"


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the bytes that are signed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def readiness(request: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> str | None:
    """None when a receipt may be issued, else why not."""
    if request.get("status", "completed") != "completed":
        return f"request is {request.get('status')}, not completed"
    if not tasks:
        return "request has no tasks"
    for t in sorted(tasks, key=lambda t: t["target"]):
        if t["status"] != "succeeded":
            return f"target {t['target']} is {t['status']}"
        ver = (t.get("evidence") or {}).get("verification") or {}
        outcome = ver.get("outcome")
        if outcome not in VERIFICATION_OK:
            return (
                f"target {t['target']}: verification is {outcome or 'missing'}, not verified/not_verifiable"
            )
    return None


def _summary(kind: str, evidence: Mapping[str, Any]) -> str:
    from erasure.targets import adapter

    try:
        return adapter(kind).evidence_summary(dict(evidence))
    except Exception as exc:  # noqa: BLE001 - an unknown/removed kind must not block the receipt
        return f"(no summary: {type(exc).__name__})"


class _Redactor:
    """Replaces the subject's identifiers in free text by their keyed hash."""

    def __init__(self, secrets_to_hash: Mapping[str, str]) -> None:
        self._pairs = sorted(
            ((s, h) for s, h in secrets_to_hash.items() if s and len(s) >= 3), key=lambda p: -len(p[0])
        )

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            for s, h in self._pairs:
                if s in value:
                    value = value.replace(s, f"[{h[:24]}…]")
            return value
        if isinstance(value, Mapping):
            return {str(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        if isinstance(value, float):
            return str(value)  # no floats in signed JSON (their text form is not canonical everywhere)
        return value


def build_receipt(
    request: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    last_event: Mapping[str, Any],
    *,
    hmac_key: bytes,
    owners: Mapping[str, str],
    issued_at: datetime,
    receipt_id: str | None = None,
) -> dict[str, Any]:
    """The receipt document (unsigned) of a completed request; a pure function."""
    subject = f"{request['subject_type']}:{request['subject_id']}"
    subject_hash = keyed_hash(hmac_key, subject)
    external_hash = keyed_hash(hmac_key, str(request["external_id"]))
    redact = _Redactor({str(request["subject_id"]): subject_hash, str(request["external_id"]): external_hash})
    completed_at = request.get("completed_at")
    due_at = request.get("due_at")
    targets = []
    for t in sorted(tasks, key=lambda t: t["target"]):
        evidence = t.get("evidence") or {}
        targets.append(
            {
                "target": t["target"],
                "kind": t["kind"],
                "owner": owners.get(t["target"], "unknown"),
                "outcome": t["status"],
                "completed_at": _iso(t.get("completed_at")),
                "evidence_summary": redact(_summary(t["kind"], evidence)),
                "verification": redact(evidence.get("verification") or {}),
            }
        )
    return {
        "version": RECEIPT_VERSION,
        "receipt_id": receipt_id or f"rcpt_{uuid.uuid4().hex}",
        "issuer": ISSUER,
        "issued_at": _iso(issued_at),
        "request": {
            "id": int(request["id"]),
            "external_id_hash": external_hash,
            "subject_type": request["subject_type"],
            "subject_hash": subject_hash,
            "jurisdiction": request["jurisdiction"],
            "received_at": _iso(request.get("received_at")),
            "due_at": _iso(due_at),
            "completed_at": _iso(completed_at),
            "on_time": bool(completed_at and due_at and completed_at <= due_at),
        },
        "targets": targets,
        "audit": {
            "chain": "erasure-audit-v1",
            "last_event_seq": int(last_event["seq"]),
            "last_event_id": str(last_event["event_id"]),
            "last_event_hash": str(last_event["hash"]),
        },
    }


def sign_receipt(doc: Mapping[str, Any], keys: ReceiptKeys) -> bytes:
    """The signed receipt file's bytes (canonical JSON of receipt + signature)."""
    signature = keys.signing_key.sign(canonical_json(doc))
    return canonical_json(
        {"receipt": doc, "signature": {"alg": "EdDSA", "kid": keys.kid, "value": b64url(signature)}}
    )


@dataclass
class Verification:
    ok: bool
    reason: str
    kid: str | None = None
    receipt: dict[str, Any] | None = None

    def __str__(self) -> str:
        return ("receipt OK: " if self.ok else "receipt INVALID: ") + self.reason


def verify_receipt(data: bytes, public_keys: Mapping[str, Ed25519PublicKey]) -> Verification:
    """Check a receipt file with the public keys (kid -> key); the result names why it fails."""
    try:
        envelope = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Verification(False, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    except ValueError as exc:
        return Verification(False, f"not valid JSON ({exc})")
    if not isinstance(envelope, dict) or set(envelope) != {"receipt", "signature"}:
        return Verification(False, "not a receipt: expected exactly the members 'receipt' and 'signature'")
    doc, sig = envelope["receipt"], envelope["signature"]
    if not isinstance(doc, dict) or doc.get("version") != RECEIPT_VERSION:
        return Verification(False, f"not a {RECEIPT_VERSION} receipt")
    if not isinstance(sig, dict) or set(sig) != {"alg", "kid", "value"}:
        return Verification(False, "signature: expected exactly the members alg, kid, value")
    if sig["alg"] != "EdDSA":
        return Verification(False, f"signature algorithm {sig['alg']!r} is not EdDSA")
    kid = sig["kid"]
    key = public_keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return Verification(
            False, f"unknown key id {kid!r}: not in the published keys ({', '.join(public_keys) or 'none'})"
        )
    try:
        value = b64url_decode(sig["value"]) if isinstance(sig["value"], str) else b""
    except ValueError:
        value = b""
    if len(value) != 64:
        return Verification(False, "signature value is not a canonical base64url Ed25519 signature", kid)
    try:
        key.verify(value, canonical_json(doc))
    except InvalidSignature:
        return Verification(
            False, "signature does not match the receipt's content (altered, or signed by another key)", kid
        )
    return Verification(
        True,
        f"signature by key {kid} matches; request {doc['request']['id']}, {len(doc['targets'])} targets",
        kid,
        doc,
    )


# --------------------------------------------------------------------------------------------------
# issuing against the tracking store
# --------------------------------------------------------------------------------------------------
@dataclass
class IssueReport:
    issued: int = 0
    not_ready: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "issued": self.issued,
            "not_ready": {str(k): v for k, v in self.not_ready.items()},
            "seconds": self.seconds,
        }


def issue_receipts(
    dsn: str,
    keys: ReceiptKeys,
    *,
    owners: Mapping[str, str],
    request_ids: Sequence[int] | None = None,
    batch_size: int = 1000,
    limit: int | None = None,
    now: datetime | None = None,
) -> IssueReport:
    """Issue receipts for completed requests that have none (all of them, or ``request_ids``).

    Idempotent: one receipt per request (``ON CONFLICT DO NOTHING``); a request that is not ready (a
    target not verified) is skipped and reported with the reason, and retried at the next call.
    One transaction per batch.
    """
    import time

    from erasure.db import transaction
    from erasure.tracking import receipt as sql

    t0 = time.perf_counter()
    report = IssueReport()
    after: set[int] = set()
    while limit is None or report.issued < limit:
        with transaction(dsn) as cur:
            reqs = [
                r
                for r in sql.completed_without_receipt(cur, batch_size + len(after), request_ids)
                if r["id"] not in after
            ]
            if not reqs:
                break
            ids = [r["id"] for r in reqs]
            tasks: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
            for t in sql.tasks_of(cur, ids):
                tasks[t["request_id"]].append(t)
            last = {e["request_id"]: e for e in sql.last_events_of(cur, ids)}
            issued_at = now or datetime.now(UTC)
            rows = []
            for r in reqs:
                why = readiness({"status": "completed"}, tasks[r["id"]]) or (
                    None if r["id"] in last else "request has no audit event"
                )
                if why is not None:  # stays without a receipt: later batches fetch past it
                    after.add(r["id"])
                    report.not_ready[r["id"]] = why
                    continue
                doc = build_receipt(
                    r,
                    tasks[r["id"]],
                    last[r["id"]],
                    hmac_key=keys.hmac_key,
                    owners=owners,
                    issued_at=issued_at,
                )
                rows.append(
                    (
                        r["id"],
                        doc["receipt_id"],
                        keys.kid,
                        doc["audit"]["last_event_hash"],
                        sign_receipt(doc, keys).decode(),
                    )
                )
            report.issued += sql.insert(cur, rows)
    report.seconds = time.perf_counter() - t0
    return report


def find_receipt(dsn: str, request: str) -> dict[str, Any] | None:
    """The stored receipt row of a request (id, external id or receipt id)."""
    from erasure.db import transaction
    from erasure.tracking import receipt as sql

    with transaction(dsn) as cur:
        return sql.find(cur, request)


def check_audit_anchor(dsn: str, doc: Mapping[str, Any]) -> str | None:
    """None when the receipt's audit anchor (seq, hash) is the tracking store's event; else why not."""
    from erasure.db import transaction
    from erasure.tracking import receipt as sql

    audit = doc["audit"]
    with transaction(dsn) as cur:
        stored = sql.event_hash_at(cur, int(audit["last_event_seq"]))
    if stored is None:
        return f"audit event seq {audit['last_event_seq']} is not in the tracking store"
    if stored != audit["last_event_hash"]:
        return f"audit event seq {audit['last_event_seq']} has hash {stored}, the receipt says {audit['last_event_hash']}"
    return None


# --------------------------------------------------------------------------------------------------
# export for auditors: files and a Delta table
# --------------------------------------------------------------------------------------------------
RECEIPT_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("request_id", "BIGINT", False),
    ("receipt_id", "STRING", False),
    ("key_id", "STRING", False),
    ("issued_at", "TIMESTAMP", False),
    ("audit_hash", "STRING", False),
    ("document", "STRING", False),
)


def export_files(rows: Iterable[Mapping[str, Any]], out_dir: Path) -> int:
    """Write each receipt as ``<out_dir>/<request_id>.receipt.json`` (the signed bytes); returns the count."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for r in rows:
        path = out_dir / f"{int(r['request_id'])}.receipt.json"
        data = str(r["document"]).encode()
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            n += 1
    return n


def receipts_path(dataset_dir: str | Path) -> str:
    from erasure.event_dataset import _dir

    return f"{_dir(dataset_dir)}/{RECEIPTS_TABLE}"


def export_delta(rows: Sequence[Mapping[str, Any]], dataset_dir: str | Path) -> int:
    """MERGE receipts into the Delta table ``<dataset_dir>/erasure_receipts`` on request_id (insert-only,
    delta-rs: no Spark). It holds no identifier in clear, so it has no retention. Returns rows inserted."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from erasure.event_dataset import _arrow_schema, _table_exists

    if not rows:
        return 0
    path = receipts_path(dataset_dir)
    table = pa.Table.from_pylist(
        [{c: r[c] for c, _, _ in RECEIPT_COLUMNS} for r in rows], schema=_arrow_schema(RECEIPT_COLUMNS)
    )
    if not _table_exists(path):
        write_deltalake(path, table, mode="append")  # delta-rs accepts only delta.* table properties
        return table.num_rows
    metrics = (
        DeltaTable(path)
        .merge(table, predicate="t.request_id = s.request_id", source_alias="s", target_alias="t")
        .when_not_matched_insert_all()
        .execute()
    )
    return int(metrics.get("num_target_rows_inserted", 0))


EXPORT_OVERLAP = timedelta(hours=1)
"""How far before the Delta table's newest receipt an incremental export starts again: a receipt's
``issued_at`` is its transaction's start, so one committed after the last export may be a little older
than the newest exported one. Re-exporting is harmless (files unchanged, the MERGE is insert-only)."""


def delta_high_water(dataset_dir: str | Path) -> datetime | None:
    """The newest ``issued_at`` in the exported Delta table (None when it does not exist or is empty)."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from erasure.event_dataset import _table_exists

    path = receipts_path(dataset_dir)
    if not _table_exists(path):
        return None
    newest = pc.max(DeltaTable(path).to_pyarrow_table(columns=["issued_at"])["issued_at"]).as_py()
    return newest if isinstance(newest, datetime) else None


def export_receipts(
    dsn: str,
    *,
    out_dir: Path | None,
    dataset_dir: str | Path | None,
    since: datetime | None = None,
    incremental: bool = False,
) -> dict[str, int]:
    """Export receipts issued since ``since`` (all when None) as files and/or into the Delta table.

    ``incremental``: start at the Delta table's newest receipt less :data:`EXPORT_OVERLAP` (all when
    the table does not exist yet), so a scheduled export reads only what is new."""
    from erasure.db import transaction
    from erasure.tracking import receipt as sql

    if incremental and since is None and dataset_dir is not None:
        newest = delta_high_water(dataset_dir)
        since = newest - EXPORT_OVERLAP if newest is not None else None
    with transaction(dsn) as cur:
        rows = sql.issued_since(cur, since)
    out = {"receipts": len(rows)}
    if out_dir is not None:
        out["files_written"] = export_files(rows, out_dir)
    if dataset_dir is not None:
        out["delta_inserted"] = export_delta(rows, dataset_dir)
    return out
