"""Re-apply erasures after a backup restore, from the suppression ledger (docs/personal-data.md).

A restored backup brings back everyone erased after the backup's point in time. ``reapply`` reads the
tombstones (``erasure.tombstone``: keyed hashes of every identifier of every completed erasure, never
a value) of the erasures completed after ``restored_at`` and hands them to each target's *reapplier*:

* ``postgres_table`` and ``warehouse_delta`` compute the same keyed hash of their key columns inside
  the engine (PostgreSQL SQL / Spark, one scan per key column and identifier type, nothing leaves the
  engine but the matches), erase the matched rows again the way the target erases them (delete or its
  field strategies; Delta: then purge and VACUUM), and verify they are gone;
* ``sync_api`` and ``kafka`` targets are owned by other teams' services: their owners get a report of
  the requests to re-run (counts and request ids, no identifier).

Each target matched gets an ``erasure_reapplied`` event per request in the audit log (rows, restore
time). Reappliers register per kind (:func:`reapplier`), one module each: a new kind is one module.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2.extras

from erasure.catalog import Catalog, Target
from erasure.db import transaction
from erasure.retention import subject_id_type
from erasure.settings import Settings
from erasure.vocab import EventType, TargetKind

log = logging.getLogger("erasure.reapply")


@dataclass
class Tombstones:
    """The ledger's entries for one re-application: per identifier type, digest -> request ids."""

    restored_at: datetime
    by_type: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    targets_of: dict[int, set[str]] = field(default_factory=dict)
    """Per request: the targets it was erased from."""

    @property
    def requests(self) -> set[int]:
        return set(self.targets_of)

    def digests(self, id_type: str) -> list[str]:
        return sorted(self.by_type.get(id_type, {}))

    def requests_of(self, id_type: str, digest: str) -> set[int]:
        return self.by_type.get(id_type, {}).get(digest, set())


@dataclass
class TargetReapply:
    """What re-applying did for one target (no identifier: request ids and counts)."""

    target: str
    kind: str
    matched: dict[int, int] = field(default_factory=dict)
    """Request id -> rows found again and erased."""
    rows: int = 0
    verified: bool | None = None
    report_only: bool = False
    detail: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matched"] = {str(k): v for k, v in sorted(self.matched.items())}
        return d


@dataclass
class ReapplyContext:
    dsn: str
    catalog: Catalog
    settings: Settings
    hmac_key: bytes
    """The identifier HMAC key (the tombstones' and ``erasure.identity``'s digests)."""
    spark: Any = None
    spark_factory: Callable[[], Any] | None = None

    def require_spark(self) -> Any:
        if self.spark is None:
            if self.spark_factory is None:
                raise RuntimeError("warehouse targets need Spark: no session or factory was given")
            self.spark = self.spark_factory()
        return self.spark


Reapplier = Callable[[ReapplyContext, Target, Tombstones], TargetReapply]
_REAPPLIERS: dict[str, Reapplier] = {}
BUILTIN_MODULES = (
    "erasure.reapply.postgres_table",
    "erasure.reapply.warehouse_delta",
    "erasure.reapply.report",
)


def reapplier(*kinds: str) -> Callable[[Reapplier], Reapplier]:
    """Decorator: ``fn`` re-applies erasures for targets of ``kinds``."""

    def deco(fn: Reapplier) -> Reapplier:
        for k in kinds:
            _REAPPLIERS[str(k)] = fn
        return fn

    return deco


def reapplier_for(kind: str) -> Reapplier:
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    try:
        return _REAPPLIERS[kind]
    except KeyError:
        raise KeyError(f"no reapplier for target kind '{kind}' (known: {sorted(_REAPPLIERS)})") from None


def id_types_of(catalog: Catalog, target: Target) -> list[str]:
    """The identifier types a target's key columns hold, as the ledger names them."""
    if catalog.has_identity:
        return list(target.identity_keys)
    return sorted({subject_id_type(catalog, st) for st in target.subject_types})


def load_tombstones(dsn: str, restored_at: datetime, targets: Sequence[str] | None = None) -> Tombstones:
    """Tombstones of the erasures completed after ``restored_at`` (of ``targets`` only, if given)."""
    t = Tombstones(restored_at=restored_at)
    with transaction(dsn) as cur:
        cur.execute(
            """SELECT request_id, id_type, digest, targets FROM erasure.tombstone
                WHERE completed_at > %s AND (%s::text[] IS NULL OR targets && %s::text[])""",
            (restored_at, list(targets) if targets else None, list(targets) if targets else None),
        )
        for r in cur.fetchall():
            t.by_type.setdefault(r["id_type"], {}).setdefault(r["digest"], set()).add(r["request_id"])
            t.targets_of.setdefault(r["request_id"], set()).update(r["targets"])
    return t


