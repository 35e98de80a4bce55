"""The vocabulary (erasure.vocab) equals the CHECK constraints of a migrated tracking store (pg_catalog).

The session's tracking database is migrated to head by the ``pg_dsn`` fixture, so what is compared is
what every migration together produced, not what one file says.
"""

from __future__ import annotations

import re
from enum import StrEnum

import pytest

from erasure.vocab import (
    AckStatus,
    CanaryResult,
    EventType,
    IntakeStatus,
    OperatorAction,
    RequestSource,
    RequestStatus,
    ResolutionStatus,
    ReviewDecision,
    TaskStatus,
    WarehouseStage,
)
from tests.helpers.db import query

pytestmark = pytest.mark.integration

EXPECTED: dict[tuple[str, str], type[StrEnum]] = {
    ("request", "status"): RequestStatus,
    ("request", "source"): RequestSource,
    ("task", "status"): TaskStatus,
    ("task", "stage"): WarehouseStage,
    ("ack_log", "status"): AckStatus,
    ("event_log", "event_type"): EventType,
    ("intake", "status"): IntakeStatus,
    ("canary_subject", "result"): CanaryResult,
    ("operator_action", "action"): OperatorAction,
    ("review", "decision"): ReviewDecision,
    ("resolution", "status"): ResolutionStatus,
}

# CHECKs of one column over a fixed value list: Postgres shows ``col IN (...)`` as ``= ANY (ARRAY[...])``
_VALUE_LIST = re.compile(r"=\s*ANY\s*\(\s*\(?\s*ARRAY\[(.*)\]", re.DOTALL)

_CHECKS_SQL = """
SELECT rel.relname AS table_name, att.attname AS column_name, con.conname,
       pg_get_constraintdef(con.oid) AS definition
  FROM pg_constraint con
  JOIN pg_class rel ON rel.oid = con.conrelid
  JOIN pg_namespace nsp ON nsp.oid = rel.relnamespace
  JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
 WHERE con.contype = 'c' AND nsp.nspname = 'erasure' AND cardinality(con.conkey) = 1
 ORDER BY 1, 2
"""


def _value_checks(dsn: str) -> dict[tuple[str, str], set[str]]:
    """(table, column) -> the values of its single-column ``IN (...)`` CHECK, read from pg_catalog."""
    out: dict[tuple[str, str], set[str]] = {}
    for row in query(dsn, _CHECKS_SQL):
        m = _VALUE_LIST.search(row["definition"])
        if m is None:  # another kind of CHECK (e.g. a pattern): not a closed vocabulary
            continue
        key = (row["table_name"], row["column_name"])
        assert key not in out, f"two value-list CHECKs on erasure.{key[0]}.{key[1]}"
        out[key] = set(re.findall(r"'((?:[^']|'')*)'", m.group(1)))
    return out


@pytest.fixture(scope="module")
def checks(pg_dsn: str) -> dict[tuple[str, str], set[str]]:
    return _value_checks(pg_dsn)


@pytest.mark.parametrize(("table", "column"), sorted(EXPECTED))
def test_check_constraint_equals_enum(checks, table: str, column: str) -> None:
    enum = EXPECTED[(table, column)]
    assert (table, column) in checks, f"erasure.{table}.{column} has no value-list CHECK constraint"
    assert checks[(table, column)] == {m.value for m in enum}, (
        f"erasure.{table}.{column}: the database's CHECK and vocab.{enum.__name__} differ"
    )


def test_every_value_list_check_has_its_enum(checks) -> None:
    """A new closed vocabulary in the store gets an enum (and a line in EXPECTED) too."""
    assert sorted(set(checks) - set(EXPECTED)) == []


def test_target_kind_is_not_a_closed_list(checks) -> None:
    """Target kinds come from the adapter registry: no CHECK lists them (migration 0002)."""
    assert ("task", "kind") not in checks
