"""docs/personal-data.md matches the code: every table it names exists (tracking store and Airflow's
metadata DB), and every table of the tracking store is named (a new table must say what it holds)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg2
import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "personal-data.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _tables(dsn: str, schema: str) -> set[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
                (schema,),
            )
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def test_every_tracking_table_is_documented_and_every_documented_table_exists(pg_dsn):
    named = set(re.findall(r"^\| `erasure\.([a-z_]+)`", _section("Tracking store"), re.MULTILINE))
    assert named, "no table rows found in the Tracking store section"
    actual = _tables(pg_dsn, "erasure")
    assert named - actual == set(), (
        f"named in docs/personal-data.md but not in the tracking store: {named - actual}"
    )
    assert actual - named == set(), (
        f"tracking-store tables docs/personal-data.md does not describe: {actual - named}"
    )


def test_documented_airflow_tables_exist():
    named = set()
    for cell in re.findall(r"^\| (`[^|]+`) \|", _section("Airflow metadata DB"), re.MULTILINE):
        named |= set(re.findall(r"`([a-z_]+)`", cell))
    assert {"dag_run", "log", "xcom"} <= named
    dsn = os.environ["AIRFLOW_CONN_ERASURE_AIRFLOW_DB"]
    missing = named - _tables(dsn, "public")
    assert missing == set(), f"named in docs/personal-data.md but not in Airflow's metadata DB: {missing}"


def test_documented_settings_exist():
    from erasure.settings import Settings

    named = set(re.findall(r"`ERASURE_([A-Z_]+)`", _section("Retention settings")))
    fields = {f.upper() for f in Settings.model_fields}
    assert named and named - fields == set(), named - fields
