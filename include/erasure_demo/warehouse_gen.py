"""Generator of realistic demo warehouse tables for the catalog's ``warehouse_delta`` targets.

Tables (by the catalog's ``warehouse_delta.table``):

* ``orders``: orders fact table, **partitioned by** ``order_date``, copy-on-write (no deletion vectors);
* ``page_views``: clickstream, not partitioned, **deletion vectors on** (``delta.enableDeletionVectors``);
* ``customer_dim``: one row per customer, erased by **masking** (``full_name``, ``email``, ``birth_date``);
* any other table name: a generic fact table (key column, the target's ``personal_data`` columns as
  strings, a timestamp and an amount), so a new catalog entry gets demo data without code changes.

Sizes: ``rows`` is the number of rows of each fact table, an int or a preset (``tiny`` = 2,000 for
tests, ``demo`` = 1,000,000, ``bench`` = 10,000,000). ``customers`` (default ``rows // 10``, at
least 100) is the population ``cus_00000000`` ... spread over the facts by a hash, so erasing one
customer touches files all over the table, as in a real time-ordered fact table. ``subjects`` are
extra ids (e.g. the demo's requests) that get rows in every table: 3 orders, 5 page views and one
customer row each. All values derive from hashes of ids and ``seed``: the same call builds the
same tables.

Statistics: the tables collect Delta data-skipping statistics only on non-personal columns
(``delta.dataSkippingStatsColumns``), so ``_delta_log`` never stores personal values as min/max
(log files outlive VACUUM until the log retention expires them).

No Airflow; the Spark session is passed in (built by :func:`erasure.spark.get_spark`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from erasure.catalog import Catalog, Target
from erasure.targets.warehouse_delta import WarehouseDeltaSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SIZES = {"tiny": 2_000, "demo": 1_000_000, "bench": 10_000_000}
BASE_DATE = date(2026, 6, 30)
ROWS_PER_SUBJECT = {"orders": 3, "page_views": 5}
DEFAULT_ROWS_PER_SUBJECT = 3
FILE_ROWS = 500_000  # target rows per data file of unpartitioned facts

FIRST = ["Anna", "Ben", "Chloe", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira",
         "Luca", "Mia", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wim", "Yuki"]  # fmt: skip
LAST = ["Alvarez", "Becker", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Huber", "Ivanova", "Jansen",
        "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Silva", "Tanaka", "Weber"]  # fmt: skip
STREETS = [
    "Main St",
    "Oak Ave",
    "Harbour Rd",
    "Linden Str.",
    "Rue de la Paix",
    "Via Roma",
    "Kings Way",
    "Elm Row",
]
CITIES = ["Berlin", "Paris", "Madrid", "Lisbon", "Vienna", "Dublin", "Warsaw", "Rome", "Oslo", "Prague"]
COUNTRIES = ["DE", "FR", "ES", "PT", "AT", "IE", "PL", "IT", "NO", "CZ"]
SEGMENTS = ["consumer", "small_business", "enterprise", "student"]
CURRENCIES = ["EUR", "EUR", "EUR", "USD", "GBP"]
STATUSES = ["placed", "paid", "shipped", "delivered", "delivered", "delivered", "returned"]
PATHS = ["/", "/search", "/product/", "/cart", "/checkout", "/account", "/help", "/blog/"]
REFERRERS = ["", "https://www.google.com/", "https://duckduckgo.com/", "https://news.example.org/", "direct"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/140.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:141.0) Gecko/20100101 Firefox/141.0",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/140.0 Mobile Safari/537.36",
]


@dataclass(frozen=True)
class GeneratedTable:
    target: str
    table: str
    path: str
    rows: int
    version: int
    files: int
    partition_columns: list[str]
    deletion_vectors: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def customer_id(i: int) -> str:
    """The id of the i-th generated customer (matches the catalog's customer id pattern)."""
    return f"cus_{i:08d}"


def resolve_rows(rows: int | str) -> int:
    if isinstance(rows, str):
        if rows in SIZES:
            return SIZES[rows]
        try:
            rows = int(rows.replace("_", ""))
        except ValueError:
            raise ValueError(f"rows: {rows!r} is neither an integer nor a preset {sorted(SIZES)}") from None
    if rows < 1:
        raise ValueError(f"rows: must be >= 1, got {rows}")
    return int(rows)


# --- column expressions (deterministic functions of ids) -------------------------------------------
def _pick(values: Sequence[str], h: Column) -> Column:
    from pyspark.sql import functions as F

    arr = F.array(*[F.lit(v) for v in values])
    return F.element_at(arr, (F.pmod(h, F.lit(len(values))) + 1).cast("int"))


def _h(seed: int, *cols: Column | str) -> Column:
    from pyspark.sql import functions as F

    return F.xxhash64(F.lit(seed), *cols)  # signed; every use goes through pmod (non-negative)


def _person(seed: int, cid: Column) -> dict[str, Column]:
    """Personal attributes of a customer, derived from the customer id only (consistent across tables)."""
    from pyspark.sql import functions as F

    first = _pick(FIRST, _h(seed, cid, F.lit("first")))
    last = _pick(LAST, _h(seed, cid, F.lit("last")))
    email = F.lower(
        F.concat(
            first, F.lit("."), last, F.lit("."), F.substring(F.sha2(cid, 256), 1, 6), F.lit("@example.com")
        )
    )
    address = F.concat(
        (F.pmod(_h(seed, cid, F.lit("no")), F.lit(200)) + 1).cast("string"),
        F.lit(" "),
        _pick(STREETS, _h(seed, cid, F.lit("street"))),
        F.lit(", "),
        _pick(CITIES, _h(seed, cid, F.lit("city"))),
    )
    return {
        "full_name": F.concat(first, F.lit(" "), last),
        "email": email,
        "address": address,
        "birth_date": F.date_sub(
            F.lit(date(2006, 1, 1)), F.pmod(_h(seed, cid, F.lit("birth")), F.lit(365 * 60)).cast("int")
        ),
        "country": _pick(COUNTRIES, _h(seed, cid, F.lit("country"))),
    }


def _facts(
    spark: SparkSession, rows: int, customers: int, subjects: Sequence[str], per_subject: int, seed: int
) -> DataFrame:
    """(id, customer_id): ``rows`` population rows plus ``per_subject`` rows per explicit subject."""
    from pyspark.sql import functions as F

    base = spark.range(rows).select(
        F.col("id"),
        F.concat(
            F.lit("cus_"),
            F.lpad(F.pmod(_h(seed, F.col("id"), F.lit("cust")), F.lit(customers)).cast("string"), 8, "0"),
        ).alias("customer_id"),
    )
    if not subjects:
        return base
    extra = [(rows + i * per_subject + k, s) for i, s in enumerate(subjects) for k in range(per_subject)]
    return base.unionByName(spark.createDataFrame(extra, "id long, customer_id string"))


def _orders(
    spark: SparkSession, rows: int, customers: int, subjects: Sequence[str], seed: int
) -> tuple[DataFrame, list[str]]:
    from pyspark.sql import functions as F

    days = max(2, min(90, rows // 20_000))
    df = _facts(spark, rows, customers, subjects, ROWS_PER_SUBJECT["orders"], seed)
    p = _person(seed, F.col("customer_id"))
    h = _h(seed, F.col("id"), F.lit("order"))
    order_date = F.date_sub(F.lit(BASE_DATE), F.pmod(h, F.lit(days)).cast("int"))
    out = df.select(
        F.concat(F.lit("ord_"), F.lpad(F.col("id").cast("string"), 10, "0")).alias("order_id"),
        F.col("customer_id"),
        order_date.alias("order_date"),
        (F.to_timestamp(order_date) + F.make_interval(secs=F.pmod(h, F.lit(86_400)).cast("int"))).alias(
            "order_ts"
        ),
        (F.pmod(_h(seed, F.col("id"), F.lit("amt")), F.lit(50_000)) / 100 + 1)
        .cast("decimal(10,2)")
        .alias("amount"),
        _pick(CURRENCIES, _h(seed, F.col("id"), F.lit("cur"))).alias("currency"),
        _pick(STATUSES, _h(seed, F.col("id"), F.lit("st"))).alias("status"),
        p["email"].alias("email"),
        p["address"].alias("shipping_address"),
        p["country"].alias("shipping_country"),
    )
    return out.repartition("order_date"), ["order_date"]


def _page_views(
    spark: SparkSession, rows: int, customers: int, subjects: Sequence[str], seed: int
) -> tuple[DataFrame, list[str]]:
    from pyspark.sql import functions as F

    df = _facts(spark, rows, customers, subjects, ROWS_PER_SUBJECT["page_views"], seed)
    h = _h(seed, F.col("id"), F.lit("view"))
    ip = F.concat_ws(
        ".",
        *[
            (F.pmod(_h(seed, F.col("customer_id"), F.lit(f"ip{i}")), F.lit(254)) + 1).cast("string")
            for i in range(4)
        ],
    )
    out = df.select(
        F.concat(F.lit("pv_"), F.lpad(F.col("id").cast("string"), 11, "0")).alias("view_id"),
        F.col("customer_id"),
        (
            F.to_timestamp(F.lit(BASE_DATE)) - F.make_interval(secs=F.pmod(h, F.lit(90 * 86_400)).cast("int"))
        ).alias("viewed_at"),
        F.concat(
            F.lit("https://shop.example.com"),
            _pick(PATHS, _h(seed, F.col("id"), F.lit("path"))),
            F.pmod(_h(seed, F.col("id"), F.lit("pid")), F.lit(5000)).cast("string"),
        ).alias("url"),
        _pick(REFERRERS, _h(seed, F.col("id"), F.lit("ref"))).alias("referrer"),
        ip.alias("ip_address"),
        _pick(AGENTS, _h(seed, F.col("customer_id"), F.lit("ua"))).alias("user_agent"),
        (F.pmod(h, F.lit(600)) + 1).cast("int").alias("dwell_seconds"),
    )
    return out.repartition(max(2, -(-(rows + len(subjects)) // FILE_ROWS))), []


def _customer_dim(
    spark: SparkSession, customers: int, subjects: Sequence[str], seed: int
) -> tuple[DataFrame, list[str]]:
    from pyspark.sql import functions as F

    ids = spark.range(customers).select(
        F.concat(F.lit("cus_"), F.lpad(F.col("id").cast("string"), 8, "0")).alias("customer_id")
    )
    if subjects:
        ids = ids.unionByName(
            spark.createDataFrame([(s,) for s in subjects], "customer_id string")
        ).distinct()
    p = _person(seed, F.col("customer_id"))
    out = ids.select(
        F.col("customer_id"),
        p["full_name"].alias("full_name"),
        p["email"].alias("email"),
        p["birth_date"].alias("birth_date"),
        p["country"].alias("country"),
        _pick(SEGMENTS, _h(seed, F.col("customer_id"), F.lit("seg"))).alias("segment"),
        (
            F.to_timestamp(F.lit(date(2020, 1, 1)))
            + F.make_interval(
                secs=F.pmod(_h(seed, F.col("customer_id"), F.lit("created")), F.lit(6 * 365 * 86_400)).cast(
                    "int"
                )
            )
        ).alias("created_at"),
    )
    return out.repartition(max(2, -(-(customers + len(subjects)) // FILE_ROWS))), []


def _generic(
    spark: SparkSession, target: Target, rows: int, customers: int, subjects: Sequence[str], seed: int
) -> tuple[DataFrame, list[str]]:
    from pyspark.sql import functions as F

    spec = target.spec_as(WarehouseDeltaSpec)
    df = _facts(spark, rows, customers, subjects, DEFAULT_ROWS_PER_SUBJECT, seed)
    p = _person(seed, F.col("customer_id"))
    cols: list[Column] = [F.col("customer_id").alias(spec.key_column)]
    for c in dict.fromkeys([*spec.mask_columns, *target.personal_data]):
        if c == spec.key_column:
            continue
        cols.append(
            (
                p[c]
                if c in p
                else F.concat(F.lit(f"{c}-"), F.substring(F.sha2(F.col("customer_id"), 256), 1, 12))
            )
            .cast("string")
            .alias(c)
        )
    cols += [
        (
            F.to_timestamp(F.lit(BASE_DATE))
            - F.make_interval(secs=F.pmod(_h(seed, F.col("id"), F.lit("ts")), F.lit(90 * 86_400)).cast("int"))
        ).alias("event_ts"),
        (F.pmod(_h(seed, F.col("id"), F.lit("v")), F.lit(10_000)) / 100).cast("decimal(10,2)").alias("value"),
    ]
    return df.select(*cols).repartition(max(2, -(-(rows + len(subjects)) // FILE_ROWS))), []


NON_PERSONAL_STATS = {
    "orders": "order_id,order_ts,amount,currency,status",  # no partition column (Delta rejects it)
    "page_views": "view_id,viewed_at,dwell_seconds",
    "customer_dim": "country,segment,created_at",
}


def generate_table(
    spark: SparkSession,
    target: Target,
    rows: int | str = "tiny",
    subjects: Sequence[str] = (),
    *,
    customers: int | None = None,
    warehouse_dir: str | None = None,
    seed: int = 7,
    overwrite: bool = True,
) -> GeneratedTable:
    """(Re)create the Delta table of one ``warehouse_delta`` target and return what was written."""
    from delta.tables import DeltaTable

    if target.kind != "warehouse_delta":
        raise ValueError(f"target '{target.name}': kind is '{target.kind}', not warehouse_delta")
    spec = target.spec_as(WarehouseDeltaSpec)
    n = resolve_rows(rows)
    population = customers if customers is not None else max(100, n // 10)
    if population < 1:
        raise ValueError(f"customers: must be >= 1, got {population}")
    subjects = list(dict.fromkeys(subjects))
    path = spec.resolved_path(warehouse_dir)
    if spec.table == "orders":
        df, parts = _orders(spark, n, population, subjects, seed)
    elif spec.table == "page_views":
        df, parts = _page_views(spark, n, population, subjects, seed)
    elif spec.table == "customer_dim":
        df, parts = _customer_dim(spark, population, subjects, seed)
    else:
        df, parts = _generic(spark, target, n, population, subjects, seed)
    if DeltaTable.isDeltaTable(spark, path) and not overwrite:
        raise FileExistsError(f"target '{target.name}': a Delta table exists at '{path}' and overwrite=False")
    if "://" not in path or path.startswith("file:"):
        shutil.rmtree(path.removeprefix("file:"), ignore_errors=True)
        os.makedirs(os.path.dirname(path.removeprefix("file:")) or ".", exist_ok=True)
    stats_cols = NON_PERSONAL_STATS.get(spec.table) or ",".join(
        c for c in df.columns if c in ("event_ts", "value")
    )
    props = {
        "delta.enableDeletionVectors": "true" if spec.deletion_vectors else "false",
        "delta.dataSkippingStatsColumns": stats_cols,
    }
    # Table properties of the first commit come from the session defaults (set, write, restore).
    conf_keys = {
        f"spark.databricks.delta.properties.defaults.{k.removeprefix('delta.')}": v for k, v in props.items()
    }
    previous = {k: spark.conf.get(k, None) for k in conf_keys}
    try:
        for k, v in conf_keys.items():
            spark.conf.set(k, v)
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if parts:
            writer = writer.partitionBy(*parts)
        writer.save(path)
    finally:
        for k, v in previous.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)
    last = DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics").collect()[0]
    metrics = last["operationMetrics"] or {}
    return GeneratedTable(
        target=target.name,
        table=spec.table,
        path=path,
        rows=int(metrics.get("numOutputRows", 0)),
        version=int(last["version"]),
        files=int(metrics.get("numFiles", 0)),
        partition_columns=parts,
        deletion_vectors=spec.deletion_vectors,
    )


def generate_tables(
    spark: SparkSession,
    catalog: Catalog,
    rows: int | str = "tiny",
    subjects: Sequence[str] = (),
    *,
    customers: int | None = None,
    warehouse_dir: str | None = None,
    targets: Sequence[str] | None = None,
    seed: int = 7,
    overwrite: bool = True,
) -> dict[str, GeneratedTable]:
    """(Re)create the tables of all enabled ``warehouse_delta`` targets (or ``targets``)."""
    wanted = catalog.of_kind("warehouse_delta", targets or None)
    return {
        t.name: generate_table(
            spark,
            t,
            rows,
            subjects,
            customers=customers,
            warehouse_dir=warehouse_dir,
            seed=seed,
            overwrite=overwrite,
        )
        for t in wanted
    }
