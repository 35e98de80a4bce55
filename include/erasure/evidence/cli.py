"""``python -m erasure.cli audit|receipt|keys``: the proof-of-erasure commands (see docs/evidence.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from erasure.settings import Settings


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("--from-seq", type=int, default=1, help="start at this event (default: the first)")
    audit.add_argument("--batch-size", type=int, default=20_000)
    audit.add_argument(
        "--recompute",
        choices=["database", "python"],
        default="database",
        help="where each event's SHA-256 is recomputed (default: database, from this tool's own SQL)",
    )
    audit.add_argument(
        "--delta",
        nargs="?",
        const="",
        default=None,
        help="verify the Delta event dataset instead (path; default: ERASURE_DATASET_DIR)",
    )
    audit.add_argument("--json", action="store_true")
    rc = sub.add_parser("receipt", help="signed receipts of completed requests")
    rc.add_argument("action", choices=["issue", "show", "verify", "export"])
    rc.add_argument(
        "what",
        nargs="?",
        help="show/verify: a receipt file or a request id / external id; issue: a request id",
    )
    rc.add_argument("--jwks", help="public keys to verify with (default: ERASURE_RECEIPT_JWKS_FILE)")
    rc.add_argument("--files", action="store_true", help="export: files under ERASURE_RECEIPTS_DIR")
    rc.add_argument("--delta", action="store_true", help="export: the Delta table erasure_receipts")
    keys = sub.add_parser("keys", help="receipt keys")
    keys.add_argument("action", choices=["init", "jwks"])
    keys.add_argument("--dir", help="init: where to create them (default: <ERASURE_LOCAL>/secrets)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.cmd == "audit":
        return _audit(args, settings)
    if args.cmd == "keys":
        return _keys(args, settings)
    return _receipt(args, settings)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from erasure.evidence import audit

    if args.delta is not None:
        from erasure.event_dataset import events_path

        report = audit.verify_delta(args.delta or events_path(settings.dataset_path))
    else:
        report = audit.verify_chain(
            settings.require_tracking_dsn(),
            batch_size=args.batch_size,
            from_seq=args.from_seq,
            recompute=args.recompute,
        )
    print(json.dumps(report.to_dict(), default=str) if args.json else report.summary())
    return 0 if report.ok else 1


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from erasure.evidence import keys

    if args.action == "init":
        out = keys.init_keys(Path(args.dir) if args.dir else settings.secrets_dir)
        made = ", ".join(out["created"]) or "none (the keys exist)"
        print(f"receipt keys: created {made}; public JWKS {out['jwks']}; kid {out['kid']}")
        return 0
    public = keys.load_signing_key(settings.receipt_signing_key_path).public_key()
    print(json.dumps(keys.jwks(public), indent=2))
    return 0


def _receipt(args: argparse.Namespace, settings: Settings) -> int:
    from erasure.evidence import receipts
    from erasure.evidence.keys import KeyFileError, ReceiptKeys, load_jwks

    try:
        if args.action == "issue":
            from erasure.catalog import load_catalog

            ids = [int(args.what)] if args.what else None
            report = receipts.issue_receipts(
                settings.require_tracking_dsn(),
                ReceiptKeys.from_files(settings.receipt_signing_key_path, settings.identifier_hmac_key_path),
                owners={t.name: t.owner for t in load_catalog(settings.catalog_path).targets},
                request_ids=ids,
            )
            print(json.dumps(report.to_dict(), indent=2))
            return 0 if not (ids and report.not_ready) else 1
        if args.action == "export":
            out = receipts.export_receipts(
                settings.require_tracking_dsn(),
                out_dir=settings.receipts_path if args.files or not args.delta else None,
                dataset_dir=settings.dataset_path if args.delta else None,
            )
            print(json.dumps(out))
            return 0
        if not args.what:
            print(f"receipt {args.action}: a receipt file or a request id is required", file=sys.stderr)
            return 1
        data, from_store = _load(args.what, settings)
        if data is None:
            print(
                f"no receipt for {args.what!r} (not a file, and no issued receipt for that request)",
                file=sys.stderr,
            )
            return 1
        if args.action == "show":
            print(json.dumps(json.loads(data), indent=2, ensure_ascii=False, sort_keys=True))
            return 0
        result = receipts.verify_receipt(
            data, load_jwks(Path(args.jwks) if args.jwks else settings.receipt_jwks_path)
        )
        print(result)
        if result.ok and result.receipt is not None and settings.tracking_dsn and from_store:
            why = receipts.check_audit_anchor(settings.tracking_dsn, result.receipt)
            if why:
                print(f"audit anchor MISMATCH: {why}")
                return 1
            seq = result.receipt["audit"]["last_event_seq"]
            print(f"audit anchor OK: event seq {seq} has the receipt's hash in the tracking store")
        return 0 if result.ok else 1
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _load(what: str, settings: Settings) -> tuple[bytes | None, bool]:
    from erasure.evidence import receipts

    path = Path(what)
    if path.is_file():
        return path.read_bytes(), False
    row = receipts.find_receipt(settings.require_tracking_dsn(), what)
    return (str(row["document"]).encode(), True) if row else (None, False)
