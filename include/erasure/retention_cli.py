"""CLI commands of retention and the suppression ledger (wired into ``python -m erasure.cli``).

  retention run [--json]              tombstones, minimisation, expiry in the tracking store now
  reapply --restored-at TIME [--target NAME ...] [--json]
                                      after a backup restore: erase again everyone whose erasure
                                      completed after TIME (ISO 8601) in the restored targets
  reapply --record --restored-at TIME --by WHO [--target NAME ...]
                                      record the restore; the erasure_retention DAG re-applies it

Exit codes: 0 done, 1 bad input or a target that could not be fully re-applied.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from erasure.settings import Settings


def _time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--restored-at: not an ISO 8601 time (e.g. 2026-11-30T02:00:00Z), got {value!r}"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def add_parsers(sub: Any) -> None:
    r = sub.add_parser(
        "retention", help="retention: tombstones, minimisation, expiry (docs/personal-data.md)"
    )
    r.add_argument("action", choices=["run"])
    r.add_argument("--json", action="store_true")
    a = sub.add_parser("reapply", help="erase again after a backup restore, from the suppression ledger")
    a.add_argument("--restored-at", type=_time, required=True, help="the restored backup's point in time")
    a.add_argument(
        "--target", action="append", default=None, help="a restored target (repeatable; default all)"
    )
    a.add_argument("--record", action="store_true", help="only record the restore for the scheduled check")
    a.add_argument("--by", default=None, help="who records the restore (with --record)")
    a.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from erasure.catalog import load_catalog

    dsn = settings.require_tracking_dsn()
    catalog = load_catalog(settings.catalog_path)
    if args.cmd == "retention":
        from erasure.identity import IdentityCodec
        from erasure.retention import run_retention

        report = run_retention(dsn, catalog, IdentityCodec.from_settings(settings), settings)
        print(json.dumps(report.to_dict(), indent=2) if args.json else _retention_text(report.to_dict()))
        return 0
    from erasure.reapply import ReapplyContext, reapply, record_restore

    unknown = sorted(set(args.target or ()) - {t.name for t in catalog.targets})
    if unknown:
        print(f"error: --target: not in the catalog: {unknown}", file=sys.stderr)
        return 1
    if args.record:
        if not args.by:
            print("error: --by: who records the restore is required with --record", file=sys.stderr)
            return 1
        rid = record_restore(dsn, args.restored_at, args.by, args.target)
        print(f"restore {rid} recorded: the erasure_retention DAG re-applies it on its next run")
        return 0
    from erasure.evidence.keys import load_hmac_key
    from erasure.spark import get_spark

    session: list[Any] = []

    def spark() -> Any:
        if not session:
            session.append(get_spark("erasure-reapply", settings=settings))
        return session[0]

    ctx = ReapplyContext(
        dsn=dsn,
        catalog=catalog,
        settings=settings,
        hmac_key=load_hmac_key(settings.identifier_hmac_key_path),
        spark_factory=spark,
    )
    try:
        rep = reapply(ctx, args.restored_at, args.target)
    finally:
        if session:
            session[0].stop()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print(f"erasures completed after {rep.restored_at}: {rep.requests} request(s)")
        for t in rep.targets:
            state = (
                "error"
                if t.error
                else ("report" if t.report_only else ("verified" if t.verified else "NOT verified"))
            )
            print(
                f"  {t.target:<24} {t.kind:<16} {len(t.matched):>5} request(s) {t.rows:>7} row(s)  {state}: {t.error or t.detail}"
            )
    return 0 if rep.ok else 1


def _retention_text(d: dict[str, Any]) -> str:
    lines = [f"tombstones written: {d['tombstones']}", f"requests minimised: {d['minimised_requests']}"]
    lines += [f"  {k}: {v} row(s) rewritten" for k, v in sorted(d["rows"].items())]
    lines += [f"  {k}: {v}" for k, v in sorted(d["expired"].items())]
    return "\n".join(lines)
