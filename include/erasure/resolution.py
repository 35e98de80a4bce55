"""Identity resolution: expand each ``resolving`` request's identifiers to a fixed point, then release it.

Batch-first (docs/identity.md). One pass of :func:`resolve_pending`:

1. rounds, at most ``resolution_max_depth + 1``: every resolver of the catalog takes the identifiers of
   ``resolving`` requests it has not looked up yet (type ``from``, depth below the maximum), asks its
   target's system for all of them at once (the adapter batches by ``batch_size``), and stores what it
   found (normalised, checked against the type's pattern, sealed, with the resolver and the identifier
   it came from); rounds stop when no resolver found work. Cycles are safe: an identifier is stored
   once per request, and looked up once per resolver;
2. a resolver whose system fails is retried with its target's retry policy, and after its target's
   ``max_attempts`` escalated (an alert to its owner team); its requests wait, unless the resolver is
   ``optional``;
3. :func:`release_resolved`: a request with nothing left to look up is released in one transaction:
   ``held`` when a legal hold names any of its identifiers, ``rejected`` as a duplicate when another
   open request shares one of its identifiers, ``in_review`` when the catalog's review rules match,
   else ``in_progress``; each task whose target is erased by identifier types none of which was found
   succeeds at once with outcome ``not_found`` and the resolvers' evidence; event
   ``identity_resolved`` records the counts per type and per resolver (never a value).

Only ids and counts leave this module; identifiers stay sealed in ``erasure.identity``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extras

from erasure.alerts import raise_team_alert
from erasure.catalog import Catalog, Resolver
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

LOOKUP_LIMIT = 20_000
"""Most identifiers one resolver looks up in one round."""
RELEASE_CHUNK = 500


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
        }


def _stypes(catalog: Catalog, resolver: Resolver) -> list[str]:
    return list(catalog.target(resolver.target).subject_types)


def _pending_lookups(cur: Any, catalog: Catalog, resolver: Resolver, max_depth: int) -> list[tuple[Any, ...]]:
    """``(identity id, request id, sealed, depth)`` of the identifiers ``resolver`` has still to look up:
    of its ``from`` type, below the depth bound, past the resolver's ``lookup_cursor`` for the request
    (identity ids only grow, and lookups go in id order), the resolver not failing (or due again)."""
    cur.execute(
        """
        SELECT i.id, i.request_id, i.sealed, i.depth
          FROM erasure.identity i
          JOIN erasure.request r ON r.id = i.request_id
          LEFT JOIN erasure.resolution s ON s.request_id = i.request_id AND s.resolver = %(resolver)s
         WHERE r.status = 'resolving' AND r.subject_type = ANY(%(stypes)s)
           AND i.id_type = %(from)s AND i.depth < %(max_depth)s
           AND i.id > COALESCE(s.lookup_cursor, 0)
           AND (s.status IS NULL OR s.status IN ('pending', 'done')
                OR (s.status = 'failed' AND s.next_attempt_at <= now()))
         ORDER BY i.id
         LIMIT %(limit)s
        """,
        {
            "resolver": resolver.name,
            "stypes": _stypes(catalog, resolver),
            "from": resolver.from_type,
            "max_depth": max_depth,
            "limit": LOOKUP_LIMIT,
        },
    )
    return list(cur.fetchall())


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


def _upsert_resolution(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    """rows: (request_id, resolver, status, attempts_inc, next_attempt_at, last_error, lookup_cursor,
    looked_up, found); one statement (arrays), whatever the number of rows."""
    if rows:
        cur.execute(_UPSERT_RESOLUTION, [list(col) for col in zip(*rows, strict=True)])


def _run_resolver(
    conn: Any,
    catalog: Catalog,
    resolver: Resolver,
    codec: IdentityCodec,
    ctx: Context,
    max_depth: int,
    result: ResolutionResult,
) -> int:
    """One round of one resolver; returns how many identifiers it looked up (0: nothing to do or failed)."""
    target = catalog.target(resolver.target)
    with conn, conn.cursor() as cur:
        rows = _pending_lookups(cur, catalog, resolver, max_depth)
    if not rows:
        return 0
    values = {int(r[0]): codec.unseal(resolver.from_type, r[2]) for r in rows}
    requests = sorted({int(r[1]) for r in rows})
    try:
        answer = adapter_for(target).resolve(ctx, target, resolver, sorted(set(values.values())))
    except Exception as exc:  # noqa: BLE001 - any failure to ask the system is retried, then escalated
        _record_failure(conn, catalog, resolver, requests, f"{type(exc).__name__}: {exc}"[:500], result)
        return 0
    found_rows: list[tuple[Any, ...]] = []
    found_per_request: dict[int, int] = defaultdict(int)
    looked_per_request: dict[int, int] = defaultdict(int)
    cursor: dict[int, int] = {}
    for r in rows:
        rid, parent, depth = int(r[1]), int(r[0]), int(r[3])
        looked_per_request[rid] += 1
        cursor[rid] = max(cursor.get(rid, 0), parent)
        for id_type, found in answer.get(values[parent], {}).items():
            it = catalog.identifier_type(id_type)
            if it is None:
                continue
            for raw in found:
                try:
                    value = normalise(it, raw)
                except IdentityError:
                    result.invalid[resolver.name] = result.invalid.get(resolver.name, 0) + 1
                    continue
                found_rows.append(
                    (
                        rid,
                        id_type,
                        codec.digest(id_type, value),
                        codec.seal(id_type, value),
                        parent,
                        depth + 1,
                    )
                )
    with conn, conn.cursor() as cur:
        new: list[tuple[Any, ...]] = []
        if found_rows:
            cols = list(zip(*found_rows, strict=True))
            cur.execute(
                """INSERT INTO erasure.identity (request_id, id_type, digest, sealed, source, parent_id, depth)
                   SELECT r, t, d, s, %s, p, dp
                     FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bytea[], %s::bigint[], %s::int[])
                          AS u(r, t, d, s, p, dp)
                   ON CONFLICT (request_id, id_type, digest) DO NOTHING RETURNING request_id""",
                [
                    resolver.name,
                    list(cols[0]),
                    list(cols[1]),
                    list(cols[2]),
                    [psycopg2.Binary(b) for b in cols[3]],
                    list(cols[4]),
                    list(cols[5]),
                ],
            )
            new = cur.fetchall()
        for n in new:
            found_per_request[int(n[0])] += 1
        _upsert_resolution(
            cur,
            [
                (
                    rid,
                    resolver.name,
                    ResolutionStatus.DONE.value,
                    0,
                    None,
                    None,
                    cursor[rid],
                    n,
                    found_per_request[rid],
                )
                for rid, n in looked_per_request.items()
            ],
        )
    result.looked_up[resolver.name] = result.looked_up.get(resolver.name, 0) + len(rows)
    result.found[resolver.name] = result.found.get(resolver.name, 0) + len(new)
    return len(rows)


def _record_failure(
    conn: Any,
    catalog: Catalog,
    resolver: Resolver,
    request_ids: Sequence[int],
    error: str,
    result: ResolutionResult,
) -> None:
    """The resolver's system could not be asked: retry later with the target's policy, escalate (and
    alert its owner) after the target's ``max_attempts``."""
    target = catalog.target(resolver.target)
    result.failed[resolver.name] = error
    now = datetime.now(UTC)
    with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(
            """SELECT request_id, attempts FROM erasure.resolution
                WHERE resolver = %s AND request_id = ANY(%s)""",
            (resolver.name, list(request_ids)),
        )
        attempts = {int(r["request_id"]): int(r["attempts"]) for r in cur.fetchall()}
        rows = []
        escalated = []
        for rid in request_ids:
            n = attempts.get(rid, 0) + 1
            if n >= target.max_attempts:
                status, due = ResolutionStatus.ESCALATED, None
                escalated.append(rid)
            else:
                status, due = ResolutionStatus.FAILED, now + target.retry_delay(n)
            rows.append((rid, resolver.name, status.value, 1, due, error, 0, 0, 0))
        _upsert_resolution(cur, rows)
        for rid in escalated:
            raise_team_alert(
                cur,
                catalog,
                team=target.owner,
                dedupe_key=f"resolver_escalated:{resolver.name}:{rid}",
                kind=AlertKind.RESOLVER_ESCALATED,
                message=(
                    f"resolver '{resolver.name}' ({target.name}) failed {target.max_attempts} time(s) for "
                    f"request {rid}: {error}"
                    + (" - the request goes on without it (optional)" if resolver.optional else "")
                ),
                request_id=rid,
                target=target.name,
                details={"resolver": resolver.name, "optional": resolver.optional},
            )
    if escalated:
        result.escalated.append(resolver.name)
    log.warning("resolver %s failed for %d request(s): %s", resolver.name, len(request_ids), error)


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
    conn = connect(dsn)
    try:
        ctx = Context(settings=settings, dsn=dsn, catalog=catalog)  # adapters open their own clients
        for _ in range(max_depth + 1):
            result.rounds += 1
            work = sum(_run_resolver(conn, catalog, r, codec, ctx, max_depth, result) for r in chosen)
            if work == 0:
                break
        if release:
            release_resolved(conn, catalog, codec, settings, result)
    finally:
        conn.close()
    log.info("resolution: %s", json.dumps(result.as_dict()))
    return result


