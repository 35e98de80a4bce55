"""Retention: the pipeline keeps no personal data it does not need (docs/personal-data.md).

:func:`run_retention` does, in this order, each step in its own short transactions (a crash at any
point is picked up by the next run: every step selects what is still to do):

1. **suppression ledger** (:func:`record_tombstones`): one ``erasure.tombstone`` row per identifier of
   every completed erasure: the keyed hash of ``type:value`` (the same HMAC-SHA256 as
   ``erasure.identity.digest``), the completion time and the targets, never a value. ``reapply`` reads
   it after a backup restore (:mod:`erasure.reapply`);
2. **minimisation** (:func:`minimise`): ``retention_raw_identifier_days`` after a request finished
   (completed or rejected), its raw identifiers are replaced by their keyed hashes in every table of the
   tracking store that can hold one (request, task evidence and errors, outbox payloads, keys and acks,
   the ack log, intake rows, alerts, reviews, operator actions), the sealed identities are dropped (the
   digests stay) and ``request.minimised_at`` is set; an ``identifiers_minimised`` event (counts only)
   goes to the audit log. The audit log itself and receipts never hold a raw identifier (evidence is
   scrubbed before it is written, :mod:`erasure.privacy`), so they are never rewritten;
3. **expiry** (:func:`expire`): rejected payloads after ``retention_rejected_days``; raw ack messages,
   released legal holds after ``retention_raw_identifier_days``; sent alerts and the ack log after
   ``retention_request_days`` (24 months).

No Airflow here: the ``erasure_retention`` DAG and ``python -m erasure.cli retention`` call it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2.extras

from erasure import privacy
from erasure.catalog import Catalog
from erasure.db import connect
from erasure.identity import IdentityCodec, IdentityError
from erasure.pseudonym import PREFIX
from erasure.settings import Settings
from erasure.vocab import EventType, RequestStatus

log = logging.getLogger("erasure.retention")

BATCH = 200
"""Requests minimised per transaction."""
MINIMISED_STATUSES = (RequestStatus.COMPLETED.value, RequestStatus.REJECTED.value)
"""A failed request may still be re-run by an operator: its identifiers stay until it completes."""


@dataclass
class RetentionReport:
    """What one retention run did (counts only: safe for logs and XCom)."""

    tombstones: int = 0
    minimised_requests: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    """Rows rewritten by minimisation, per table."""
    expired: dict[str, int] = field(default_factory=dict)
    """Rows deleted or cleared by expiry, per table and what."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, table: str, n: int, into: str = "rows") -> None:
        if n:
            d = getattr(self, into)
            d[table] = d.get(table, 0) + n


def subject_id_type(catalog: Catalog, subject_type: str) -> str:
    """The identifier type a request's ``subject_id`` is hashed as: the subject type's ``id_type`` (a
    catalog with identifier types), else the subject type's name."""
    return catalog.id_type_of(subject_type) or subject_type


def subject_digest(codec: IdentityCodec, catalog: Catalog, subject_type: str, subject_id: str) -> str:
    """The keyed hash of a request's ``subject_id`` (itself when it already is one: an identifiers-only
    request, or a minimised one)."""
    if subject_id.startswith(PREFIX):
        return subject_id
    return codec.digest(subject_id_type(catalog, subject_type), subject_id)


# -- 1. the suppression ledger ------------------------------------------------------------------------
def record_tombstones(dsn: str, catalog: Catalog, codec: IdentityCodec, *, batch: int = 1000) -> int:
    """Tombstones for every completed (non-canary) request that has none yet; returns rows written."""
    written = 0
    conn = connect(dsn)
    try:
        while True:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(
                    """SELECT r.id, r.subject_type, r.subject_id, r.completed_at,
                              COALESCE(array_agg(t.target ORDER BY t.target)
                                       FILTER (WHERE t.status = 'succeeded'), '{}') AS targets
                         FROM erasure.request r
                         LEFT JOIN erasure.task t ON t.request_id = r.id
                        WHERE r.status = 'completed' AND NOT r.is_canary AND r.completed_at IS NOT NULL
                          AND NOT EXISTS (SELECT 1 FROM erasure.tombstone b WHERE b.request_id = r.id)
                        GROUP BY r.id ORDER BY r.id LIMIT %s""",
                    (batch,),
                )
                reqs = cur.fetchall()
                if not reqs:
                    return written
                cur.execute(
                    "SELECT request_id, id_type, digest FROM erasure.identity WHERE request_id = ANY(%s)",
                    ([r["id"] for r in reqs],),
                )
                ids: dict[int, set[tuple[str, str]]] = {}
                for i in cur.fetchall():
                    ids.setdefault(i["request_id"], set()).add((i["id_type"], i["digest"]))
                rows = []
                for r in reqs:
                    own = (
                        subject_id_type(catalog, r["subject_type"]),
                        subject_digest(codec, catalog, r["subject_type"], r["subject_id"]),
                    )
                    for id_type, digest in sorted(ids.get(r["id"], set()) | {own}):
                        rows.append(
                            (
                                r["id"],
                                r["subject_type"],
                                id_type,
                                digest,
                                r["completed_at"],
                                list(r["targets"]),
                            )
                        )
                psycopg2.extras.execute_values(
                    cur,
                    """INSERT INTO erasure.tombstone
                           (request_id, subject_type, id_type, digest, completed_at, targets)
                       VALUES %s ON CONFLICT DO NOTHING""",
                    rows,
                )
                written += cur.rowcount
    finally:
        conn.close()


