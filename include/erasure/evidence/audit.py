"""The tamper-evident audit log: recompute the hash chain of ``erasure.event_log`` and name the first broken link.

Every event row carries ``seq`` (global, gap-free), ``prev_hash`` (the previous row's ``hash``, the
genesis value for seq 1) and ``hash`` = SHA-256 of the row's canonical serialisation, computed by the
BEFORE INSERT trigger of migration 0003 (``erasure.audit_event_hash``):

    JSON array, no whitespace, every value a string or null:
    ["erasure-audit-v1", seq, prev_hash, event_id, request_id, task_id, target, event_type, status,
     attempt, occurred_at (UTC, "YYYY-MM-DDTHH:MM:SS.ffffffZ"), details (jsonb text form)]

:func:`canonical_event` reproduces it byte for byte without a database, so the chain can be checked
from any copy of the rows (the Delta event dataset: :func:`verify_delta`). :func:`verify_chain` reads
the tracking store in one sequential streaming pass (server-side cursor, in one read-only snapshot)
and also compares the last row with the recorded head (``erasure.audit_head``), so deleting the
newest rows behind the trigger's back is found too. No Airflow here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
VERSION = "erasure-audit-v1"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
FIELDS = (
    "seq",
    "prev_hash",
    "hash",
    "event_id",
    "request_id",
    "task_id",
    "target",
    "event_type",
    "status",
    "attempt",
    "occurred_at",
    "details",
)
"""The order of a chain row (as :data:`erasure.tracking.event_log.CHAIN_SELECT` returns it)."""

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def format_ts(value: datetime) -> str:
    """A timestamp in the canonical form (UTC, microseconds, ``Z``), as Postgres' ``to_char`` writes it."""
    return value.astimezone(UTC).strftime(TS_FORMAT)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_ts(value)
    return str(value)


def canonical_event(
    seq: Any,
    prev_hash: str,
    event_id: Any,
    request_id: Any,
    task_id: Any,
    target: Any,
    event_type: Any,
    status: Any,
    attempt: Any,
    occurred_at: Any,
    details: Any,
) -> bytes:
    """The bytes the chain hashes for one event (values are turned into text the way Postgres does)."""
    return _encode(
        [
            VERSION,
            str(seq),
            prev_hash,
            *(
                _text(v)
                for v in (event_id, request_id, task_id, target, event_type, status, attempt, occurred_at)
            ),
            _text(details),
        ]
    ).encode()


