"""PII drift: personal data the catalog does not know about, found in the warehouse.

Two findings, both from the tables' schemas and a small sample of their values (patterns only: no
value is ever kept, logged or reported):

* ``undeclared_personal_column`` - a catalogued ``warehouse_delta`` table has a column that is not
  declared (not in the target's ``personal_data``, key columns or field rules) and looks personal:
  its name (``phone``, ``email``, ``ip_address``, ...) or most sampled values (e-mail, phone,
  card-number with a valid Luhn digit, IP address, or a subject id per the catalog's ``id_pattern``).
  Alerted to the target's owner team.
* ``uncatalogued_table`` - a Delta table under the warehouse root that no target names holds a
  declared identifier (a column named like a target's key column / ``identity_key``, or values
  matching a subject type's ``id_pattern``) or looks personal as above. Alerted to the pipeline owner.

:func:`scan_warehouse` returns the findings; :func:`record_findings` raises one alert per finding
(deduplicated: the same column or table alerts once) and :func:`write_report` appends them to the
Delta table ``<dataset_dir>/pii_drift`` (one row per finding and run). The entry point is
``spark_jobs/pii_drift.py``; the ``erasure_pii_drift`` DAG runs it daily. No Airflow here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from erasure.catalog import Catalog
from erasure.targets.warehouse_delta import WarehouseDeltaSpec
from erasure.vocab import AlertKind, DriftFinding, TargetKind
from erasure.warehouse import table_location

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("erasure.drift")

SAMPLE_ROWS = 500
MATCH_SHARE = 0.5
"""A column looks personal when at least this share of its sampled non-null values match a pattern."""
MAX_DEPTH = 4
REPORT_TABLE = "pii_drift"

PERSONAL_NAMES = frozenset(
    {
        "email", "e_mail", "email_address", "phone", "phone_number", "mobile", "msisdn", "full_name",
        "first_name", "last_name", "surname", "given_name", "name", "address", "street", "street_address",
        "postcode", "zip", "zip_code", "birth_date", "date_of_birth", "dob", "ip", "ip_address",
        "user_agent", "ssn", "passport", "passport_number", "iban", "card_number", "credit_card",
        "tax_id", "device_id", "latitude", "longitude", "geo", "location",
    }
)  # fmt: skip
"""Column names (or their last ``_``-part, e.g. ``billing_email``) that are personal data on their own."""

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ().-]{6,20}[0-9]$")
_CARD = re.compile(r"^[0-9][0-9 -]{11,21}[0-9]$")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def value_kind(value: Any, id_patterns: Sequence[tuple[str, re.Pattern[str]]] = ()) -> str | None:
    """What a sampled value looks like: ``email``, ``card_number``, ``phone``, ``ip_address``,
    ``id:<subject type>``, or None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    for name, pattern in id_patterns:
        if pattern.search(text):
            return f"id:{name}"
    if _EMAIL.match(text):
        return "email"
    digits = re.sub(r"[^0-9]", "", text)
    if _CARD.match(text) and 13 <= len(digits) <= 19 and _luhn(digits):
        return "card_number"
    if _PHONE.match(text) and 9 <= len(digits) <= 15:
        return "phone"
    if ("." in text or ":" in text) and _is_ip(text):
        return "ip_address"
    return None


def name_looks_personal(column: str) -> bool:
    c = column.lower()
    return c in PERSONAL_NAMES or c.rsplit("_", 1)[-1] in PERSONAL_NAMES or c.endswith("_email")


@dataclass(frozen=True)
class Finding:
    kind: DriftFinding
    table: str
    """The catalog target's name, or the uncatalogued table's path."""
    path: str
    column: str | None
    reason: str
    """Why, without values: 'column name', or '84% of 200 sampled values look like phone'."""
    team: str

    @property
    def dedupe_key(self) -> str:
        return f"pii_drift:{self.kind}:{self.path}:{self.column or '*'}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value}


def _profile(
    spark: SparkSession, path: str, id_patterns: Sequence[tuple[str, re.Pattern[str]]]
) -> dict[str, str]:
    """Per string column of the table at ``path``: what most of its sampled values look like."""
    from pyspark.sql import types as T

    df = spark.read.format("delta").load(path)
    strings = [f.name for f in df.schema.fields if isinstance(f.dataType, T.StringType)]
    if not strings:
        return {}
    rows = df.select(*[f"`{c}`" for c in strings]).limit(SAMPLE_ROWS).collect()
    out: dict[str, str] = {}
    for c in strings:
        values = [r[c] for r in rows if r[c] is not None]
        if not values:
            continue
        kinds: dict[str, int] = {}
        for v in values:
            k = value_kind(v, id_patterns)
            if k is not None:
                kinds[k] = kinds.get(k, 0) + 1
        if kinds:
            best, n = max(kinds.items(), key=lambda kv: kv[1])
            if n / len(values) >= MATCH_SHARE:
                out[c] = f"{round(100 * n / len(values))}% of {len(values)} sampled values look like {best}"
    return out