@dataclass
class ReapplyReport:
    restored_at: str
    requests: int
    targets: list[TargetReapply] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.error is None and t.verified is not False for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "restored_at": self.restored_at,
            "requests": self.requests,
            "ok": self.ok,
            "targets": [t.to_dict() for t in self.targets],
        }


def _record(dsn: str, result: TargetReapply, restored_at: datetime) -> None:
    """One ``erasure_reapplied`` event per matched request (status: the task's), in the audit log."""
    if not result.matched:
        return
    with transaction(dsn) as cur:
        cur.execute(
            "SELECT request_id, id FROM erasure.task WHERE target = %s AND request_id = ANY(%s)",
            (result.target, list(result.matched)),
        )
        task_of = {r["request_id"]: r["id"] for r in cur.fetchall()}
        psycopg2.extras.execute_values(
            cur,
            """INSERT INTO erasure.event_log (request_id, task_id, target, event_type, status, details)
               VALUES %s""",
            [
                (
                    rid,
                    task_of.get(rid),
                    result.target,
                    EventType.ERASURE_REAPPLIED.value,
                    "succeeded" if result.verified is not False and not result.report_only else "pending",
                    json.dumps(
                        {
                            "restored_at": restored_at.isoformat(),
                            "kind": result.kind,
                            "rows": n,
                            "verified": result.verified,
                            "report_only": result.report_only,
                        }
                    ),
                )
                for rid, n in sorted(result.matched.items())
            ],
        )


def reapply(
    ctx: ReapplyContext, restored_at: datetime, targets: Sequence[str] | None = None
) -> ReapplyReport:
    """Erase again, in every target (or ``targets``), everyone whose erasure completed after
    ``restored_at``. A target that fails is reported (``error``) and the others go on."""
    if restored_at.tzinfo is None:
        restored_at = restored_at.replace(tzinfo=UTC)
    chosen = [t for t in ctx.catalog.targets if t.enabled and (not targets or t.name in targets)]
    unknown = sorted(set(targets or ()) - {t.name for t in ctx.catalog.targets})
    if unknown:
        raise ValueError(f"--target: not in the catalog: {unknown}")
    tombs = load_tombstones(ctx.dsn, restored_at, targets)
    report = ReapplyReport(restored_at=restored_at.isoformat(), requests=len(tombs.requests))
    for target in chosen:
        erased_there = {r for r, ts in tombs.targets_of.items() if target.name in ts}
        if not erased_there:
            continue
        try:
            result = reapplier_for(target.kind)(ctx, target, tombs)
        except Exception as exc:  # noqa: BLE001 - one target failing never stops the others
            log.exception("reapply failed for target %s", target.name)
            result = TargetReapply(target.name, target.kind, error=f"{type(exc).__name__}: {exc}"[:1000])
        result.matched = {r: n for r, n in result.matched.items() if r in erased_there}
        _record(ctx.dsn, result, restored_at)
        report.targets.append(result)
        log.info("reapply %s: %s", target.name, {k: v for k, v in result.to_dict().items() if k != "matched"})
    return report


def record_restore(dsn: str, restored_at: datetime, by: str, targets: Sequence[str] | None = None) -> int:
    """Record a restore (an operator, or the restore tooling): the scheduled check re-applies it."""
    with transaction(dsn) as cur:
        cur.execute(
            "INSERT INTO erasure.restore (restored_at, targets, recorded_by) VALUES (%s, %s, %s) RETURNING id",
            (restored_at, list(targets) if targets else None, by),
        )
        row = cur.fetchone()
        assert row is not None
        return int(row["id"])


def reapply_recorded(ctx: ReapplyContext) -> list[dict[str, Any]]:
    """Re-apply every recorded restore not re-applied yet (oldest first); each is marked done with its
    result only when every target succeeded (else it is tried again next run)."""
    with transaction(ctx.dsn) as cur:
        cur.execute(
            "SELECT id, restored_at, targets FROM erasure.restore WHERE reapplied_at IS NULL ORDER BY id"
        )
        pending = cur.fetchall()
    out = []
    for r in pending:
        try:
            rep = reapply(ctx, r["restored_at"], r["targets"])
            result, ok, n = rep.to_dict(), rep.ok, rep.requests
        except ValueError as exc:  # e.g. a target no longer in the catalog: recorded, tried again next run
            result, ok, n = {"error": str(exc)}, False, 0
        with transaction(ctx.dsn) as cur:
            cur.execute(
                "UPDATE erasure.restore SET result = %s, reapplied_at = CASE WHEN %s THEN now() END WHERE id = %s",
                (json.dumps(result), ok, r["id"]),
            )
        out.append({"restore": r["id"], "ok": ok, "requests": n})
    return out


__all__ = [
    "ReapplyContext",
    "ReapplyReport",
    "TargetKind",
    "TargetReapply",
    "Tombstones",
    "load_tombstones",
    "reapplier",
    "reapply",
    "reapply_recorded",
    "record_restore",
]
