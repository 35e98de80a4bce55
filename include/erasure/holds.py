"""Legal holds: a hold blocks erasure of one subject until it is released (core; no Airflow).

* :func:`place_hold` records a hold and moves the subject's open requests to ``held`` (same transaction);
* :func:`release_hold` releases it and, unless another hold is active, moves ``held`` requests to
  ``in_progress`` (the tracking-store trigger logs ``request_released``);
* :func:`recheck_held_requests` reconciles request statuses with the hold list; the scheduled intake
  DAG runs it on every run, so holds placed or released directly in SQL take effect too.

Dispatch only touches tasks of ``in_progress`` requests, so no target is touched while a request is held.
Intake and hold changes of one subject are serialised with a per-subject advisory lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from erasure.catalog import Catalog
from erasure.db import transaction
from erasure.identity import IdentityCodec, IdentityError, normalise
from erasure.intake import MAX_LEN, REQUESTED_BY_PATTERN, lock_subject, text_problem

log = logging.getLogger(__name__)

MAX_REASON = 1000


class HoldError(ValueError):
    """Bad input to a hold command; the message names the field and the problem."""


@dataclass
class HoldResult:
    hold_id: int
    created: bool
    """False when an active hold for the subject already existed (placing is idempotent)."""
    requests_held: list[int] = field(default_factory=list)


@dataclass
class ReleaseResult:
    hold_ids: list[int] = field(default_factory=list)
    requests_released: list[int] = field(default_factory=list)


@dataclass
class RecheckResult:
    released: list[int] = field(default_factory=list)
    """Requests that were ``held`` and have no active hold any more (now ``in_progress``)."""
    held: list[int] = field(default_factory=list)
    """Open requests that have an active hold and were not ``held`` yet (now ``held``)."""
    still_held: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"released": self.released, "held": self.held, "still_held": self.still_held}


def _check_text(name: str, value: Any, limit: int, required: bool = True) -> str:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        raise HoldError(f"{name}: is required and must not be empty")
    if not isinstance(value, str):
        raise HoldError(f"{name}: must be a string, got {type(value).__name__}")
    problem = text_problem("reason" if name == "reason" else "requested_by", value)
    if problem and "characters long" not in problem:
        raise HoldError(f"{name}: {problem}")
    if len(value) > limit:
        raise HoldError(f"{name}: is {len(value)} characters long, more than the maximum of {limit}")
    return value


def _check_subject(catalog: Catalog | None, subject_type: Any, subject_id: Any) -> tuple[str, str]:
    st = _check_text("subject_type", subject_type, MAX_LEN["subject_type"])
    sid = _check_text("subject_id", subject_id, MAX_LEN["subject_id"])
    if catalog is not None:
        stype = catalog.subject_type(st)
        if stype is None:
            known = ", ".join(s.name for s in catalog.subject_types)
            raise HoldError(f"subject_type: unknown subject type {st!r} (known: {known})")
        if not stype.id_regex.fullmatch(sid):
            raise HoldError(
                f"subject_id: does not match the id pattern of subject type '{st}' ({stype.id_pattern})"
            )
    return st, sid


def _check_actor(name: str, value: Any) -> str:
    import re

    v = _check_text(name, value, MAX_LEN["requested_by"])
    if not re.fullmatch(REQUESTED_BY_PATTERN, v):
        raise HoldError(f"{name}: must match {REQUESTED_BY_PATTERN}")
    return v


def place_hold(
    dsn: str,
    subject_type: str,
    subject_id: str,
    reason: str,
    placed_by: str,
    catalog: Catalog | None = None,
    *,
    id_type: str | None = None,
    codec: IdentityCodec | None = None,
) -> HoldResult:
    """Place a legal hold on a subject (idempotent: an existing active hold is returned).

    With a catalog that declares ``identifier_types`` (and ``codec``), the hold may name any identifier
    of the person (``id_type``, e.g. ``email``): it is kept as its keyed digest only (``subject_id``
    and ``digest``), and it holds every request whose resolved identity contains it
    (erasure.resolution checks holds when it releases a request)."""
    digest = None
    if id_type is not None:
        if catalog is None or codec is None or catalog.identifier_type(id_type) is None:
            raise HoldError(
                f"id_type: unknown identifier type {id_type!r} (needs a catalog with identifier_types)"
            )
        st = _check_text("subject_type", subject_type, MAX_LEN["subject_type"])
        raw = _check_text("subject_id", subject_id, MAX_LEN["subject_id"])
        it = catalog.identifier_type(id_type)
        assert it is not None
        try:
            value = normalise(it, raw)
        except IdentityError as exc:
            raise HoldError(f"subject_id: {exc}") from None
        digest = codec.digest(id_type, value)
        sid = digest
    else:
        st, sid = _check_subject(catalog, subject_type, subject_id)
        if catalog is not None and codec is not None and (own := catalog.id_type_of(st)):
            digest = codec.digest(own, sid)
    reason = _check_text("reason", reason, MAX_REASON)
    placed_by = _check_actor("placed_by", placed_by)
    with transaction(dsn) as cur:
        lock_subject(cur, st, sid)
        cur.execute(
            """INSERT INTO erasure.legal_hold (subject_type, subject_id, reason, placed_by, digest)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id, reason""",
            (st, sid, reason, placed_by, digest),
        )
        row = cur.fetchone()
        created = row is not None
        if row is None:
            cur.execute(
                """SELECT id, reason FROM erasure.legal_hold
                    WHERE subject_type = %s AND subject_id = %s AND released_at IS NULL""",
                (st, sid),
            )
            row = cur.fetchone()
        if row is None:  # cannot happen: the insert conflicted with this very row, under the subject lock
            raise RuntimeError(f"legal hold on {st}/{sid}: neither inserted nor found")
        cur.execute(
            """UPDATE erasure.request r SET status = 'held', status_reason = %s, updated_at = now()
                WHERE r.status IN ('received', 'in_progress')
                  AND ((r.subject_type = %s AND r.subject_id = %s)
                       OR EXISTS (SELECT 1 FROM erasure.identity i WHERE i.request_id = r.id AND i.digest = %s))
                RETURNING id""",
            (f"legal hold {row['id']}: {row['reason']}"[:1000], st, sid, digest),
        )
        held = [r["id"] for r in cur.fetchall()]
    log.info(
        "legal hold %s on %s/%s (%s); requests now held: %s",
        row["id"],
        st,
        sid,
        "placed" if created else "already active",
        held,
    )
    return HoldResult(hold_id=int(row["id"]), created=created, requests_held=held)


def release_hold(
    dsn: str,
    released_by: str,
    *,
    hold_id: int | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
) -> ReleaseResult:
    """Release one hold (by id) or every active hold of a subject; held requests proceed at once."""
    released_by = _check_actor("released_by", released_by)
    if (hold_id is None) == (subject_type is None or subject_id is None):
        raise HoldError("give either hold_id or both subject_type and subject_id")
    if hold_id is not None and (not isinstance(hold_id, int) or isinstance(hold_id, bool) or hold_id < 1):
        raise HoldError(f"hold_id: must be a positive integer, got {hold_id!r}")
    result = ReleaseResult()
    with transaction(dsn) as cur:
        if hold_id is not None:
            cur.execute("SELECT subject_type, subject_id FROM erasure.legal_hold WHERE id = %s", (hold_id,))
            row = cur.fetchone()
            if row is None:
                raise HoldError(f"hold_id: no legal hold with id {hold_id}")
            st, sid = row["subject_type"], row["subject_id"]
        else:
            st, sid = _check_subject(None, subject_type, subject_id)
        lock_subject(cur, st, sid)
        cur.execute(
            """UPDATE erasure.legal_hold SET released_at = now(), released_by = %s
                WHERE subject_type = %s AND subject_id = %s AND released_at IS NULL
                  AND (%s::bigint IS NULL OR id = %s::bigint)
                RETURNING id""",
            (released_by, st, sid, hold_id, hold_id),
        )
        result.hold_ids = [r["id"] for r in cur.fetchall()]
        result.requests_released = _release_unheld(cur, st, sid)
    log.info(
        "released holds %s on %s/%s; requests released: %s",
        result.hold_ids,
        st,
        sid,
        result.requests_released,
    )
    return result


_RELEASE_SQL = """
UPDATE erasure.request r
   SET status = 'in_progress', status_reason = 'legal hold released', updated_at = now()
 WHERE r.status = 'held' {subject}
   AND NOT EXISTS (SELECT 1 FROM erasure.legal_hold h
                    WHERE h.subject_type = r.subject_type AND h.subject_id = r.subject_id
                      AND h.released_at IS NULL)
   AND NOT EXISTS (SELECT 1 FROM erasure.legal_hold h JOIN erasure.identity i ON i.digest = h.digest
                    WHERE i.request_id = r.id AND h.released_at IS NULL)
