"""Re-apply erasures in a PostgreSQL table: keyed hashes computed in SQL, matches erased as the target does."""

from __future__ import annotations

from typing import Any, cast

import psycopg2
from psycopg2 import sql

from erasure.catalog import Catalog, Target
from erasure.pseudonym import PREFIX, hmac_pads
from erasure.reapply import ReapplyContext, TargetReapply, Tombstones, id_types_of, reapplier
from erasure.targets import adapter_for
from erasure.targets.postgres_table import PostgresTableAdapter, PostgresTableSpec, _Sql
from erasure.vocab import FieldStrategy, TargetKind


def normalised_sql(catalog: Catalog, id_type: str, column: sql.Composable) -> sql.Composable:
    """SQL that normalises a key column's text like :func:`erasure.identity.normalise` (trim, lower,
    e-mail, E.164 noise), so the hash matches the one taken at intake."""
    it = catalog.identifier_type(id_type)
    value = sql.SQL("btrim({}::text)").format(column)
    norm = it.normalize if it is not None else "none"
    if norm in ("lower", "email"):
        return sql.SQL("lower({})").format(value)
    if norm == "e164":
        stripped = sql.SQL("regexp_replace({}, '[[:space:]().\\-/]', '', 'g')").format(value)
        return sql.SQL("regexp_replace({}, '^00', '+')").format(stripped)
    return value if it is not None else sql.SQL("{}::text").format(column)


def digest_sql(id_type: str, value: sql.Composable) -> sql.Composable:
    """``hmac-sha256:<hex>`` of ``type:value`` with the pads ``%(inner)s``/``%(outer)s`` (RFC 2104)."""
    return sql.SQL(
        "{prefix} || encode(sha256(%(outer)s::bytea || sha256(%(inner)s::bytea || "
        "convert_to({t} || {v}, 'UTF8'))), 'hex')"
    ).format(prefix=sql.Literal(PREFIX), t=sql.Literal(f"{id_type}:"), v=value)


@reapplier(TargetKind.POSTGRES_TABLE)
def reapply_postgres_table(ctx: ReapplyContext, target: Target, tombs: Tombstones) -> TargetReapply:
    spec = target.spec_as(PostgresTableSpec)
    result = TargetReapply(target.name, target.kind)
    inner, outer = hmac_pads(ctx.hmac_key)
    tbl = sql.Identifier(*spec.schema_and_name())
    adapter = cast(PostgresTableAdapter, adapter_for(target))  # the registered adapter, not a second one
    conn = psycopg2.connect(adapter.dsn(target))
    try:
        with conn, conn.cursor() as cur:
            # one scan per key column and identifier type; only matches (value, digest) leave the server
            parts: list[sql.Composable] = []
            params: dict[str, Any] = {"inner": psycopg2.Binary(inner), "outer": psycopg2.Binary(outer)}
            for i, col in enumerate(spec.key_columns):
                for j, id_type in enumerate(id_types_of(ctx.catalog, target)):
                    digests = tombs.digests(id_type)
                    if not digests:
                        continue
                    name = f"d{i}_{j}"
                    params[name] = digests
                    d = digest_sql(id_type, normalised_sql(ctx.catalog, id_type, sql.Identifier(col)))
                    parts.append(
                        sql.SQL(
                            "SELECT DISTINCT {c}::text AS k, {t} AS t, h FROM {tbl}, LATERAL (SELECT {d} AS h) x "
                            "WHERE {c} IS NOT NULL AND h = ANY({p})"
                        ).format(
                            c=sql.Identifier(col),
                            t=sql.Literal(id_type),
                            tbl=tbl,
                            d=d,
                            p=sql.Placeholder(name),
                        )
                    )
            if not parts:
                result.detail = "no tombstone of this target's identifier types"
                result.verified = True
                return result
            cur.execute(sql.SQL(" UNION ALL ").join(parts), params)
            matches: list[tuple[str, str, str]] = cur.fetchall()
            keys = sorted({k for k, _, _ in matches})
            if not keys:
                result.verified, result.detail = (
                    True,
                    f"0 rows of {len(tombs.requests)} request(s) in {spec.table}",
                )
                return result
            q = _Sql(
                spec, adapter._types(cur, spec), hmac_pads(_pseudonym_key(ctx)) if _hashes(spec) else None
            )
            p = {**q.params, "ids": keys}
            cur.execute(q.hits(), p)
            rows = {str(k): int(n) for k, n in cur.fetchall()}
            cur.execute(q.erase(), p)
            cur.execute(q.hits(), p)
            left = sum(int(n) for _, n in cur.fetchall())
        for k, t, h in matches:
            for rid in tombs.requests_of(t, h):
                result.matched[rid] = result.matched.get(rid, 0) + rows.get(k, 0)
        result.rows = sum(rows.values())
        result.verified = left == 0
        result.detail = f"{result.rows} row(s) erased again in {spec.table}; {left} left"
    finally:
        conn.close()
    return result


def _hashes(spec: PostgresTableSpec) -> bool:
    return FieldStrategy.HASH in spec.strategies().values()


def _pseudonym_key(ctx: ReapplyContext) -> bytes:
    from erasure.pseudonym import load_key

    return load_key(ctx.settings.pseudonym_key_path)
