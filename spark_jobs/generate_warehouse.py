"""spark-submit entry point: (re)create the demo warehouse Delta tables of the catalog (demo only).

    python spark_jobs/generate_warehouse.py --rows demo --subjects cus_demo0001,cus_demo0002
    spark-submit --jars "$(ls .local/jars/*.jar | paste -sd, -)" spark_jobs/generate_warehouse.py --rows tiny

``--rows`` is rows per fact table: an integer or ``tiny`` (2,000), ``demo`` (1,000,000), ``bench``
(10,000,000). ``--subjects`` (comma-separated, or ``@file`` with one id per line) get rows in every
table. Prints a JSON summary of the tables written. See :mod:`erasure_demo.warehouse_gen`: the demo
package, which is not installed (``include/`` must be on ``PYTHONPATH``, as ``scripts/env.sh`` sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _subjects(value: str | None) -> list[str]:
    if not value:
        return []
    if value.startswith("@"):
        lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        return [s.strip() for s in lines if s.strip()]
    return [s.strip() for s in value.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", default=None, help="default: $ERASURE_CATALOG")
    p.add_argument("--rows", default="tiny", help="rows per fact table: int or tiny|demo|bench")
    p.add_argument("--customers", type=int, default=None, help="customer population (default rows // 10)")
    p.add_argument("--subjects", default=None, help="ids that get rows in every table: a,b,c or @file")
    p.add_argument("--warehouse-dir", default=None, help="default: $ERASURE_WAREHOUSE_DIR")
    p.add_argument("--target", action="append", default=None, help="only this target (repeatable)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--master", default=None)
    args = p.parse_args(argv)

    from erasure.catalog import CatalogError, load_catalog
    from erasure_demo.warehouse_gen import generate_tables, resolve_rows

    try:
        catalog = load_catalog(args.catalog)
        rows = resolve_rows(args.rows)
        subjects = _subjects(args.subjects)
    except (CatalogError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from erasure.settings import get_settings
    from erasure.spark import get_spark

    master = args.master
    if not master and os.environ.get("PYSPARK_GATEWAY_PORT"):
        from pyspark import SparkConf

        master = SparkConf().get("spark.master", None)
    spark = get_spark("erasure-warehouse-gen", settings=get_settings(), master=master)
    try:
        tables = generate_tables(
            spark,
            catalog,
            rows,
            subjects,
            customers=args.customers,
            warehouse_dir=args.warehouse_dir,
            targets=args.target,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    print(json.dumps({k: v.to_dict() for k, v in tables.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
