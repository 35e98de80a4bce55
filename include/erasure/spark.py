"""The one Spark session builder: Delta jars from the project's Maven download through ``spark.jars``.

Spark's own runtime download (``spark.jars.packages``) is not used. The master is configurable
(``ERASURE_SPARK_MASTER`` or ``master=``; default ``local[*]``) so the same jobs run on a cluster.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REQUIRED_JARS = ("delta-spark_4.2_2.13-", "delta-storage-")


def spark_jars(jars_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The jars handed to Spark: Delta (spark + storage) and the Postgres JDBC driver."""
    d = Path(
        jars_dir
        or os.environ.get("ERASURE_SPARK_JARS_DIR")
        or Path(__file__).resolve().parents[2] / ".local" / "jars"
    )
    jars = sorted(glob.glob(str(d / "*.jar")))
    for prefix in REQUIRED_JARS:
        if not any(Path(j).name.startswith(prefix) for j in jars):
            raise FileNotFoundError(
                f"{prefix}*.jar not found in {d}: run scripts/stack.sh setup (fetches Delta from Maven Central)"
            )
    return jars


def delta_version(jars_dir: str | os.PathLike[str] | None = None) -> str:
    jar = next(Path(j).name for j in spark_jars(jars_dir) if Path(j).name.startswith(REQUIRED_JARS[0]))
    return jar.removeprefix(REQUIRED_JARS[0]).removesuffix(".jar")


def get_spark(
    app_name: str = "erasure",
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
    jars_dir: str | os.PathLike[str] | None = None,
) -> SparkSession:
    """Build (or reuse) a Delta-enabled SparkSession."""
    from pyspark.sql import SparkSession

    jars = spark_jars(jars_dir)
    local_dir = os.environ.get("ERASURE_LOCAL", str(Path(__file__).resolve().parents[2] / ".local"))
    builder = (
        SparkSession.builder.appName(app_name)
        .master(master or os.environ.get("ERASURE_SPARK_MASTER") or "local[*]")
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", os.environ.get("ERASURE_SPARK_SHUFFLE_PARTITIONS", "4"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", os.environ.get("ERASURE_SPARK_UI", "false"))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.driver.memory", os.environ.get("ERASURE_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.sql.warehouse.dir", os.path.join(local_dir, "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={os.path.join(local_dir, 'derby')}")
    )
    for k, v in (extra_conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