# -- 2. minimisation -----------------------------------------------------------------------------------
def _values_of(
    cur: Any, codec: IdentityCodec, catalog: Catalog, reqs: Sequence[Mapping[str, Any]]
) -> dict[int, dict[str, str]]:
    """Per request: raw identifier -> its keyed hash (the subject id and every unsealed identity)."""
    out: dict[int, dict[str, str]] = {}
    for r in reqs:
        m = out.setdefault(r["id"], {})
        if not r["subject_id"].startswith(PREFIX):
            m[r["subject_id"]] = subject_digest(codec, catalog, r["subject_type"], r["subject_id"])
    cur.execute(
        """SELECT request_id, id_type, digest, sealed FROM erasure.identity
            WHERE request_id = ANY(%s) AND sealed IS NOT NULL""",
        ([r["id"] for r in reqs],),
    )
    for i in cur.fetchall():
        try:
            out[i["request_id"]][codec.unseal(i["id_type"], i["sealed"])] = i["digest"]
        except IdentityError:  # sealed with a retired key: the value cannot be in clear anywhere we wrote
            log.warning("request %s: an identity does not open with the current key", i["request_id"])
    return out


def _rewrite(
    cur: Any,
    table: str,
    key: str,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    values: Mapping[int, Mapping[str, str]],
) -> list[int]:
    """Scrub ``columns`` of ``rows`` (each with ``key`` and ``request_id``) with their request's raw ->
    hash mapping and write the changed ones back in one statement; returns their requests' ids (one
    per changed row). JSON columns arrive as dicts and are written back as jsonb."""
    changed, by = [], []
    for r in rows:
        m = values.get(r["request_id"], {})
        new = [privacy.scrub(r[c], m) for c in columns]
        if any(n != r[c] for n, c in zip(new, columns, strict=True)):
            changed.append((r[key], *[json.dumps(v) if isinstance(v, dict | list) else v for v in new]))
            by.append(r["request_id"])
    if changed:
        json_cols = _JSON_COLUMNS.get(table, ())
        sets = ", ".join(f"{c} = v.{c}{'::jsonb' if c in json_cols else ''}" for c in columns)
        cast = "::uuid" if key == "event_id" else ""
        psycopg2.extras.execute_values(
            cur,
            f"UPDATE erasure.{table} t SET {sets} FROM (VALUES %s) AS v({key}, {', '.join(columns)}) "  # noqa: S608
            f"WHERE t.{key} = v.{key}{cast}",
            changed,
        )
    return by


_JSON_COLUMNS = {
    "task": ("evidence",),
    "outbox": ("payload", "ack"),
    "alert": ("details",),
    "operator_action": ("details",),
}