def _delta_tables(root: Path) -> Iterable[Path]:
    """Directories under ``root`` (up to :data:`MAX_DEPTH` deep) that are Delta tables."""
    root = Path(root)
    if not root.is_dir():
        return
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if "_delta_log" in dirnames:
            dirnames[:] = []  # a table's own partition directories are not tables
            yield Path(dirpath)
            continue
        if depth >= MAX_DEPTH:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]


def scan_warehouse(spark: SparkSession, catalog: Catalog, warehouse_dir: str | Path) -> list[Finding]:
    """Every finding in the catalogued warehouse tables and under ``warehouse_dir``."""
    id_patterns = [(s.name, re.compile(s.id_pattern)) for s in catalog.subject_types if s.id_pattern]
    targets = catalog.of_kind(TargetKind.WAREHOUSE_DELTA)
    identifier_columns = {t.identity_key for t in catalog.targets}
    findings: list[Finding] = []
    known: set[str] = set()
    for t in targets:
        spec = t.spec_as(WarehouseDeltaSpec)
        identifier_columns.update(spec.key_columns)
        declared = {*t.personal_data, *spec.key_columns, *spec.rules()}
        try:
            path = table_location(spark, spec, str(warehouse_dir))  # by path, or by name in the catalog
            known.add(os.path.realpath(path.removeprefix("file://").removeprefix("file:")))
            columns = spark.read.format("delta").load(path).columns
            looks = _profile(spark, path, id_patterns)
        except Exception as exc:  # noqa: BLE001 - a missing table is the erasure job's error, not drift
            log.warning("target=%s cannot be read for drift: %s", t.name, type(exc).__name__)
            continue
        for c in columns:
            if c in declared:
                continue
            reason = "column name" if name_looks_personal(c) else looks.get(c)
            if reason:
                findings.append(
                    Finding(DriftFinding.UNDECLARED_PERSONAL_COLUMN, t.name, path, c, reason, t.owner)
                )
    for table in _delta_tables(Path(warehouse_dir)):
        if os.path.realpath(table) in known:
            continue
        try:
            columns = spark.read.format("delta").load(str(table)).columns
            looks = _profile(spark, str(table), id_patterns)
        except Exception as exc:  # noqa: BLE001
            log.warning("table=%s cannot be read for drift: %s", table, type(exc).__name__)
            continue
        reasons = [f"{c}: identifier column" for c in columns if c in identifier_columns]
        reasons += [
            f"{c}: column name" for c in columns if c not in identifier_columns and name_looks_personal(c)
        ]
        reasons += [
            f"{c}: {why}"
            for c, why in looks.items()
            if c not in identifier_columns and not name_looks_personal(c)
        ]
        if reasons:
            findings.append(
                Finding(
                    DriftFinding.UNCATALOGUED_TABLE,
                    table.name,
                    str(table),
                    None,
                    "; ".join(reasons),
                    catalog.pipeline_owner,
                )
            )
    return findings


def record_findings(dsn: str, catalog: Catalog, findings: Sequence[Finding]) -> int:
    """One ``pii_drift`` alert per finding to its team (deduplicated); returns the number of new alerts."""
    from erasure.alerts import raise_team_alert
    from erasure.db import transaction

    new = 0
    with transaction(dsn) as cur:
        for f in findings:
            what = (
                f"column '{f.column}' of {f.table} looks personal ({f.reason}) but the catalog does not "
                "declare it: add it to personal_data and give it a field strategy, or drop it"
                if f.kind == DriftFinding.UNDECLARED_PERSONAL_COLUMN
                else f"Delta table {f.path} is in no catalog target but holds personal data ({f.reason})"
            )
            new += raise_team_alert(
                cur,
                catalog,
                team=f.team,
                dedupe_key=f.dedupe_key,
                kind=AlertKind.PII_DRIFT,
                message=f"PII drift: {what}",
                target=f.table if f.kind == DriftFinding.UNDECLARED_PERSONAL_COLUMN else None,
                details=f.to_dict(),
            )
    return new


def write_report(
    spark: SparkSession, findings: Sequence[Finding], dataset_dir: str | Path, run_id: str
) -> str:
    """Append the run's findings to ``<dataset_dir>/pii_drift`` (Delta); returns the table's path."""
    from erasure.event_dataset import _dir

    path = f"{_dir(dataset_dir)}/{REPORT_TABLE}"
    found_at = datetime.now(UTC)
    rows = [{**f.to_dict(), "run_id": run_id, "found_at": found_at} for f in findings]
    schema = (
        "kind string, `table` string, path string, column string, reason string, team string, "
        "run_id string, found_at timestamp"
    )
    if rows:
        spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(path)
    return path
