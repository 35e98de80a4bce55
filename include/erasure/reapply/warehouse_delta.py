"""Re-apply erasures in a warehouse Delta table: keyed hashes computed by Spark, matches erased again."""

from __future__ import annotations

from typing import Any

from erasure.catalog import Catalog, Target
from erasure.pseudonym import PREFIX, hmac_pads
from erasure.reapply import ReapplyContext, TargetReapply, Tombstones, id_types_of, reapplier
from erasure.spark import key_in
from erasure.targets.warehouse_delta import WarehouseDeltaSpec
from erasure.vocab import TargetKind


def normalised_col(catalog: Catalog, id_type: str, col: Any) -> Any:
    """Spark column normalising a key column like :func:`erasure.identity.normalise`."""
    from pyspark.sql import functions as F

    it = catalog.identifier_type(id_type)
    if it is None:
        return col.cast("string")
    value = F.trim(col.cast("string"))
    if it.normalize in ("lower", "email"):
        return F.lower(value)
    if it.normalize == "e164":
        return F.regexp_replace(F.regexp_replace(value, r"[\s\-.()/]", ""), "^00", "+")
    return value


def digest_col(key: bytes, id_type: str, value: Any) -> Any:
    """``hmac-sha256:<hex>`` of ``type:value`` in Spark SQL (RFC 2104 with the engine's SHA-256)."""
    from pyspark.sql import functions as F

    inner, outer = (F.unhex(F.lit(p.hex())) for p in hmac_pads(key))
    msg = F.concat(F.lit(f"{id_type}:"), value).cast("binary")
    return F.concat(F.lit(PREFIX), F.sha2(F.concat(outer, F.unhex(F.sha2(F.concat(inner, msg), 256))), 256))


@reapplier(TargetKind.WAREHOUSE_DELTA)
def reapply_warehouse_delta(ctx: ReapplyContext, target: Target, tombs: Tombstones) -> TargetReapply:
    from pyspark.sql import functions as F

    from erasure.warehouse import erase_table, subject_rows, table_location, verify_erased

    spec = target.spec_as(WarehouseDeltaSpec)
    result = TargetReapply(target.name, target.kind)
    spark = ctx.require_spark()
    wh = str(ctx.settings.warehouse_path)
    df = spark.read.format("delta").load(table_location(spark, spec, wh))
    frames = []
    for col in spec.key_columns:
        for id_type in id_types_of(ctx.catalog, target):
            digests = tombs.digests(id_type)
            if not digests:
                continue
            wanted = spark.createDataFrame([(d,) for d in digests], "h STRING")
            h = digest_col(ctx.hmac_key, id_type, normalised_col(ctx.catalog, id_type, F.col(col)))
            frames.append(
                df.where(F.col(col).isNotNull())
                .select(F.col(col).cast("string").alias("k"), F.lit(id_type).alias("t"), h.alias("h"))
                .join(F.broadcast(wanted), "h")
                .distinct()
            )
    if not frames:
        result.verified, result.detail = True, "no tombstone of this target's identifier types"
        return result
    union = frames[0]
    for f in frames[1:]:
        union = union.unionByName(f)
    matches = [(r["k"], r["t"], r["h"]) for r in union.collect()]  # the people found again: few
    keys = sorted({k for k, _, _ in matches})
    if not keys:
        result.verified, result.detail = True, f"0 rows of {len(tombs.requests)} request(s) in {spec.table}"
        return result
    schema = {f.name: f.dataType for f in df.schema.fields}
    hits = df.where(subject_rows(spec, schema, keys)).select(
        F.explode(F.array(*[F.col(c).cast("string") for c in spec.key_columns])).alias("k")
    )
    counts = {r["k"]: int(r["count"]) for r in hits.where(key_in("k", keys)).groupBy("k").count().collect()}
    steps = erase_table(spark, spec, keys, warehouse_dir=wh)
    verdicts = verify_erased(spark, spec, keys, before_version=None, warehouse_dir=wh)
    for k, t, h in matches:
        for rid in tombs.requests_of(t, h):
            result.matched[rid] = result.matched.get(rid, 0) + counts.get(k, 0)
    result.rows = sum(counts.values())
    result.verified = all(v.ok for v in verdicts.values())
    result.detail = f"{result.rows} row(s) erased again; " + ", ".join(
        f"{name} v{s.version}{'' if s.committed else ' (nothing to do)'}" for name, s in steps.items()
    )
    return result
