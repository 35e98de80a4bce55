"""spark-submit entry point: the Spark half of retention (docs/personal-data.md).

    python spark_jobs/retention_job.py [--report F] [--master M] [--no-dataset] [--no-logs] [--no-reapply]

1. the Delta event dataset: rows of minimised requests get the keyed hash as ``subject_id``, the
   files that held the raw value are vacuumed (``erasure.retention.pseudonymise_dataset``);
2. every warehouse table's expired ``_delta_log`` files deleted now (a checkpoint, then Delta's own
   cleanup: ``erasure.delta_log``), so identifiers in old file statistics go after the table's
   ``delta.logRetentionDuration``;
3. recorded backup restores (``erasure.restore``) not re-applied yet: every person erased after the
   restore point is erased again from the restored targets (``erasure.reapply.reapply_recorded``).

The tracking store DSN comes from ``ERASURE_TRACKING_DSN`` (never the command line); keys from the
settings' secret files. The JSON report (counts and request ids, no identifier) goes to stdout and
``--report``. Exit 0 done, 1 an error or a restore that could not be fully re-applied. No Airflow here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report")
    p.add_argument("--master")
    p.add_argument("--no-dataset", action="store_true")
    p.add_argument("--no-reapply", action="store_true")
    p.add_argument("--no-logs", action="store_true")
    args = p.parse_args(argv)

    from erasure.catalog import load_catalog
    from erasure.evidence.keys import load_hmac_key
    from erasure.reapply import ReapplyContext, reapply_recorded
    from erasure.retention import expire_warehouse_logs, pseudonymise_dataset
    from erasure.settings import get_settings
    from erasure.spark import get_spark

    settings = get_settings()
    dsn = settings.require_tracking_dsn()
    session: list = []

    def spark():  # started only when something needs it
        if not session:
            session.append(get_spark("erasure-retention", master=args.master, settings=settings))
        return session[0]

    report: dict = {"status": "ok"}
    try:
        if not args.no_dataset:
            report["dataset"] = pseudonymise_dataset(dsn, str(settings.dataset_path), spark)
        if not args.no_logs:
            report["warehouse_logs"] = expire_warehouse_logs(
                load_catalog(settings.catalog_path), settings, spark
            )
        if not args.no_reapply:
            ctx = ReapplyContext(
                dsn=dsn,
                catalog=load_catalog(settings.catalog_path),
                settings=settings,
                hmac_key=load_hmac_key(settings.identifier_hmac_key_path),
                spark_factory=spark,
            )
            report["restores"] = reapply_recorded(ctx)
            if not all(r["ok"] for r in report["restores"]):
                report["status"] = "failed"
    except Exception as exc:  # noqa: BLE001 - reported, exit 1
        logging.getLogger("erasure.retention").exception("retention job failed")
        report = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        if session:
            session[0].stop()
    text = json.dumps(report, default=str)
    print(text)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(text)
    return 0 if report["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
