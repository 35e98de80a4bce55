"""spark-submit entry point: build the erasure event dataset (Delta) from the tracking store.

    python spark_jobs/build_event_dataset.py [--full-refresh] [--retention-days N] [--no-retention] [--report F]
    python spark_jobs/build_event_dataset.py --retention-only [--retention-days N] [--report F]

or with spark-submit, which must be given the jars itself (``spark.jars`` set by the session builder
comes too late for the driver's class path when spark-submit already started the JVM)::

    spark-submit --jars "$(ls $ERASURE_SPARK_JARS_DIR/*.jar | paste -sd,)" spark_jobs/build_event_dataset.py

The session comes from ``erasure.spark.get_spark`` (Delta + Postgres jars, master from
``ERASURE_SPARK_MASTER``); defaults come from ``erasure.settings`` (the ERASURE_* variables). The
tracking store DSN is read from the environment variable named by ``--dsn-env`` (default
``ERASURE_TRACKING_DSN``), never from the command line (it holds a password).
The build report is printed as JSON on stdout and written to ``--report`` if given (spark-submit
mixes the driver's stderr into stdout).

Exit codes: 0 built; 2 the batch failed data quality (report on stderr, nothing written); 1 other errors.
No Airflow here: the DAG ``erasure_event_dataset`` calls the same ``erasure.event_dataset`` functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import timedelta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Build the erasure event dataset (Delta) from the tracking store."
    )
    p.add_argument("--dataset-dir", help="dataset root (default: ERASURE_DATASET_DIR)")
    p.add_argument("--catalog", help="catalog file or directory (default: ERASURE_CATALOG)")
    p.add_argument("--dsn-env", default="ERASURE_TRACKING_DSN", help="environment variable holding the DSN")
    p.add_argument("--full-refresh", action="store_true", help="re-read the whole retention window")
    p.add_argument("--retention-days", type=int, help="default: ERASURE_DATASET_RETENTION_DAYS (90)")
    p.add_argument("--overlap-hours", type=float, default=6.0, help="incremental re-read window (default 6)")
    p.add_argument("--no-retention", action="store_true", help="skip the retention DELETE + VACUUM")
    p.add_argument(
        "--retention-only", action="store_true", help="only the retention DELETE + VACUUM (no build)"
    )
    p.add_argument("--master", help="Spark master (default: ERASURE_SPARK_MASTER or local[*])")
    p.add_argument(
        "--report", help="also write the JSON build report (or the failed validation) to this file"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    args = parse_args(argv)
    from erasure.catalog import load_catalog
    from erasure.dq import DataQualityError
    from erasure.event_dataset import MAX_RETENTION_DAYS, build_event_dataset
    from erasure.settings import SettingsError, get_settings, secret_from_env
    from erasure.spark import get_spark

    try:
        settings = get_settings()
        dsn = secret_from_env(args.dsn_env, "--dsn-env (the tracking store DSN)")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    retention_days = settings.dataset_retention_days if args.retention_days is None else args.retention_days
    if not 1 <= retention_days <= MAX_RETENTION_DAYS:
        print(
            f"error: --retention-days must be between 1 and {MAX_RETENTION_DAYS}, got {retention_days}",
            file=sys.stderr,
        )
        return 1
    catalog = load_catalog(args.catalog or settings.catalog_path)
    sessions: list = []

    def spark():  # started only when there is something to write
        if not sessions:
            sessions.append(get_spark("erasure-event-dataset", settings=settings, master=args.master))
        return sessions[0]

    if args.retention_only:  # the erasure_event_dataset DAG's enforce_retention task
        from erasure.event_dataset import enforce_retention

        try:
            done = enforce_retention(
                spark, args.dataset_dir or settings.dataset_path, retention_days=retention_days
            )
        finally:
            for s in sessions:
                s.stop()
        print(json.dumps(done, default=str, indent=2))
        _write(args.report, {"status": "retention_applied", **done})
        return 0
    try:
        report = build_event_dataset(
            spark,
            dsn,
            catalog,
            args.dataset_dir or settings.dataset_path,
            full_refresh=args.full_refresh,
            retention_days=retention_days,
            overlap=timedelta(hours=args.overlap_hours),
            apply_retention=not args.no_retention,
        )
    except DataQualityError as exc:
        print(str(exc), file=sys.stderr)
        _write(args.report, {"status": "failed_validation", "validation": exc.summary.to_dict()})
        return 2
    finally:
        for s in sessions:
            s.stop()
    out = report.to_dict()
    print(json.dumps(out, default=str, indent=2))
    _write(args.report, {"status": "built", **out})
    return 0


def _write(path: str | None, doc: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, default=str, indent=2)


if __name__ == "__main__":
    sys.exit(main())