RETURNING r.id
"""


def _release_unheld(cur: Any, subject_type: str | None = None, subject_id: str | None = None) -> list[int]:
    if subject_type is None:
        cur.execute(_RELEASE_SQL.format(subject=""))
    else:
        cur.execute(
            _RELEASE_SQL.format(
                subject="""AND ((r.subject_type = %s AND r.subject_id = %s) OR EXISTS (
                    SELECT 1 FROM erasure.identity i WHERE i.request_id = r.id AND i.digest = %s))"""
            ),
            (subject_type, subject_id, subject_id),
        )
    return sorted(r["id"] for r in cur.fetchall())


def recheck_held_requests(dsn: str) -> RecheckResult:
    """Reconcile request statuses with the hold list (run on every scheduled intake run).

    ``held`` requests without an active hold go to ``in_progress``; open requests with an active hold
    go to ``held``. The hold table is share-locked meanwhile, so a hold placed concurrently is seen.
    """
    result = RecheckResult()
    with transaction(dsn) as cur:
        cur.execute("LOCK TABLE erasure.legal_hold IN SHARE MODE")
        result.released = _release_unheld(cur)
        cur.execute(
            """UPDATE erasure.request r
                  SET status = 'held', status_reason = left('legal hold ' || h.id || ': ' || h.reason, 1000),
                      updated_at = now()
                 FROM erasure.legal_hold h
                WHERE h.released_at IS NULL AND r.status IN ('received', 'in_progress')
                  AND ((h.subject_type = r.subject_type AND h.subject_id = r.subject_id)
                       OR EXISTS (SELECT 1 FROM erasure.identity i WHERE i.request_id = r.id AND i.digest = h.digest))
                RETURNING r.id"""
        )
        result.held = sorted(r["id"] for r in cur.fetchall())
        cur.execute("SELECT count(*) AS n FROM erasure.request WHERE status = 'held'")
        counted = cur.fetchone()
        result.still_held = int(counted["n"]) if counted else 0
    log.info(
        "hold re-check: released %s, newly held %s, still held %d",
        result.released,
        result.held,
        result.still_held,
    )
    return result


def list_holds(
    dsn: str, *, active_only: bool = True, subject_type: str | None = None, subject_id: str | None = None
) -> list[dict[str, Any]]:
    """Holds (newest first) with the number of requests each currently blocks."""
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT h.id, h.subject_type, h.subject_id, h.reason, h.placed_by, h.placed_at,
                      h.released_at, h.released_by,
                      (SELECT count(*) FROM erasure.request r
                        WHERE r.subject_type = h.subject_type AND r.subject_id = h.subject_id
                          AND r.status = 'held' AND h.released_at IS NULL) AS held_requests
                 FROM erasure.legal_hold h
                WHERE (NOT %(active)s OR h.released_at IS NULL)
                  AND (%(st)s::text IS NULL OR h.subject_type = %(st)s)
                  AND (%(sid)s::text IS NULL OR h.subject_id = %(sid)s)
                ORDER BY h.id DESC""",
            {"active": active_only, "st": subject_type, "sid": subject_id},
        )
        return [dict(r) for r in cur.fetchall()]
