"""spark-submit entry point: look for personal data the catalog does not declare in the warehouse.

Scans every catalogued ``warehouse_delta`` table (schema + a sample of values) and every Delta table
under the warehouse root (see :mod:`erasure.drift`), raises one ``pii_drift`` alert per finding to
the owner team (deduplicated, in the tracking store) and appends the findings to the Delta table
``<dataset_dir>/pii_drift``. Never imports Airflow; run it either way::

    python spark_jobs/pii_drift.py --master 'local[2]'
    spark-submit --master 'local[2]' --jars "$(ls .local/jars/*.jar | paste -sd, -)" spark_jobs/pii_drift.py

The tracking DSN comes from ERASURE_TRACKING_DSN, the rest from ``erasure.settings``. Exit status 0
(findings are not failures: they are alerts), 2 on bad configuration. The JSON report (findings
without any value) goes to ``--report`` and is the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)  # under spark-submit the root logger is configured
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("erasure")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--master", default=None, help="Spark master (default: ERASURE_SPARK_MASTER)")
    p.add_argument("--report", default=None, help="write the JSON report to this file")
    args = p.parse_args(argv)

    from erasure.catalog import CatalogError, load_catalog
    from erasure.drift import record_findings, scan_warehouse, write_report
    from erasure.settings import SettingsError, get_settings
    from erasure.spark import get_spark

    try:
        settings = get_settings()
        catalog = load_catalog(settings.catalog_path)
        dsn = settings.require_tracking_dsn()
    except (CatalogError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex
    spark = get_spark("erasure-pii-drift", settings=settings, master=args.master)
    try:
        findings = scan_warehouse(spark, catalog, settings.warehouse_path)
        alerts = record_findings(dsn, catalog, findings)
        table = write_report(spark, findings, settings.dataset_path, run_id)
    finally:
        spark.stop()
    report = {
        "run_id": run_id,
        "findings": [f.to_dict() for f in findings],
        "new_alerts": alerts,
        "report_table": table,
    }
    logging.getLogger("erasure.drift").info("findings=%d new_alerts=%d", len(findings), alerts)
    text = json.dumps(report)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
