"""The one Spark session builder: Delta jars from the project's Maven download through ``spark.jars``.

Spark's own runtime download (``spark.jars.packages``) is not used. Everything configurable comes from
:class:`erasure.settings.Settings` (``ERASURE_SPARK_MASTER`` default ``local[*]``, the jars directory,
shuffle partitions, UI, driver memory, the local state directory), so the same jobs run on a cluster;
``master=`` overrides the settings' master (e.g. the one spark-submit was given).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from erasure.settings import Settings

REQUIRED_JARS = ("delta-spark_4.2_2.13-", "delta-storage-")


def spark_jars(jars_dir: str | os.PathLike[str]) -> list[str]:
    """The jars handed to Spark: Delta (spark + storage) and the Postgres JDBC driver, from ``jars_dir``."""
    d = Path(jars_dir)
    jars = sorted(glob.glob(str(d / "*.jar")))
    for prefix in REQUIRED_JARS:
        if not any(Path(j).name.startswith(prefix) for j in jars):
            raise FileNotFoundError(
                f"{prefix}*.jar not found in {d}: run scripts/stack.sh setup (fetches Delta from Maven Central)"
            )
    return jars


def delta_version(jars_dir: str | os.PathLike[str]) -> str:
    jar = next(Path(j).name for j in spark_jars(jars_dir) if Path(j).name.startswith(REQUIRED_JARS[0]))
    return jar.removeprefix(REQUIRED_JARS[0]).removesuffix(".jar")


def get_spark(
    app_name: str = "erasure",
    *,
    settings: Settings,
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
) -> SparkSession:
    """Build (or reuse) a Delta-enabled SparkSession configured from ``settings``."""
    from pyspark.sql import SparkSession

    jars = spark_jars(settings.jars_path)
    local_dir = str(settings.local_dir)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(master or settings.spark_master)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "true" if settings.spark_ui else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.warehouse.dir", os.path.join(local_dir, "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={os.path.join(local_dir, 'derby')}")
    )
    for k, v in (extra_conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
