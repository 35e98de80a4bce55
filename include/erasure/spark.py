"""The one Spark session builder: Delta jars from the project's Maven download through ``spark.jars``.

Spark's own runtime download (``spark.jars.packages``) is not used. Everything configurable comes from
:class:`erasure.settings.Settings` (``ERASURE_SPARK_MASTER`` default ``local[*]``, the jars directory,
shuffle partitions, UI, driver memory, the local state directory), so the same jobs run on a cluster;
``master=`` overrides the settings' master (e.g. the one spark-submit was given).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

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
    for k, v in metastore_conf(settings, jars).items():
        builder = builder.config(k, v)
    for k, v in (extra_conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def metastore_conf(settings: Settings, jars: list[str]) -> dict[str, str]:
    """Spark settings of the Hive metastore kept in PostgreSQL (``spark_metastore_database`` on the
    tracking store's server, same user), or none.

    Spark's built-in Hive 2.3 client talks to it through DataNucleus. The schema is created beforehand
    (``scripts/stack.sh up postgres`` runs DataNucleus' SchemaTool once over Hive's ``package.jdo``):
    left to itself (``datanucleus.schema.autoCreateAll``) DataNucleus creates tables lazily inside the
    metastore's own transactions and the first ``CREATE TABLE`` waits forever on its own lock
    (``ALTER TABLE "TBL_PRIVS" ADD CONSTRAINT`` against the open insert into ``TBLS``). So: no
    auto-creation and no schema-version check (the schema is DataNucleus', not Hive's SQL scripts').
    The JDBC driver must be on the driver's class path before the JVM starts (``spark.jars`` comes too
    late for DataNucleus' connection pool)."""
    db = settings.spark_metastore_database
    if not db:
        return {}
    from urllib.parse import unquote, urlsplit

    dsn = urlsplit(settings.require_tracking_dsn())
    driver = [j for j in jars if Path(j).name.startswith("postgresql-")]
    conf = {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(settings.warehouse_path),
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:postgresql://{dsn.hostname}:{dsn.port or 5432}/{db}",
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "spark.hadoop.javax.jdo.option.ConnectionUserName": unquote(dsn.username or ""),
        "spark.hadoop.javax.jdo.option.ConnectionPassword": unquote(dsn.password or ""),
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        "spark.hadoop.datanucleus.fixedDatastore": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.hadoop.hive.metastore.warehouse.dir": str(settings.warehouse_path),
    }
    if driver:
        conf["spark.driver.extraClassPath"] = driver[0]
    return conf


_SQL_UNSAFE = ("'", "\\")


def key_in(column: str, values: Iterable[str], *, as_string: bool = False) -> Column:
    """Spark condition: ``column`` (a plain column name) is one of ``values``, never NULL.

    Built as ONE SQL expression parsed in the JVM (``col IN ('a', 'b', ...)``, which Spark turns into a
    hash-set lookup), not with ``Column.isin``: that makes one Py4J call per value, ~0.7-1 ms each, so
    10,000 subject keys cost 7-10 s before Spark even plans (measured, issue 21). The rare value holding
    a quote or backslash goes through ``isin`` (escaping rules depend on the parser settings).
    ``as_string``: compare the column's string form (a key column of another type)."""
    from pyspark.sql import functions as F

    ref = f"`{column.replace('`', '``')}`"
    if as_string:
        ref = f"CAST({ref} AS STRING)"
    keys = sorted({str(v) for v in values})
    plain = [k for k in keys if not any(c in k for c in _SQL_UNSAFE)]
    odd = [k for k in keys if any(c in k for c in _SQL_UNSAFE)]
    listed = ", ".join("'" + k + "'" for k in plain)
    cond = F.expr(f"{ref} IN ({listed})") if plain else F.lit(False)
    if odd:
        cond = cond | F.expr(ref).isin(odd)
    return F.coalesce(cond, F.lit(False))