# -- release ---------------------------------------------------------------------------------------


def _settled(
    catalog: Catalog,
    subject_type: str,
    idents: list[dict[str, Any]],
    states: dict[str, dict[str, Any]],
    max_depth: int,
) -> bool:
    """Nothing left to look up: every applicable resolver has looked up every identifier of its type
    (below the depth bound: its ``lookup_cursor`` is past them), or escalated while optional."""
    for r in catalog.resolvers_for(subject_type):
        if not catalog.target(r.target).enabled:
            continue
        state = states.get(r.name) or {}
        if state.get("status") == ResolutionStatus.ESCALATED and r.optional:
            continue
        done_to = int(state.get("lookup_cursor") or 0)
        for i in idents:
            if i["id_type"] == r.from_type and i["depth"] < max_depth and i["id"] > done_to:
                return False
    return True


def identity_of(cur: Any, codec: IdentityCodec, request_ids: Sequence[int]) -> dict[int, Identifiers]:
    """The requests' identifiers, unsealed (by type, in the order they were found)."""
    cur.execute(
        """SELECT request_id, id_type, sealed FROM erasure.identity WHERE request_id = ANY(%s) ORDER BY id""",
        (list(request_ids),),
    )
    out: dict[int, Identifiers] = {}
    for r in cur.fetchall():
        rid, t, sealed = (r["request_id"], r["id_type"], r["sealed"]) if isinstance(r, dict) else r
        merge(out.setdefault(int(rid), {}), {t: [codec.unseal(t, sealed)]})
    return out


