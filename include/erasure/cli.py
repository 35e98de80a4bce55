"""``python -m erasure.cli``: operational commands (no Airflow needed).

db upgrade|downgrade     apply / roll back tracking-store migrations
kafka-topics             create the pipeline's topics
catalog validate [PATH] [--check-tables]  validate a catalog file or directory (and, with Spark,
                         each warehouse table and its key and personal-data columns; warns per table
                         when its _delta_log may keep identifiers past the SLA)
status --request ID|EXTERNAL_ID | --subject TYPE:ID [--json]
                         every target's state, attempts, last error, evidence
reconcile                one reconcile pass (replay, retry/escalate, complete, SLA, alerts)
intake submit|ingest     register requests / the intake table's pending rows (see erasure.intake_cli)
hold place|release|list|recheck   legal holds
audit verify [--from-seq N] [--delta]   recompute the audit chain; exit 1 naming the first broken link
receipt issue|show|verify|export     signed receipts (verify: a file or a request id)
keys init|jwks           create the receipt keys once / print the public JWKS
retention run            tombstones, minimisation, expiry (docs/personal-data.md)
reapply --restored-at T [--target N] [--record --by WHO]   erase again after a backup restore

Settings (the tracking DSN, the Kafka bootstrap, the catalog, SMTP) come from the ERASURE_* environment
variables, read once per invocation (erasure.settings.get_settings).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from erasure.catalog import CatalogError, load_catalog
from erasure.settings import Settings, SettingsError, get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="erasure", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    db = sub.add_parser("db", help="tracking-store migrations")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("--revision", default=None)
    topics = sub.add_parser("kafka-topics", help="create the pipeline's Kafka topics")
    topics.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the broker (120)")
    cat = sub.add_parser("catalog", help="catalog commands")
    cat.add_argument("action", choices=["validate"])
    cat.add_argument("path", nargs="?", default=None)
    cat.add_argument(
        "--check-tables",
        action="store_true",
        help="also check with Spark that each warehouse table exists with its key and personal-data columns",
    )
    # -- status / reconcile (issue 6) --
    st = sub.add_parser("status", help="status of a request or of a subject's requests")
    which = st.add_mutually_exclusive_group(required=True)
    which.add_argument("--request", help="request id or external id")
    which.add_argument("--subject", help="TYPE:ID, e.g. customer:cus_123")
    st.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("reconcile", help="run one reconcile pass against ERASURE_TRACKING_DSN")
    # issue 4 (sync dispatch): per-target Airflow pools generated from the catalog
    pools = sub.add_parser("pools", help="print per-target Airflow pools as JSON (airflow pools import)")
    pools.add_argument("--catalog", default=None)
    # issue 3 (intake): intake submit|ingest, hold place|release|list|recheck
    from erasure.intake_cli import add_parsers as add_intake_parsers

    add_intake_parsers(sub)
    from erasure.evidence.cli import add_parsers as add_evidence_parsers

    add_evidence_parsers(sub)
    from erasure.retention_cli import add_parsers as add_retention_parsers

    add_retention_parsers(sub)
    args = parser.parse_args(argv)
    try:
        settings = get_settings()  # the edge: read the environment once, pass the values on
        return _run(args, settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.cmd == "db":
        from erasure.tracking import downgrade, upgrade

        dsn = settings.require_tracking_dsn()
        if args.action == "upgrade":
            upgrade(dsn, revision=args.revision or "head")
        else:
            downgrade(dsn, revision=args.revision or "base")
        print(f"tracking store: {args.action} done")
    elif args.cmd == "kafka-topics":
        from erasure.kafka_admin import TopicsError, ensure_topics

        try:
            created = ensure_topics(
                settings.kafka_bootstrap,
                timeout=args.timeout,
                replication_factor=settings.kafka_replication_factor,
                min_insync_replicas=settings.kafka_min_insync_replicas,
            )
        except TopicsError as exc:
            print(exc, file=sys.stderr)
            return 1
        print("created topics:", ", ".join(created) if created else "(none, all exist)")
    elif args.cmd == "pools":
        import json

        from erasure.dispatch import pool_specs

        try:
            print(json.dumps(pool_specs(load_catalog(args.catalog or settings.catalog_path)), indent=2))
        except CatalogError as exc:
            print(exc, file=sys.stderr)
            return 1
    elif args.cmd == "catalog":
        try:
            cat_ = load_catalog(args.path or settings.catalog_path)
        except CatalogError as exc:
            print(exc, file=sys.stderr)
            return 1
        if args.check_tables:
            from erasure.spark import get_spark
            from erasure.warehouse import check_log_exposure, check_tables

            spark = get_spark("erasure-catalog-validate", settings=settings)
            try:
                problems = check_tables(spark, cat_, str(settings.warehouse_path))
                warnings = check_log_exposure(spark, cat_, str(settings.warehouse_path))
            finally:
                spark.stop()
            for w in warnings:  # identifiers that may outlive the SLA in _delta_log: warned, not failed
                print(f"warning: {w}", file=sys.stderr)
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            if problems:
                return 1
        print(
            f"catalog OK: {len(cat_.targets)} targets, {len(cat_.teams)} teams, {len(cat_.subject_types)} subject types"
            + (" (warehouse tables checked)" if args.check_tables else "")
        )
    elif args.cmd == "status":
        from erasure import status

        dsn = settings.require_tracking_dsn()
        try:
            if args.request is not None:
                found = [status.request_status(args.request, dsn)]
            else:
                stype, sid = status.parse_subject(args.subject)
                found = status.subject_status(stype, sid, dsn, digest=_subject_digest(settings, stype, sid))
        except (LookupError, ValueError) as exc:
            print(exc, file=sys.stderr)
            return 1
        print(
            status.to_json(found)
            if args.json
            else status.format_status(found, lease_minutes=settings.dispatch_lease_minutes)
        )
    elif args.cmd == "reconcile":
        import json

        from erasure.alerts import EmailNotifier
        from erasure.reconcile import reconcile

        result = reconcile(
            settings.require_tracking_dsn(),
            load_catalog(settings.catalog_path),
            sla_warn_days=settings.sla_warn_days,
            notifiers={"email": EmailNotifier(settings)},
        )
        print(json.dumps(result.as_dict(), indent=2))
    elif args.cmd in ("intake", "hold"):  # issue 3
        from erasure.intake_cli import run as run_intake_command

        return run_intake_command(args, settings)
    elif args.cmd in ("audit", "receipt", "keys"):
        from erasure.evidence.cli import run as run_evidence_command

        return run_evidence_command(args, settings)
    elif args.cmd in ("retention", "reapply"):  # docs/personal-data.md
        from erasure.retention_cli import run as run_retention_command

        return run_retention_command(args, settings)
    return 0


def _subject_digest(settings: Settings, subject_type: str, subject_id: str) -> str | None:
    """The keyed hash a minimised request holds for this subject (None without the key files)."""
    from erasure.identity import IdentityCodec
    from erasure.retention import subject_digest

    try:
        codec = IdentityCodec.from_settings(settings)
        return subject_digest(codec, load_catalog(settings.catalog_path), subject_type, subject_id)
    except (OSError, ValueError, RuntimeError, CatalogError):  # no key files: look up the id as given
        return None


def _exit(rc: int) -> None:
    """Exit with ``rc`` without the interpreter's teardown: deltalake and Arrow keep native thread pools
    whose destructors can abort the process at exit after the work is done and its output written
    (``terminate called without an active exception``, exit -6; delta-io/delta-rs#2184, seen once in
    ``audit verify --delta``). Logs and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    _exit(main())
