"""Identity resolution: expand each ``resolving`` request's identifiers to a fixed point, then release it.

Batch-first and set-based (docs/identity.md). One pass of :func:`resolve_pending`, per window of at
most :data:`WINDOW` ``resolving`` requests:

1. load, in three statements, the window's requests, identifiers and resolver states; each identifier
   is unsealed at most once per pass (and only if some resolver looks up its type);
2. rounds, at most ``resolution_max_depth + 1``: every resolver of the catalog takes all the
   identifiers it has not looked up yet (type ``from``, depth below the maximum, past its
   ``lookup_cursor`` for the request) and asks its target's system for all of them at once (the adapter
   batches by ``batch_size``). What the round found is normalised, checked against the type's pattern,
   hashed and sealed once per distinct identifier, given its id from the table's sequence, and written
   in one transaction on a writer connection of its own while the next round's lookups run: one
   ``COPY`` of the new identity rows of every resolver (with the resolver and the identifier they came
   from), one of the new resolver states (an upsert for states already stored: cursor, counts,
   failures). Rounds stop when a round found nothing new. Cycles are safe: an identifier is stored once
   per request, and looked up once per resolver. A pass holds the advisory lock :data:`LOCK`, so its
   memory of what is stored stays true. A pass that dies keeps the rounds it committed (rounds commit
   in order; after a failed write nothing more is written); the next pass goes on from their cursors;
3. a resolver whose system fails is retried with its target's retry policy (not again in the same
   pass), and after its target's ``max_attempts`` escalated (an alert to its owner team); its requests
   wait, unless the resolver is ``optional``;
4. :func:`_release_window`: a request with nothing left to look up is released, decided from the
   pass's memory (nothing is read back), a chunk per transaction that commits only after every round
   is written: ``held`` when a legal hold names any of its identifiers, ``rejected`` as a duplicate
   when another open request shares one of its identifiers, ``in_review`` when the catalog's review
   rules match, else ``in_progress``; each task whose target is erased by identifier types none of
   which was found succeeds at once with outcome ``not_found`` and the resolvers' evidence; event
   ``identity_resolved`` records the counts per type and per resolver (never a value). A pass with no
   resolver to run releases from the store (:func:`release_resolved`).

Only ids and counts leave this module; identifiers stay sealed in ``erasure.identity``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2.extras

from erasure.alerts import raise_team_alert
from erasure.catalog import Catalog, IdentifierType, Resolver
from erasure.db import connect
from erasure.fanout import not_found_evidence
from erasure.identity import Identifiers, IdentityCodec, IdentityError, merge, normalise
from erasure.settings import Settings
from erasure.targets import Context, adapter_for
from erasure.tracking.store import Transition, transition_tasks
from erasure.vocab import (
    AlertKind,
    EventType,
    RequestStatus,
    ResolutionStatus,
    TaskStatus,
)

log = logging.getLogger(__name__)

WINDOW = 20_000
"""Most ``resolving`` requests one pass holds in memory at a time (their identifiers and states)."""
RELEASE_CHUNK = 5_000

_ESCAPE = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _element(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    text = str(v)
    if "\\" in text or '"' in text:
        text = text.translate(_ESCAPE)
    return '"' + text + '"'


def _array(values: Any) -> str:
    """A PostgreSQL array literal (``{1,"a",NULL}``) of ``values``, passed as one parameter and cast in
    SQL (``%s::text[]``): the server reads it with the array input function, far cheaper to send and
    parse for thousands of values than the ``ARRAY[...]`` expression psycopg2 makes of a list."""
    return "{" + ",".join(map(_element, values)) + "}"


def _columns(rows: Sequence[Sequence[Any]]) -> list[str]:
    """``rows`` as one array literal per column (see :func:`_array`)."""
    return [_array(col) for col in zip(*rows, strict=True)]


@dataclass
class ResolutionResult:
    rounds: int = 0
    looked_up: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    escalated: list[str] = field(default_factory=list)
    released: int = 0
    held: int = 0
    duplicates: int = 0
    in_review: int = 0
    not_found_tasks: int = 0
    still_resolving: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the pass spent its time: ``load`` (the window's identifiers and states), ``lookups`` (the
    resolvers' systems), ``prepare`` (unseal, normalise, hash, seal), ``store`` (identity rows, states:
    the writer's time, overlapping the lookups and the release), ``store_wait`` (the pass waiting for the
    writer), ``release`` (of which ``release_reads``: holds, duplicates, tasks; ``release_updates``:
    requests, ``not_found`` tasks; ``release_events``: the audit events)."""

    def timed(self, phase: str, since: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - since

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "looked_up": self.looked_up,
            "found": self.found,
            "invalid": self.invalid,
            "failed": self.failed,
            "escalated": self.escalated,
            "released": self.released,
            "held": self.held,
            "duplicates": self.duplicates,
            "in_review": self.in_review,
            "not_found_tasks": self.not_found_tasks,
            "still_resolving": self.still_resolving,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass(slots=True)
class _Ident:
    """One identifier of a request in the pass's memory (the value only once unsealed)."""

    id: int
    request_id: int
    id_type: str
    digest: str
    depth: int
    sealed: bytes | None
    value: str | None = None
    source: str = "request"


@dataclass(slots=True)
class _State:
    """``erasure.resolution`` of one (request, resolver), as the pass knows it."""

    status: str | None = None
    cursor: int = 0
    attempts: int = 0
    waiting: bool = False
    """A failed resolver not due again yet (or failed earlier in this pass)."""
    looked_up: int = 0
    found: int = 0
    stored: bool = False
    """Its row exists in ``erasure.resolution`` (loaded, or written earlier in this pass)."""


@dataclass
class _Window:
    """The ``resolving`` requests one pass works on at a time (at most :data:`WINDOW`): their subject
    types, identifiers (by type) and resolver states, loaded once and kept up to date in memory; the
    release decides from them (nothing is read back)."""

    subject_types: dict[int, str]
    by_type: dict[str, list[_Ident]]
    known: set[tuple[int, str, str]]
    states: dict[tuple[int, str], _State]
    requests: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    """request id -> (subject_id, jurisdiction)"""


class _Crypto:
    """Unseal, normalise, hash and seal each distinct identifier once per pass."""

    def __init__(self, catalog: Catalog, codec: IdentityCodec) -> None:
        self.catalog, self.codec = catalog, codec
        self._norm: dict[tuple[str, str], str | None] = {}
        self._digest: dict[tuple[str, str], str] = {}
        self._sealed: dict[tuple[str, str], bytes] = {}
        self._types: dict[str, IdentifierType | None] = {}

    def value(self, ident: _Ident) -> str:
        if ident.value is None:
            assert ident.sealed is not None
            ident.value = self.codec.unseal(ident.id_type, ident.sealed)
        return ident.value

    def normalise(self, id_type: str, raw: str) -> str | None:
        """The canonical value, None when it is not valid for its type (or the type is unknown)."""
        key = (id_type, raw)
        if key not in self._norm:
            if id_type not in self._types:
                self._types[id_type] = self.catalog.identifier_type(id_type)
            it = self._types[id_type]
            try:
                self._norm[key] = normalise(it, raw) if it is not None else None
            except IdentityError:
                self._norm[key] = None
        return self._norm[key]

    def known_type(self, id_type: str) -> bool:
        return self._types.get(id_type) is not None

    def digest(self, id_type: str, value: str) -> str:
        key = (id_type, value)
        d = self._digest.get(key)
        if d is None:
            d = self._digest[key] = self.codec.digest(id_type, value)
        return d

    def seal(self, id_type: str, value: str) -> bytes:
        """Sealed once per identifier: requests that share an identifier share its ciphertext (the same
        plaintext under the same nonce; equality is what the digest shows anyway)."""
        key = (id_type, value)
        s = self._sealed.get(key)
        if s is None:
            s = self._sealed[key] = self.codec.seal(id_type, value)
        return s


def _windows(conn: Any, size: int) -> Any:
    """The ``resolving`` requests in id order, ``size`` at a time: (first id, last id) of each window."""
    last = 0
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(
                """SELECT min(id), max(id), count(*) FROM (
                       SELECT id FROM erasure.request WHERE status = 'resolving' AND id > %s ORDER BY id LIMIT %s
                   ) w""",
                (last, size),
            )
            lo, hi, n = cur.fetchone()
        if not n:
            return
        yield int(lo), int(hi)
        if n < size:
            return
        last = int(hi)


def _load(conn: Any, lo: int, hi: int, from_types: list[str], max_depth: int) -> _Window:
    """One window's requests, identifiers (sealed values only of the types some resolver looks up, below
    the depth bound) and resolver states: three statements, one snapshot."""
    w = _Window({}, defaultdict(list), set(), {})
    with conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute(
            """SELECT id, subject_type, subject_id, jurisdiction FROM erasure.request
                WHERE status = 'resolving' AND id BETWEEN %s AND %s""",
            (lo, hi),
        )
        for rid, stype, sid, jur in cur.fetchall():
            w.subject_types[int(rid)] = str(stype)
            w.requests[int(rid)] = (sid, jur)
        cur.execute(
            """SELECT i.id, i.request_id, i.id_type, i.digest, i.depth,
                      CASE WHEN i.id_type = ANY(%s) AND i.depth < %s THEN i.sealed END, i.source
                 FROM erasure.identity i JOIN erasure.request r ON r.id = i.request_id
                WHERE r.status = 'resolving' AND r.id BETWEEN %s AND %s
                ORDER BY i.id""",
            (from_types, max_depth, lo, hi),
        )
        for iid, rid, t, d, dp, sealed, src in cur.fetchall():
            w.by_type[t].append(
                _Ident(int(iid), int(rid), t, d, int(dp), bytes(sealed) if sealed else None, None, src)
            )
            w.known.add((int(rid), t, d))
        cur.execute(
            """SELECT s.request_id, s.resolver, s.status, s.lookup_cursor, s.attempts,
                      s.status = 'failed' AND COALESCE(s.next_attempt_at > now(), false),
                      s.looked_up, s.found
                 FROM erasure.resolution s JOIN erasure.request r ON r.id = s.request_id
                WHERE r.status = 'resolving' AND r.id BETWEEN %s AND %s""",
            (lo, hi),
        )
        for rid, name, st, cur_to, attempts, waiting, n, f in cur.fetchall():
            w.states[(int(rid), str(name))] = _State(
                st, int(cur_to), int(attempts), bool(waiting), int(n), int(f), True
            )
    return w


def _pending(w: _Window, catalog: Catalog, resolver: Resolver, max_depth: int) -> list[_Ident]:
    """The identifiers ``resolver`` has still to look up: of its ``from`` type, below the depth bound,
    of requests of its target's subject types, past its ``lookup_cursor`` for the request (identity ids
    only grow, and lookups go in id order), the resolver neither escalated nor waiting to retry."""
    stypes = set(catalog.target(resolver.target).subject_types)
    out = []
    for i in w.by_type.get(resolver.from_type, ()):
        if i.depth >= max_depth or w.subject_types.get(i.request_id) not in stypes:
            continue
        st = w.states.get((i.request_id, resolver.name))
        if st is not None and (
            i.id <= st.cursor or st.waiting or st.status == ResolutionStatus.ESCALATED.value
        ):
            continue
        out.append(i)
    return out


@dataclass
class _Round:
    """What one round found and must write: new identity rows, resolver states, alerts."""

    identities: list[tuple[int, str, str, bytes, str, int, int, str]] = field(default_factory=list)
    """(request, type, digest, sealed, resolver, parent id, depth, value), before ids are assigned"""
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    """the identity rows as written: (id, request, type, digest, sealed, resolver, parent id, depth)"""
    states: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    looked_up: int = 0


def _ask(
    catalog: Catalog,
    resolver: Resolver,
    pending: list[_Ident],
    crypto: _Crypto,
    ctx: Context,
    w: _Window,
    rnd: _Round,
    result: ResolutionResult,
) -> None:
    """One resolver, one round: one batched lookup of every pending identifier (the adapter splits by
    ``batch_size``); what it found goes to ``rnd`` and to the window's memory (nothing is written here)."""
    target = catalog.target(resolver.target)
    requests = sorted({i.request_id for i in pending})
    values = sorted({crypto.value(i) for i in pending})
    t0 = time.perf_counter()
    try:
        answer = adapter_for(target).resolve(ctx, target, resolver, values)
    except Exception as exc:  # noqa: BLE001 - any failure to ask the system is retried, then escalated
        _failure(catalog, resolver, requests, f"{type(exc).__name__}: {exc}"[:500], w, rnd, result)
        return
    finally:
        result.timed("lookups", t0)
    looked: dict[int, int] = defaultdict(int)
    found: dict[int, int] = defaultdict(int)
    cursor: dict[int, int] = {}
    invalid = 0
    for i in pending:
        rid = i.request_id
        looked[rid] += 1
        cursor[rid] = max(cursor.get(rid, 0), i.id)
        for id_type, got in answer.get(crypto.value(i), {}).items():
            for raw in got:
                value = crypto.normalise(id_type, raw)
                if value is None:
                    invalid += crypto.known_type(id_type)
                    continue
                digest = crypto.digest(id_type, value)
                if (rid, id_type, digest) in w.known:  # a cycle, or found twice: stored once
                    continue
                w.known.add((rid, id_type, digest))
                found[rid] += 1
                rnd.identities.append(
                    (
                        rid,
                        id_type,
                        digest,
                        crypto.seal(id_type, value),
                        resolver.name,
                        i.id,
                        i.depth + 1,
                        value,
                    )
                )
    if invalid:
        result.invalid[resolver.name] = result.invalid.get(resolver.name, 0) + invalid
    done = ResolutionStatus.DONE.value
    for rid, n in looked.items():
        st = w.states.setdefault((rid, resolver.name), _State())
        rnd.states.append(
            (rid, resolver.name, done, 0, None, None, cursor[rid], n, found[rid], not st.stored)
        )
        st.status, st.cursor, st.waiting = done, max(st.cursor, cursor[rid]), False
        st.looked_up += n
        st.found += found[rid]
        st.stored = True
    rnd.looked_up += len(pending)
    result.looked_up[resolver.name] = result.looked_up.get(resolver.name, 0) + len(pending)


def _failure(
    catalog: Catalog,
    resolver: Resolver,
    request_ids: Sequence[int],
    error: str,
    w: _Window,
    rnd: _Round,
    result: ResolutionResult,
) -> None:
    """The resolver's system could not be asked: retry later with the target's policy, escalate (and
    alert its owner) after the target's ``max_attempts``. Not retried again in this pass."""
    target = catalog.target(resolver.target)
    result.failed[resolver.name] = error
    now = datetime.now(UTC)
    escalated = False
    for rid in request_ids:
        st = w.states.setdefault((rid, resolver.name), _State())
        st.attempts += 1
        st.waiting = True
        if st.attempts >= target.max_attempts:
            status, due = ResolutionStatus.ESCALATED, None
            escalated = True
            rnd.alerts.append(
                {
                    "team": target.owner,
                    "dedupe_key": f"resolver_escalated:{resolver.name}:{rid}",
                    "kind": AlertKind.RESOLVER_ESCALATED,
                    "message": (
                        f"resolver '{resolver.name}' ({target.name}) failed {target.max_attempts} time(s) for "
                        f"request {rid}: {error}"
                        + (" - the request goes on without it (optional)" if resolver.optional else "")
                    ),
                    "request_id": rid,
                    "target": target.name,
                    "details": {"resolver": resolver.name, "optional": resolver.optional},
                }
            )
        else:
            status, due = ResolutionStatus.FAILED, now + target.retry_delay(st.attempts)
        st.status = status.value
        rnd.states.append((rid, resolver.name, status.value, 1, due, error, 0, 0, 0, not st.stored))
        st.stored = True
    if escalated and resolver.name not in result.escalated:
        result.escalated.append(resolver.name)
    log.warning("resolver %s failed for %d request(s): %s", resolver.name, len(request_ids), error)


_RESOLUTION_COLUMNS = (
    "request_id, resolver, status, attempts, next_attempt_at, last_error, lookup_cursor, looked_up, found"
)
_UPSERT_RESOLUTION = """
INSERT INTO erasure.resolution AS s
       (request_id, resolver, status, attempts, next_attempt_at, last_error, lookup_cursor, looked_up, found)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::int[], %s::timestamptz[], %s::text[],
                     %s::bigint[], %s::int[], %s::int[])
ON CONFLICT (request_id, resolver) DO UPDATE SET
       status = EXCLUDED.status,
       attempts = s.attempts + EXCLUDED.attempts,
       next_attempt_at = EXCLUDED.next_attempt_at,
       last_error = EXCLUDED.last_error,
       lookup_cursor = GREATEST(s.lookup_cursor, EXCLUDED.lookup_cursor),
       looked_up = s.looked_up + EXCLUDED.looked_up,
       found = s.found + EXCLUDED.found,
       updated_at = now()
"""
_COPY_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(v: Any) -> str:
    """One field of ``COPY ... FROM STDIN`` text format."""
    if v is None:
        return "\\N"
    if isinstance(v, bytes):
        return "\\\\x" + v.hex()
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v).translate(_COPY_ESCAPE)