def release_resolved(
    conn: Any, catalog: Catalog, codec: IdentityCodec, settings: Settings, result: ResolutionResult
) -> None:
    """Release the settled ``resolving`` requests (see the module docstring), a chunk per transaction."""
    max_depth = settings.resolution_max_depth
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
                        WHERE request_id = ANY(%s) ORDER BY id""",
                    (ids,),
                )
                idents: dict[int, list[dict[str, Any]]] = defaultdict(list)
                for rid, iid, t, d, dp, src in plain.fetchall():
                    idents[int(rid)].append(
                        {"id": iid, "id_type": t, "digest": d, "depth": dp, "source": src}
                    )
                plain.execute(
                    """SELECT request_id, resolver, status, lookup_cursor, looked_up, found
                         FROM erasure.resolution WHERE request_id = ANY(%s)""",
                    (ids,),
                )
                states: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
                for rid, name, st, cur_to, n, f in plain.fetchall():
                    states[int(rid)][str(name)] = {
                        "status": st,
                        "lookup_cursor": cur_to,
                        "looked_up": n,
                        "found": f,
                    }
            settled = [
                r
                for r in reqs
                if _settled(catalog, r["subject_type"], idents[int(r["id"])], states[int(r["id"])], max_depth)
            ]
            result.still_resolving += len(reqs) - len(settled)
            if settled:
                _release(cur, catalog, codec, settled, idents, states, result)
        if len(reqs) < RELEASE_CHUNK:
            return


def _release(
    cur: Any,
    catalog: Catalog,
    codec: IdentityCodec,
    reqs: list[dict[str, Any]],
    idents: dict[int, list[dict[str, Any]]],
    states: dict[int, dict[str, dict[str, Any]]],
    result: ResolutionResult,
) -> None:
    ids = [int(r["id"]) for r in reqs]
    digests = sorted({i["digest"] for rid in ids for i in idents[rid]})
    # holds by digest (any identifier), and holds placed by subject id without one (SQL, older holds):
    # their digest is that of the subject type's id type
    cur.execute(
        """SELECT id, reason, digest, subject_type, subject_id FROM erasure.legal_hold
            WHERE released_at IS NULL AND (digest = ANY(%s) OR (digest IS NULL AND subject_type = ANY(%s)))
            ORDER BY id""",
        (digests, sorted({r["subject_type"] for r in reqs})),
    )
    holds = []
    for h in cur.fetchall():
        h = dict(h)
        if h["digest"] is None and (held_type := catalog.id_type_of(h["subject_type"])):
            h["digest"] = codec.digest(held_type, h["subject_id"])
        holds.append(h)
    cur.execute(
        """SELECT DISTINCT ON (i.digest) i.digest, i.id_type, r.id FROM erasure.identity i
             JOIN erasure.request r ON r.id = i.request_id
            WHERE i.digest = ANY(%s) AND r.id <> ALL(%s)
              AND r.status IN ('held', 'in_progress', 'in_review')
            ORDER BY i.digest, r.id""",
        (digests, ids),
    )
    open_by_digest = {d["digest"]: d for d in cur.fetchall()}
    cur.execute(
        "SELECT id, request_id, target FROM erasure.task WHERE request_id = ANY(%s) AND status = 'pending'",
        (ids,),
    )
    tasks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in cur.fetchall():
        tasks[int(t["request_id"])].append(dict(t))
    released: dict[str, dict[str, Any]] = {}
    updates: list[tuple[int, str, str]] = []
    transitions: list[Transition] = []
    events: list[tuple[int, str, str]] = []
    for r in sorted(reqs, key=lambda x: int(x["id"])):
        rid = int(r["id"])
        mine = idents[rid]
        own = {i["digest"] for i in mine}
        types = {i["id_type"] for i in mine}
        hold = next(
            (
                h
                for h in holds
                if h["digest"] in own
                or (h["subject_type"], h["subject_id"]) == (r["subject_type"], r["subject_id"])
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
        elif rule := catalog.review.rule_for(r["subject_type"], r["jurisdiction"]):
            status, reason = RequestStatus.IN_REVIEW, f"review: {rule}"
            result.in_review += 1
        else:
            status, reason = RequestStatus.IN_PROGRESS, "identity resolved"
        result.released += 1
        updates.append((rid, status.value, reason))
        if status != RequestStatus.REJECTED:
            for i in mine:
                released.setdefault(i["digest"], {"id": rid, "id_type": i["id_type"]})
        per_type: dict[str, int] = defaultdict(int)
        per_source: dict[str, int] = defaultdict(int)
        for i in mine:
            per_type[i["id_type"]] += 1
            per_source[i["source"]] += 1
        resolvers = {
            k: {"status": v["status"], "looked_up": v["looked_up"], "found": v["found"]}
            for k, v in sorted(states[rid].items())
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
        for t in tasks[rid]:
            target = catalog.target(t["target"])
            if any(k in types for k in target.identity_keys):
                continue
            note = (
                f"no identifier of type {' or '.join(target.identity_keys)} was found for this person "
                f"(identity: {', '.join(f'{k} x{n}' for k, n in sorted(per_type.items()))})"
            )
            transitions.append(
                Transition(
                    int(t["id"]),
                    TaskStatus.SUCCEEDED,
                    (TaskStatus.PENDING,),
                    evidence=not_found_evidence(target, note, resolvers),
                )
            )
    cols = list(zip(*updates, strict=True))
    cur.execute(
        """UPDATE erasure.request r SET status = v.status, status_reason = v.reason, updated_at = now()
             FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, status, reason)
            WHERE r.id = v.id AND r.status = 'resolving'""",
        [list(c) for c in cols],
    )
    if transitions:
        result.not_found_tasks += len(transition_tasks(cur, transitions))
    cols = list(zip(*events, strict=True))
    cur.execute(
        """INSERT INTO erasure.event_log (request_id, event_type, status, details)
           SELECT id, %s, st, det FROM unnest(%s::bigint[], %s::text[], %s::jsonb[]) AS u(id, st, det)
            ORDER BY id""",
        [EventType.IDENTITY_RESOLVED.value, list(cols[0]), list(cols[1]), list(cols[2])],
    )
