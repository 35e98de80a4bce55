"""spark-submit entry point: erase the tracking store's subjects from the warehouse Delta tables.

Reads the catalog's ``warehouse_delta`` targets and the workable tasks from the tracking store
(psycopg2, in the driver), then per table runs ONE batched delete (:func:`erasure.warehouse.delete_subjects`), REORG ... APPLY (PURGE) where
deletion vectors are on and VACUUM once the catalog's retention has passed, writing the stages
(deleted, purged, vacuumed) and evidence back (see :mod:`erasure.warehouse`). Never imports Airflow.

Run it either way (the Delta and JDBC jars are in .local/jars):

    python spark_jobs/warehouse_erase.py --master 'local[2]'
    spark-submit --master 'local[2]' --jars "$(ls .local/jars/*.jar | paste -sd, -)" \\
        spark_jobs/warehouse_erase.py

The tracking DSN comes from ``--dsn`` or ERASURE_TRACKING_DSN (prefer the environment: arguments
are visible in the process list); the other defaults from ``erasure.settings`` (ERASURE_* variables). Exit status: 0 all targets ok, 1 a target failed (recorded on its
tasks), 2 bad arguments or configuration. The JSON report goes to ``--report`` and is the last
line of stdout (Delta's VACUUM prints to stdout too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", default=None, help="catalog file or directory (default: ERASURE_CATALOG)")
    p.add_argument("--dsn", default=None, help="tracking store DSN (default: env ERASURE_TRACKING_DSN)")
    p.add_argument(
        "--master", default=None, help="Spark master (default: spark-submit's, ERASURE_SPARK_MASTER)"
    )
    p.add_argument(
        "--warehouse-dir", default=None, help="base of relative table paths (ERASURE_WAREHOUSE_DIR)"
    )
    p.add_argument("--target", action="append", default=None, help="only this target (repeatable)")
    p.add_argument("--run-id", default=None, help="id recorded in evidence and Delta commit metadata")
    p.add_argument("--report", default=None, help="write the JSON report to this file")
    return p.parse_args(argv)


def _master(arg: str | None) -> str | None:
    """--master, else the master spark-submit was given, else None (the settings' ERASURE_SPARK_MASTER)."""
    from erasure.settings import environ

    if arg:
        return arg
    if environ().get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: keep its --master
        from pyspark import SparkConf

        return SparkConf().get("spark.master", None)
    return None


def main(argv: list[str] | None = None) -> int:
    # Our own handler on the "erasure" logger: under spark-submit the root logger is already configured.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("erasure")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    args = _parse(argv)
    from erasure.catalog import CatalogError, load_catalog
    from erasure.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dsn = args.dsn or settings.tracking_dsn
    if not dsn:
        print("error: --dsn or ERASURE_TRACKING_DSN is required (the tracking store)", file=sys.stderr)
        return 2
    try:
        catalog = load_catalog(args.catalog or settings.catalog_path)
    except CatalogError as exc:
        print(f"error: --catalog: {exc}", file=sys.stderr)
        return 2
    from erasure.spark import get_spark
    from erasure.warehouse import erase_warehouse

    spark = get_spark("erasure-warehouse", settings=settings, master=_master(args.master))
    try:
        report = erase_warehouse(
            spark,
            catalog,
            dsn,
            settings=settings,
            warehouse_dir=str(args.warehouse_dir or settings.warehouse_path),
            targets=args.target,
            run_id=args.run_id,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    out = json.dumps(report.to_dict(), default=str)
    if args.report:
        Path(args.report).write_text(out, encoding="utf-8")
    print(out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