def event_hash(*fields: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_event` of the same arguments."""
    return hashlib.sha256(canonical_event(*fields)).hexdigest()


@dataclass(frozen=True)
class BrokenLink:
    """The first place where the chain does not hold."""

    seq: int | None
    event_id: str | None
    problem: str
    expected: str
    stored: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" + (f" (event {self.event_id})" if self.event_id else "")
        return f"{where}: {self.problem}: expected {self.expected}, stored {self.stored}"


@dataclass
class ChainReport:
    """What a verification found: the events checked, the last link, the first broken one."""

    source: str
    events: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str
    broken: BrokenLink | None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.broken is None

    def summary(self) -> str:
        if self.broken is not None:
            return f"audit chain BROKEN in {self.source} at {self.broken}"
        if not self.events:
            return f"audit chain OK in {self.source}: no events"
        return (
            f"audit chain OK in {self.source}: {self.events} events, seq {self.first_seq}..{self.last_seq}, "
            f"head {self.last_hash[:16]}… ({self.seconds:.2f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["broken"] = str(self.broken) if self.broken else None
        return out


def _python_digest(row: Sequence[Any]) -> str:
    """SHA-256 of a chain row (:data:`FIELDS` order) recomputed in Python."""
    if isinstance(row[10], str):  # text straight from the store: the fast path
        payload = _encode([VERSION, str(row[0]), row[1], *row[3:]]).encode()
    else:
        payload = canonical_event(int(row[0]), row[1], *row[3:])
    return hashlib.sha256(payload).hexdigest()


def _stored_digest(row: Sequence[Any]) -> str:
    """The digest the database recomputed for the row (:data:`RECOMPUTE_SELECT`'s fifth column)."""
    return str(row[4])


def verify_rows(
    rows: Iterable[Sequence[Any]],
    *,
    source: str = "rows",
    start_seq: int = 1,
    start_prev: str | None = GENESIS,
    digest: Callable[[Sequence[Any]], str] = _python_digest,
) -> ChainReport:
    """Recompute the chain over ``rows`` (tuples in :data:`FIELDS` order, ascending ``seq``).

    The first row must have ``start_seq`` and, if ``start_prev`` is given, link to it (a partial
    verification of a retained window passes ``start_prev=None``: its first link is taken as stored).
    ``digest`` recomputes a row's hash (default: in Python from its fields). Stops at the first broken link.
    """
    t0 = time.perf_counter()
    expected_seq = start_seq
    prev = start_prev
    n = 0
    first: int | None = None
    last_hash = start_prev or GENESIS
    for row in rows:
        seq_s, stored_prev, stored_hash = row[0], row[1], row[2]
        seq = int(seq_s)
        if seq != expected_seq:
            broken = BrokenLink(
                seq,
                _text(row[3]),
                "sequence gap (an event is missing)" if seq > expected_seq else "sequence out of order",
                f"seq {expected_seq}",
                f"seq {seq}",
            )
            return ChainReport(source, n, first, expected_seq - 1 if n else None, last_hash, broken,
                               time.perf_counter() - t0)  # fmt: skip
        if prev is not None and stored_prev != prev:
            broken = BrokenLink(
                seq, _text(row[3]), "prev_hash is not the previous event's hash", prev, str(stored_prev)
            )
            return ChainReport(source, n, first, seq - 1 if n else None, last_hash, broken,
                               time.perf_counter() - t0)  # fmt: skip
        recomputed = digest(row)
        if recomputed != stored_hash:
            broken = BrokenLink(
                seq, _text(row[3]), "hash does not match the event's content", recomputed, str(stored_hash)
            )
            return ChainReport(source, n, first, seq - 1 if n else None, last_hash, broken,
                               time.perf_counter() - t0)  # fmt: skip
        if first is None:
            first = seq
        prev = last_hash = stored_hash
        expected_seq = seq + 1
        n += 1
    return ChainReport(
        source, n, first, expected_seq - 1 if n else None, last_hash, None, time.perf_counter() - t0
    )


# The canonical serialisation of :func:`canonical_event`, as SQL over a stored row ``e`` (its own seq and
# prev_hash). Written here, not called from the database (``erasure.audit_event_hash``), so a changed
# trigger function cannot change what verification computes; the integration tests check that it,
# the trigger and :func:`canonical_event` agree byte for byte.
_CANONICAL_OF_E = """
'[' || concat_ws(',',
    to_json('erasure-audit-v1'::text)::text,
    to_json(e.seq::text)::text,
    to_json(e.prev_hash::text)::text,
    COALESCE(to_json(e.event_id::text)::text, 'null'),
    COALESCE(to_json(e.request_id::text)::text, 'null'),
    COALESCE(to_json(e.task_id::text)::text, 'null'),
    COALESCE(to_json(e.target::text)::text, 'null'),
    COALESCE(to_json(e.event_type::text)::text, 'null'),
    COALESCE(to_json(e.status::text)::text, 'null'),
    COALESCE(to_json(e.attempt::text)::text, 'null'),
    COALESCE(to_json(to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text, 'null'),
    COALESCE(to_json(e.details::text)::text, 'null')
) || ']'
"""
RECOMPUTE_SELECT = f"""
SELECT e.seq, e.prev_hash, e.hash, e.event_id::text,
       encode(sha256(convert_to({_CANONICAL_OF_E}, 'UTF8')), 'hex')
  FROM erasure.event_log e
 WHERE e.seq >= %(from_seq)s
 ORDER BY e.seq
"""  # noqa: S608 - built from constants only
"""Each row with its hash recomputed by the database: (seq, prev_hash, hash, event_id, recomputed)."""

RECOMPUTE = ("database", "python")


def verify_chain(
    dsn: str, *, batch_size: int = 20_000, from_seq: int = 1, recompute: str = "database"
) -> ChainReport:
    """Recompute the tracking store's chain in one streaming pass and compare its end with the head.

    One read-only REPEATABLE READ snapshot: rows committed meanwhile are neither half-seen nor
    reported as broken. ``from_seq`` > 1 starts at that event, linking it to the stored hash of the
    event before it.

    ``recompute``: ``database`` (default) has PostgreSQL compute each row's SHA-256 from this module's
    own SQL of the canonical form (:data:`RECOMPUTE_SELECT`: C speed, and only four short columns
    cross the wire); ``python`` fetches every column and hashes in Python (:func:`canonical_event`),
    the way the Delta dataset is checked. Both find the same first broken link.
    """
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute: expected one of {RECOMPUTE}, got {recompute!r}")
    import psycopg2.extras

    from erasure.db import connect
    from erasure.tracking import event_log

    t0 = time.perf_counter()
    conn = connect(dsn)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            head_seq, head_hash = event_log.head(cur)
            start_prev = GENESIS if from_seq <= 1 else event_log.previous_hash(cur, from_seq - 1)
        with conn.cursor(name="erasure_audit_verify") as cur:
            cur.itersize = batch_size
            if recompute == "database":
                cur.execute(RECOMPUTE_SELECT, {"from_seq": max(from_seq, 1)})
            else:
                event_log.chain_rows(cur, max(from_seq, 1))
            report = verify_rows(
                _batches(cur, batch_size),
                source="tracking store",
                start_seq=max(from_seq, 1),
                start_prev=start_prev,
                digest=_stored_digest if recompute == "database" else _python_digest,
            )
        conn.rollback()
    finally:
        conn.close()
    tail_differs = (report.last_seq or 0) != head_seq or (report.events > 0 and report.last_hash != head_hash)
    if report.ok and tail_differs:
        report.broken = BrokenLink(
            report.last_seq,
            None,
            "the last event is not the recorded head (newest events missing?)",
            f"seq {head_seq} hash {head_hash}",
            f"seq {report.last_seq or 0} hash {report.last_hash}",
        )
    report.seconds = time.perf_counter() - t0
    return report


def _batches(cur: Any, size: int) -> Iterable[Sequence[Any]]:
    while True:
        rows = cur.fetchmany(size)
        if not rows:
            return
        yield from rows


def scan_rows(dsn: str, *, batch_size: int = 20_000) -> tuple[int, float]:
    """The benchmark's baseline: stream the same rows the same way, without hashing. (rows, seconds)."""
    from erasure.db import connect
    from erasure.tracking import event_log

    t0 = time.perf_counter()
    conn = connect(dsn)
    n = 0
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor(name="erasure_audit_scan") as cur:
            cur.itersize = batch_size
            event_log.chain_rows(cur, 1)
            while rows := cur.fetchmany(batch_size):
                n += len(rows)
        conn.rollback()
    finally:
        conn.close()
    return n, time.perf_counter() - t0


def verify_delta(path: str) -> ChainReport:
    """Recompute the chain from the Delta event dataset (delta-rs + pyarrow, no Spark, no database).

    The dataset keeps a retention window, so the check starts at its oldest event and takes that
    event's ``prev_hash`` as stored; rows written before the chain existed (no ``seq``) are skipped.
    """
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    t0 = time.perf_counter()
    cols = ["seq", "prev_hash", "hash", "event_id", "request_id", "task_id", "target", "event_type",
            "status", "attempt", "occurred_at", "details_json"]  # fmt: skip
    table = DeltaTable(path).to_pyarrow_table(columns=cols)
    table = table.filter(pc.is_valid(table["seq"])).sort_by("seq")
    if table.num_rows == 0:
        return ChainReport(f"Delta table {path}", 0, None, None, GENESIS, None, time.perf_counter() - t0)
    first_seq = int(table["seq"][0].as_py())
    columns = [table[c].to_pylist() for c in cols]
    report = verify_rows(
        zip(*columns, strict=True),
        source=f"Delta table {path}",
        start_seq=first_seq,
        start_prev=GENESIS if first_seq == 1 else None,
    )
    report.seconds = time.perf_counter() - t0
    return report
