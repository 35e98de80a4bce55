"""CLI commands of intake and legal holds (wired into ``python -m erasure.cli``).

  intake submit --subject-type T --subject-id ID --requested-by WHO [--external-id X] [--reason R] [--jurisdiction J]
  intake submit --file FILE|-        a JSON object or list of objects (a batch)
  intake ingest [--limit N]          register pending rows of erasure.intake (what the scheduled DAG does)
  hold place --subject TYPE:ID --reason R --by WHO
  hold release (--id N | --subject TYPE:ID) --by WHO
  hold list [--all] [--json]
  hold recheck                       release/hold requests according to the hold list

Exit codes: 0 ok, 1 bad input (message on stderr), 2 some requests were rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from erasure.vocab import RequestSource

if TYPE_CHECKING:
    from erasure.settings import Settings


def add_parsers(sub: Any) -> None:
    """Add the ``intake`` and ``hold`` sub-commands to the main CLI's subparsers."""
    it = sub.add_parser("intake", help="submit erasure requests / ingest the intake table")
    it_sub = it.add_subparsers(dest="action", required=True)
    s = it_sub.add_parser("submit", help="register one request or a batch (source 'cli')")
    s.add_argument("--file", help="JSON file with an object or a list of objects ('-' = stdin)")
    s.add_argument("--subject-type")
    s.add_argument("--subject-id")
    s.add_argument("--requested-by")
    s.add_argument("--external-id")
    s.add_argument("--reason")
    s.add_argument("--jurisdiction")
    s.add_argument("--json", action="store_true", help="print the full result as JSON")
    s.add_argument("--catalog", default=None)
    g = it_sub.add_parser("ingest", help="register pending rows of erasure.intake")
    g.add_argument("--limit", type=int, default=5000)
    g.add_argument("--catalog", default=None)

    h = sub.add_parser("hold", help="legal holds: place, release, list, recheck")
    h_sub = h.add_subparsers(dest="action", required=True)
    p = h_sub.add_parser("place", help="place a legal hold on a subject")
    p.add_argument("--subject", required=True, help="TYPE:ID, e.g. customer:cus_123")
    p.add_argument("--reason", required=True)
    p.add_argument("--by", required=True, help="who places the hold")
    p.add_argument("--catalog", default=None)
    r = h_sub.add_parser("release", help="release a hold (by id or every hold of a subject)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int)
    which.add_argument("--subject", help="TYPE:ID")
    r.add_argument("--by", required=True, help="who releases the hold")
    ls = h_sub.add_parser("list", help="list holds (active only unless --all)")
    ls.add_argument("--all", action="store_true")
    ls.add_argument("--json", action="store_true")
    h_sub.add_parser("recheck", help="apply the hold list to open requests")


def _subject(value: str) -> tuple[str, str]:
    st, sep, sid = value.partition(":")
    if not sep or not st or not sid:
        raise ValueError(f"--subject: expected TYPE:ID, got {value!r}")
    return st, sid


def _load_requests(args: argparse.Namespace) -> list[Any]:
    single = {
        k: getattr(args, k)
        for k in ("subject_type", "subject_id", "requested_by", "external_id", "reason", "jurisdiction")
        if getattr(args, k) is not None
    }
    if args.file:
        if single:
            raise ValueError("give either --file or the request fields, not both")
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--file: not valid JSON: {exc}") from exc
        return data if isinstance(data, list) else [data]
    if not single:
        raise ValueError("give --file or --subject-type, --subject-id and --requested-by")
    return [single]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run an ``intake`` or ``hold`` command against the tracking store of ``settings``."""
    from erasure.catalog import CatalogError, load_catalog
    from erasure.holds import HoldError, list_holds, place_hold, recheck_held_requests, release_hold
    from erasure.intake import ingest_pending, register_requests, result_report

    dsn = settings.require_tracking_dsn()
    try:
        if args.cmd == "intake":
            catalog = load_catalog(args.catalog or settings.catalog_path)
            if args.action == "submit":
                res = register_requests(dsn, catalog, _load_requests(args), RequestSource.CLI)
            else:
                res = ingest_pending(dsn, catalog, limit=args.limit)
            out = res.to_dict()
            print(
                json.dumps(out, indent=2, default=str) if getattr(args, "json", False) else result_report(out)
            )
            return 2 if res.rejected else 0
        if args.action == "place":
            st, sid = _subject(args.subject)
            h = place_hold(
                dsn, st, sid, args.reason, args.by, load_catalog(args.catalog or settings.catalog_path)
            )
            state = "placed" if h.created else "already active"
            print(
                f"legal hold {h.hold_id} {state} on {st}:{sid}; requests now held: {h.requests_held or 'none'}"
            )
        elif args.action == "release":
            if args.id is not None:
                rel = release_hold(dsn, args.by, hold_id=args.id)
            else:
                st, sid = _subject(args.subject)
                rel = release_hold(dsn, args.by, subject_type=st, subject_id=sid)
            print(
                f"released holds {rel.hold_ids or 'none'}; requests released: {rel.requests_released or 'none'}"
            )
        elif args.action == "list":
            holds = list_holds(dsn, active_only=not args.all)
            if args.json:
                print(json.dumps(holds, indent=2, default=str))
            for row in [] if args.json else holds:
                state = (
                    f"released {row['released_at']:%Y-%m-%d} by {row['released_by']}"
                    if row["released_at"]
                    else "ACTIVE"
                )
                print(
                    f"{row['id']:>6}  {row['subject_type']}:{row['subject_id']}  {state}  "
                    f"held requests: {row['held_requests']}  placed by {row['placed_by']}: {row['reason']}"
                )
        else:
            print(json.dumps(recheck_held_requests(dsn).to_dict()))
    except (HoldError, CatalogError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