def _copy(cur: Any, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` into ``table`` with one ``COPY`` (no per-row statement, no array parsing)."""
    buf = io.StringIO()
    buf.writelines("\t".join(map(_copy_field, r)) + "\n" for r in rows)
    buf.seek(0)
    cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buf)


def _upsert_resolution(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    """rows: (request_id, resolver, status, attempts_inc, next_attempt_at, last_error, lookup_cursor,
    looked_up, found, fresh): the ``fresh`` ones (no row yet: the pass knows) with one ``COPY``, the
    others with one upsert statement (arrays); two statements at most, whatever the number of rows."""
    fresh = [r[:9] for r in rows if r[9]]
    known = [r[:9] for r in rows if not r[9]]
    if fresh:
        _copy(cur, "erasure.resolution", _RESOLUTION_COLUMNS, fresh)
    if known:
        cur.execute(_UPSERT_RESOLUTION, _columns(known))


_IDENTITY_COLUMNS = "id, request_id, id_type, digest, sealed, source, parent_id, depth"


def _assign_ids(conn: Any, w: _Window, rnd: _Round, result: ResolutionResult) -> None:
    """Give the round's new identifiers their ids (from the table's own sequence, in the order they
    were found, so they follow every identifier already stored) and add them to the window's memory:
    the next round looks them up while this one is written."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT nextval('erasure.identity_id_seq') FROM generate_series(1, %s)", (len(rnd.identities),)
        )
        ids = sorted(int(r[0]) for r in cur.fetchall())
    for iid, (rid, t, d, sealed, src, parent, depth, value) in zip(ids, rnd.identities, strict=True):
        w.by_type[t].append(_Ident(iid, rid, t, d, depth, sealed, value, src))
        rnd.rows.append((iid, rid, t, d, sealed, src, parent, depth))
        result.found[src] = result.found.get(src, 0) + 1


def _write(conn: Any, catalog: Catalog, rnd: _Round) -> None:
    """One round in one transaction: the new identity rows of every resolver (one ``COPY``), the
    resolver states (cursor, counts, failures), the escalation alerts. A pass holds the resolution
    lock (:data:`LOCK`), and its window's memory knows every identifier already stored: no row
    conflicts."""
    with conn, conn.cursor() as cur:
        if rnd.rows:
            _copy(cur, "erasure.identity", _IDENTITY_COLUMNS, rnd.rows)
        _upsert_resolution(cur, rnd.states)
        for a in rnd.alerts:
            raise_team_alert(cur, catalog, **a)


class _Writer:
    """Writes the rounds, in order, on a connection of its own while the pass goes on with the next
    round's lookups (the two overlap: the lookups wait on the resolvers' systems, the writes on the
    tracking store). After a failed write nothing more is written, and the pass raises the error at its
    next :meth:`submit` or :meth:`drain`: the rounds committed so far are what the next pass resumes
    from."""

    def __init__(self, dsn: str, catalog: Catalog) -> None:
        self.conn = connect(dsn)
        self.catalog = catalog
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolution-writer")
        self.pending: list[Future[None]] = []
        self.error: BaseException | None = None
        self.busy = 0.0

    def _run(self, rnd: _Round) -> None:
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            _write(self.conn, self.catalog, rnd)
        except BaseException as exc:
            self.error = exc
        finally:
            self.busy += time.perf_counter() - t0

    def submit(self, rnd: _Round) -> None:
        self.check()
        self.pending.append(self.pool.submit(self._run, rnd))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        for f in self.pending:
            f.result()
        self.pending.clear()
        self.check()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.conn.close()


LOCK = "erasure.resolution"
"""The advisory lock one pass holds (session level, released when its connection closes): passes of
concurrent DAG runs take turns, so a pass's memory of what is stored stays true."""


def resolve_pending(
    dsn: str,
    catalog: Catalog,
    settings: Settings,
    codec: IdentityCodec,
    *,
    resolvers: Sequence[str] | None = None,
    release: bool = True,
) -> ResolutionResult:
    """Resolve every ``resolving`` request as far as the resolvers allow now, then release the settled
    ones (see the module docstring). ``resolvers`` limits the pass to those (the others' pending
    lookups keep their requests resolving)."""
    result = ResolutionResult()
    chosen = [r for r in catalog.resolvers if resolvers is None or r.name in resolvers]
    chosen = [r for r in chosen if catalog.target(r.target).enabled]
    max_depth = settings.resolution_max_depth
    from_types = sorted({r.from_type for r in chosen})
    conn = connect(dsn)
    writer: _Writer | None = None
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (LOCK,))
        ctx = Context(settings=settings, dsn=dsn, catalog=catalog)  # adapters open their own clients
        crypto = _Crypto(catalog, codec)
        rounds = 0
        t0 = time.perf_counter()
        for lo, hi in _windows(conn, WINDOW) if chosen else ():
            w = _load(conn, lo, hi, from_types, max_depth)
            result.timed("load", t0)
            writer = writer or _Writer(dsn, catalog)
            for n in range(1, max_depth + 2):
                rounds = max(rounds, n)
                rnd = _Round()
                t0 = time.perf_counter()
                for r in chosen:
                    pending = _pending(w, catalog, r, max_depth)
                    if pending:
                        _ask(catalog, r, pending, crypto, ctx, w, rnd, result)
                if rnd.identities:
                    _assign_ids(conn, w, rnd, result)
                result.timed("prepare", t0)
                if rnd.states:
                    writer.submit(rnd)
                if rnd.looked_up == 0 or not rnd.identities:
                    break  # nothing new: the next round would have nothing to look up
            if release:  # the release's first chunk overlaps the last round's write; commits after it
                t0, waited = time.perf_counter(), result.seconds.get("store_wait", 0.0)
                _release_window(conn, catalog, codec, settings, w, result, writer)
                result.timed("release", t0)
                result.seconds["release"] -= result.seconds.get("store_wait", 0.0) - waited
            t0 = time.perf_counter()
            writer.drain()
            result.timed("store_wait", t0)
            t0 = time.perf_counter()
        result.rounds = rounds
        if release and not chosen:
            t0 = time.perf_counter()
            release_resolved(conn, catalog, codec, settings, result)
            result.timed("release", t0)
        if "prepare" in result.seconds:  # the lookups ran inside the rounds: count them once
            result.seconds["prepare"] -= result.seconds.get("lookups", 0.0)
    finally:
        if writer is not None:
            writer.close()
            result.seconds["store"] = writer.busy
        conn.close()
    log.info("resolution: %s", json.dumps(result.as_dict()))
    return result


# -- release ---------------------------------------------------------------------------------------


def _applicable(catalog: Catalog, subject_type: str, cache: dict[str, list[Resolver]]) -> list[Resolver]:
    """The enabled resolvers of ``subject_type`` (computed once per subject type and pass)."""
    if subject_type not in cache:
        cache[subject_type] = [
            r for r in catalog.resolvers_for(subject_type) if catalog.target(r.target).enabled
        ]
    return cache[subject_type]


def _settled(
    resolvers: list[Resolver],
    idents: list[_Ident],
    states: dict[str, _State],
    max_depth: int,
) -> bool:
    """Nothing left to look up: every applicable resolver has looked up every identifier of its type
    (below the depth bound: its ``lookup_cursor`` is past them), or escalated while optional."""
    for r in resolvers:
        state = states.get(r.name)
        if state is not None and state.status == ResolutionStatus.ESCALATED and r.optional:
            continue
        done_to = state.cursor if state is not None else 0
        for i in idents:
            if i.id_type == r.from_type and i.depth < max_depth and i.id > done_to:
                return False
    return True


def identity_of(cur: Any, codec: IdentityCodec, request_ids: Sequence[int]) -> dict[int, Identifiers]:
    """The requests' identifiers, unsealed (by type, in the order they were found). A minimised
    request's identities have no sealed value any more (erasure.retention): only its digests remain."""
    cur.execute(
        """SELECT request_id, id_type, sealed FROM erasure.identity WHERE request_id = ANY(%s::bigint[])
              AND sealed IS NOT NULL ORDER BY id""",
        (_array(request_ids),),
    )
    out: dict[int, Identifiers] = {}
    for r in cur.fetchall():
        rid, t, sealed = (r["request_id"], r["id_type"], r["sealed"]) if isinstance(r, dict) else r
        merge(out.setdefault(int(rid), {}), {t: [codec.unseal(t, sealed)]})
    return out


@dataclass(slots=True)
class _Request:
    """A request to release: what the decision needs (its identifiers and resolver states included)."""

    id: int
    subject_type: str
    subject_id: str | None
    jurisdiction: str | None
    idents: list[_Ident]
    states: dict[str, _State]


def _release_window(
    conn: Any,
    catalog: Catalog,
    codec: IdentityCodec,
    settings: Settings,
    w: _Window,
    result: ResolutionResult,
    writer: _Writer,
) -> None:
    """Release the window's settled requests from the pass's memory (its identifiers and resolver
    states are what the pass loaded and wrote: nothing is read back), a chunk per transaction; a request
    another session changed or locked meanwhile is left alone. The first chunk is decided while the
    writer still writes the last round (rows of other tables; the request rows are locked ``FOR NO KEY
    UPDATE``, which the writer's foreign-key checks do not wait for), and commits only after the writer
    committed every round: a request is never released without its identifiers stored (a failed write
    rolls the release back)."""
    max_depth = settings.resolution_max_depth
    applicable: dict[str, list[Resolver]] = {}
    idents: dict[int, list[_Ident]] = defaultdict(list)
    for lst in w.by_type.values():
        for i in lst:
            idents[i.request_id].append(i)
    states: dict[int, dict[str, _State]] = defaultdict(dict)
    for (rid, name), st in w.states.items():
        states[rid][name] = st
    settled: list[_Request] = []
    for rid in sorted(w.subject_types):
        stype = w.subject_types[rid]
        if _settled(_applicable(catalog, stype, applicable), idents[rid], states[rid], max_depth):
            sid, jur = w.requests.get(rid, (None, None))
            settled.append(_Request(rid, stype, sid, jur, idents[rid], states[rid]))
        else:
            result.still_resolving += 1
    for start in range(0, len(settled), RELEASE_CHUNK):
        chunk = settled[start : start + RELEASE_CHUNK]
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT id FROM erasure.request WHERE id = ANY(%s::bigint[]) AND status = 'resolving'
                    ORDER BY id FOR NO KEY UPDATE SKIP LOCKED""",
                (_array([r.id for r in chunk]),),
            )
            locked = {int(r["id"]) for r in cur.fetchall()}
            mine = [r for r in chunk if r.id in locked]
            if mine:
                _release(cur, catalog, codec, mine, result)
            t0 = time.perf_counter()
            writer.drain()  # before this chunk commits
            result.timed("store_wait", t0)


def release_resolved(
    conn: Any, catalog: Catalog, codec: IdentityCodec, settings: Settings, result: ResolutionResult
) -> None:
    """Release the settled ``resolving`` requests read from the store (see the module docstring), a
    chunk per transaction: the path of a pass with no resolver to run (a pass that ran resolvers
    releases from its memory, :func:`_release_window`)."""
    max_depth = settings.resolution_max_depth
    applicable: dict[str, list[Resolver]] = {}
    last = 0
    while True:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """SELECT id, subject_type, subject_id, jurisdiction FROM erasure.request
                    WHERE status = 'resolving' AND id > %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
                (last, RELEASE_CHUNK),
            )
            reqs = cur.fetchall()
            if not reqs:
                return
            last = int(reqs[-1]["id"])
            ids = [int(r["id"]) for r in reqs]
            with conn.cursor() as plain:  # tuples: far cheaper than dict rows for many rows
                plain.execute(
                    """SELECT request_id, id, id_type, digest, depth, source FROM erasure.identity
                        WHERE request_id = ANY(%s::bigint[]) ORDER BY id""",
                    (_array(ids),),
                )
                idents: dict[int, list[_Ident]] = defaultdict(list)
                for rid, iid, t, d, dp, src in plain.fetchall():
                    idents[int(rid)].append(_Ident(int(iid), int(rid), t, d, int(dp), None, None, src))
                plain.execute(
                    """SELECT request_id, resolver, status, lookup_cursor, looked_up, found
                         FROM erasure.resolution WHERE request_id = ANY(%s::bigint[])""",
                    (_array(ids),),
                )
                states: dict[int, dict[str, _State]] = defaultdict(dict)
                for rid, name, st, cur_to, n, f in plain.fetchall():
                    states[int(rid)][str(name)] = _State(st, int(cur_to), 0, False, int(n), int(f), True)
            settled = [
                _Request(
                    int(r["id"]),
                    r["subject_type"],
                    r["subject_id"],
                    r["jurisdiction"],
                    idents[int(r["id"])],
                    states[int(r["id"])],
                )  # fmt: skip
                for r in reqs
                if _settled(
                    _applicable(catalog, r["subject_type"], applicable),
                    idents[int(r["id"])],
                    states[int(r["id"])],
                    max_depth,
                )
            ]
            result.still_resolving += len(reqs) - len(settled)
            if settled:
                _release(cur, catalog, codec, settled, result)
        if len(reqs) < RELEASE_CHUNK:
            return


def _release(
    cur: Any,
    catalog: Catalog,
    codec: IdentityCodec,
    reqs: list[_Request],
    result: ResolutionResult,
) -> None:
    t0 = time.perf_counter()
    ids = [r.id for r in reqs]
    digests = sorted({i.digest for r in reqs for i in r.idents})
    # holds by digest (any identifier), and holds placed by subject id without one (SQL, older holds):
    # their digest is that of the subject type's id type
    cur.execute(
        """SELECT id, reason, digest, subject_type, subject_id FROM erasure.legal_hold
            WHERE released_at IS NULL
              AND (digest = ANY(%s::text[]) OR (digest IS NULL AND subject_type = ANY(%s::text[])))
            ORDER BY id""",
        (_array(digests), _array(sorted({r.subject_type for r in reqs}))),
    )
    holds = []
    for h in cur.fetchall():
        h = dict(h)
        if h["digest"] is None and (held_type := catalog.id_type_of(h["subject_type"])):
            h["digest"] = codec.digest(held_type, h["subject_id"])
        holds.append(h)
    # open requests sharing an identifier; the chunk's own requests are locked and still 'resolving' (no
    # `r.id <> ALL(chunk)`: a linear scan of the chunk per candidate row)
    cur.execute(
        """SELECT DISTINCT ON (i.digest) i.digest, i.id_type, r.id FROM erasure.identity i
             JOIN erasure.request r ON r.id = i.request_id
            WHERE i.digest = ANY(%s::text[]) AND r.status IN ('held', 'in_progress', 'in_review')
            ORDER BY i.digest, r.id""",
        (_array(digests),),
    )
    open_by_digest = {d["digest"]: d for d in cur.fetchall()}
    with cur.connection.cursor() as plain:  # tuples: far cheaper than dict rows for many rows
        plain.execute(
            """SELECT id, request_id, target FROM erasure.task
                WHERE request_id = ANY(%s::bigint[]) AND status = 'pending'""",
            (_array(ids),),
        )
        tasks: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for tid, rid, target in plain.fetchall():
            tasks[int(rid)].append((int(tid), str(target)))
    result.timed("release_reads", t0)
    released: dict[str, dict[str, Any]] = {}
    updates: list[tuple[int, str, str]] = []
    transitions: list[Transition] = []
    events: list[tuple[int, str, str]] = []
    for r in sorted(reqs, key=lambda x: x.id):
        rid = r.id
        mine = r.idents
        own = {i.digest for i in mine}
        types = {i.id_type for i in mine}
        hold = next(
            (
                h
                for h in holds
                if h["digest"] in own
                or (h["subject_type"], h["subject_id"]) == (r.subject_type, r.subject_id)
            ),
            None,
        )
        dup = next((open_by_digest[d] for d in sorted(own) if d in open_by_digest), None)
        if dup is None:  # an earlier request of this chunk for the same person
            dup = next((released[d] for d in sorted(own) if d in released), None)
        if dup is not None:
            status, reason = (
                RequestStatus.REJECTED,
                f"duplicate of request {dup['id']}: the same person (shares a {dup['id_type']})",
            )
            result.duplicates += 1
        elif hold is not None:
            status, reason = RequestStatus.HELD, f"legal hold {hold['id']}: {hold['reason']}"[:1000]
            result.held += 1
        elif rule := catalog.review.rule_for(r.subject_type, r.jurisdiction):
            status, reason = RequestStatus.IN_REVIEW, f"review: {rule}"
            result.in_review += 1
        else:
            status, reason = RequestStatus.IN_PROGRESS, "identity resolved"
        result.released += 1
        updates.append((rid, status.value, reason))
        if status != RequestStatus.REJECTED:
            for i in mine:
                released.setdefault(i.digest, {"id": rid, "id_type": i.id_type})
        per_type: dict[str, int] = defaultdict(int)
        per_source: dict[str, int] = defaultdict(int)
        for i in mine:
            per_type[i.id_type] += 1
            per_source[i.source] += 1
        resolvers = {
            k: {"status": v.status, "looked_up": v.looked_up, "found": v.found}
            for k, v in sorted(r.states.items())
        }
        events.append(
            (
                rid,
                status.value,
                json.dumps(
                    {
                        "identifiers": dict(per_type),
                        "sources": dict(per_source),
                        "resolvers": resolvers,
                        "status": status.value,
                    }
                ),
            )
        )
        if status == RequestStatus.REJECTED:
            continue
        for tid, tname in tasks[rid]:
            target = catalog.target(tname)
            if any(k in types for k in target.identity_keys):
                continue
            note = (
                f"no identifier of type {' or '.join(target.identity_keys)} was found for this person "
                f"(identity: {', '.join(f'{k} x{n}' for k, n in sorted(per_type.items()))})"
            )
            transitions.append(
                Transition(
                    tid,
                    TaskStatus.SUCCEEDED,
                    (TaskStatus.PENDING,),
                    evidence=not_found_evidence(target, note, resolvers),
                )
            )
    t0 = time.perf_counter()
    cur.execute(
        """UPDATE erasure.request r SET status = v.status, status_reason = v.reason, updated_at = now()
             FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, status, reason)
            WHERE r.id = v.id AND r.status = 'resolving'""",
        _columns(updates),
    )
    if transitions:
        result.not_found_tasks += len(transition_tasks(cur, transitions))
    result.timed("release_updates", t0)
    t0 = time.perf_counter()
    cols = _columns(events)
    cur.execute(
        """INSERT INTO erasure.event_log (request_id, event_type, status, details)
           SELECT id, %s, st, det FROM unnest(%s::bigint[], %s::text[], %s::jsonb[]) AS u(id, st, det)
            ORDER BY id""",
        [EventType.IDENTITY_RESOLVED.value, *cols],
    )
    result.timed("release_events", t0)