def minimise(
    dsn: str,
    catalog: Catalog,
    codec: IdentityCodec,
    settings: Settings,
    *,
    now: datetime | None = None,
    report: RetentionReport | None = None,
    batch: int = BATCH,
) -> RetentionReport:
    """Replace the raw identifiers of requests finished more than ``retention_raw_identifier_days``
    ago by their keyed hashes, ``batch`` requests per transaction (see the module doc)."""
    report = report or RetentionReport()
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=settings.retention_raw_identifier_days)
    conn = connect(dsn)
    try:
        while True:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(
                    """SELECT id, subject_type, subject_id, status FROM erasure.request
                        WHERE minimised_at IS NULL AND status = ANY(%s)
                          AND COALESCE(completed_at, updated_at) < %s
                        ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
                    (list(MINIMISED_STATUSES), cutoff, batch),
                )
                reqs = cur.fetchall()
                if not reqs:
                    return report
                _minimise_batch(cur, catalog, codec, reqs, now, report)
                report.minimised_requests += len(reqs)
    finally:
        conn.close()


_REWRITES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("task", "id", ("evidence", "last_error"),
     "SELECT id, request_id, evidence, last_error FROM erasure.task WHERE request_id = ANY(%(ids)s)"),
    ("outbox", "event_id", ("message_key", "payload", "ack"),
     """SELECT o.event_id, t.request_id, o.message_key, o.payload, o.ack
          FROM erasure.outbox o JOIN erasure.task t ON t.id = o.task_id WHERE t.request_id = ANY(%(ids)s)"""),
    ("ack_log", "id", ("error",),
     """SELECT a.id, t.request_id, a.error FROM erasure.ack_log a
          JOIN erasure.outbox o ON o.event_id = a.event_id JOIN erasure.task t ON t.id = o.task_id
         WHERE t.request_id = ANY(%(ids)s)"""),
    ("intake", "id", ("subject_id", "reason", "error"),
     "SELECT id, request_id, subject_id, reason, error FROM erasure.intake WHERE request_id = ANY(%(ids)s)"),
    ("alert", "id", ("message", "details"),
     "SELECT id, request_id, message, details FROM erasure.alert WHERE request_id = ANY(%(ids)s)"),
    ("review", "request_id", ("reason",),
     "SELECT request_id, reason FROM erasure.review WHERE request_id = ANY(%(ids)s)"),
    ("operator_action", "id", ("reason", "details"),
     """SELECT id, request_ids[1] AS request_id, reason, details FROM erasure.operator_action
         WHERE request_ids && %(ids)s::bigint[] AND cardinality(request_ids) = 1"""),
    ("request", "id", ("subject_id", "reason", "status_reason"),
     "SELECT id, id AS request_id, subject_id, reason, status_reason FROM erasure.request WHERE id = ANY(%(ids)s)"),
)  # fmt: skip
"""Per table: its key, the columns that can hold an identifier, and the rows of a batch of requests."""

_CLEAR: tuple[tuple[str, str], ...] = (
    ("ack_log", """UPDATE erasure.ack_log a SET raw = NULL FROM erasure.outbox o, erasure.task t
                    WHERE o.event_id = a.event_id AND t.id = o.task_id AND t.request_id = ANY(%(ids)s)
                      AND a.raw IS NOT NULL RETURNING t.request_id"""),
    ("intake", """UPDATE erasure.intake SET identifiers = NULL
                   WHERE request_id = ANY(%(ids)s) AND identifiers IS NOT NULL RETURNING request_id"""),
    ("identity", """UPDATE erasure.identity SET sealed = NULL
                     WHERE request_id = ANY(%(ids)s) AND sealed IS NOT NULL RETURNING request_id"""),
)  # fmt: skip
"""Values dropped outright: raw ack messages, intake identifiers, sealed identities (digests stay)."""


def _minimise_batch(
    cur: Any,
    catalog: Catalog,
    codec: IdentityCodec,
    reqs: Sequence[Mapping[str, Any]],
    now: datetime,
    report: RetentionReport,
) -> None:
    ids = [r["id"] for r in reqs]
    values = _values_of(cur, codec, catalog, reqs)
    per_request: dict[int, dict[str, int]] = {i: {} for i in ids}

    def count(table: str, request_ids: Iterable[int]) -> None:
        for rid in request_ids:
            per_request[rid][table] = per_request[rid].get(table, 0) + 1
            report.add(table, 1)

    for table, key, columns, select in _REWRITES:
        cur.execute(select, {"ids": ids})
        count(table, _rewrite(cur, table, key, columns, cur.fetchall(), values))
    for table, update in _CLEAR:
        cur.execute(update, {"ids": ids})
        count(table, [r["request_id"] for r in cur.fetchall()])
    cur.execute("UPDATE erasure.request SET minimised_at = %s WHERE id = ANY(%s)", (now, ids))
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO erasure.event_log (request_id, event_type, status, details) VALUES %s",
        [
            (
                r["id"],
                EventType.IDENTIFIERS_MINIMISED.value,
                r["status"],
                json.dumps({"rows": per_request[r["id"]], "identifiers": len(values.get(r["id"], {}))}),
            )
            for r in sorted(reqs, key=lambda r: r["id"])
        ],
    )


# -- 3. expiry --------------------------------------------------------------------------------------
def expire(
    dsn: str,
    catalog: Catalog,
    codec: IdentityCodec,
    settings: Settings,
    *,
    now: datetime | None = None,
    report: RetentionReport | None = None,
) -> RetentionReport:
    """Delete or clear what has outlived its retention (see the module doc)."""
    report = report or RetentionReport()
    now = now or datetime.now(UTC)
    rejected = now - timedelta(days=settings.retention_rejected_days)
    raw = now - timedelta(days=settings.retention_raw_identifier_days)
    meta = now - timedelta(days=settings.retention_request_days)
    conn = connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("DELETE FROM erasure.rejected_request WHERE received_at < %s", (rejected,))
            report.add("rejected_request.deleted", cur.rowcount, "expired")
            cur.execute(
                """UPDATE erasure.intake SET subject_id = NULL, identifiers = NULL, reason = NULL
                    WHERE request_id IS NULL AND submitted_at < %s
                      AND (subject_id IS NOT NULL OR identifiers IS NOT NULL OR reason IS NOT NULL)""",
                (rejected,),
            )
            report.add("intake.cleared", cur.rowcount, "expired")
            cur.execute(
                "UPDATE erasure.ack_log SET raw = NULL WHERE received_at < %s AND raw IS NOT NULL", (raw,)
            )
            report.add("ack_log.raw_cleared", cur.rowcount, "expired")
            cur.execute(
                """SELECT id, subject_type, subject_id FROM erasure.legal_hold
                    WHERE released_at < %s AND subject_id NOT LIKE %s""",
                (raw, PREFIX + "%"),
            )
            holds = cur.fetchall()
            if holds:
                psycopg2.extras.execute_values(
                    cur,
                    "UPDATE erasure.legal_hold h SET subject_id = v.d FROM (VALUES %s) AS v(id, d) WHERE h.id = v.id",
                    [
                        (h["id"], subject_digest(codec, catalog, h["subject_type"], h["subject_id"]))
                        for h in holds
                    ],
                )
                report.add("legal_hold.hashed", len(holds), "expired")
            cur.execute("DELETE FROM erasure.alert WHERE sent_at < %s", (meta,))
            report.add("alert.deleted", cur.rowcount, "expired")
            cur.execute("DELETE FROM erasure.ack_log WHERE received_at < %s", (meta,))
            report.add("ack_log.deleted", cur.rowcount, "expired")
    finally:
        conn.close()
    return report


def run_retention(
    dsn: str,
    catalog: Catalog,
    codec: IdentityCodec,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> RetentionReport:
    """The ledger, minimisation and expiry, in that order (the ledger first: a request's tombstones
    are written before its identifiers are minimised)."""
    report = RetentionReport()
    report.tombstones = record_tombstones(dsn, catalog, codec)
    minimise(dsn, catalog, codec, settings, now=now, report=report)
    expire(dsn, catalog, codec, settings, now=now, report=report)
    log.info("retention: %s", report.to_dict())
    return report


# -- the Delta event dataset ---------------------------------------------------------------------------
def pseudonymise_dataset(dsn: str, dataset_dir: str, spark: Any) -> dict[str, Any]:
    """Rows of the event dataset whose request is minimised get its keyed hash as ``subject_id`` (one
    MERGE per table, then VACUUM with no retention: :func:`erasure.event_dataset.pseudonymise_subjects`).
    ``spark``: a session or a factory (started only when there is something to rewrite)."""
    from erasure.db import transaction
    from erasure.event_dataset import pseudonymise_subjects, raw_subject_requests

    raw = raw_subject_requests(dataset_dir)
    if not raw:
        return {"requests": 0}
    with transaction(dsn) as cur:
        cur.execute(
            "SELECT id, subject_id FROM erasure.request WHERE id = ANY(%s) AND minimised_at IS NOT NULL",
            (sorted(raw),),
        )
        digests = {int(r["id"]): str(r["subject_id"]) for r in cur.fetchall()}
    out = pseudonymise_subjects(spark, dataset_dir, digests)
    out["requests"] = len(digests)
    return out


def expire_warehouse_logs(catalog: Catalog, settings: Settings, spark: Any) -> dict[str, Any]:
    """:func:`erasure.delta_log.expire_log` for every enabled warehouse table of the catalog (a table
    that cannot be reached is reported, the others go on). ``spark``: a session or a factory."""
    from erasure.delta_log import expire_log
    from erasure.targets.warehouse_delta import WarehouseDeltaSpec
    from erasure.warehouse import table_location

    targets = [t for t in catalog.of_kind("warehouse_delta") if t.enabled]
    out: dict[str, Any] = {}
    if not targets:
        return out
    session = spark() if callable(spark) and not hasattr(spark, "sql") else spark
    for t in targets:
        try:
            path = table_location(session, t.spec_as(WarehouseDeltaSpec), str(settings.warehouse_path))
            if "://" not in path and not (Path(path) / "_delta_log").is_dir():
                out[t.name] = {"skipped": "no Delta table there yet"}
                continue
            out[t.name] = expire_log(session, path)
        except Exception as exc:  # noqa: BLE001 - reported per table
            out[t.name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return out
