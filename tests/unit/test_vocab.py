"""The vocabulary (erasure.vocab) and the tracking store's CHECK constraints hold the same values.

Read from the migrations' SQL (no database): for every (table, column) the effective CHECK is the one of
the latest migration that creates, adds or drops it. tests/integration/test_vocab_constraints.py checks
the same against a migrated Postgres (pg_catalog).
"""

from __future__ import annotations

import ast
import re
from enum import StrEnum
from pathlib import Path

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

VERSIONS = Path(__file__).resolve().parents[2] / "include" / "erasure" / "migrations" / "versions"

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

_CHECK_IN = re.compile(r"CHECK\s*\(\s*(\w+)\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE)
_CREATE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?erasure\.(\w+)\s*\(", re.IGNORECASE)
_ALTER = re.compile(r"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?erasure\.(\w+)\b", re.IGNORECASE)
_DROP = re.compile(r"DROP\s+CONSTRAINT\s+(?:IF\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
_ADD_NAMED = re.compile(r"ADD\s+CONSTRAINT\s+(\w+)\s+CHECK\s*\(\s*(\w+)\s+IN", re.IGNORECASE)


def _upgrade_sql(path: Path) -> str:
    """The SQL a migration's ``upgrade()`` runs: its string literals and the module constants it names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    consts: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    consts[t.id] = node.value.value
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade")
    parts = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts.append(node.value)
        elif isinstance(node, ast.Name) and node.id in consts:
            parts.append(consts[node.id])
    return ";\n".join(parts)


def _statements(sql: str) -> list[str]:
    sql = re.sub(r"\$\$.*?\$\$", "", sql, flags=re.DOTALL)  # function bodies hold no constraints
    sql = re.sub(r"--[^\n]*", "", sql)
    return [s for s in sql.split(";") if s.strip()]


def _values(raw: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", raw))


def effective_checks() -> dict[tuple[str, str], set[str]]:
    """(table, column) -> allowed values, after applying every migration in order."""
    checks: dict[tuple[str, str], set[str]] = {}
    names: dict[str, tuple[str, str]] = {}  # constraint name -> (table, column)
    for path in sorted(VERSIONS.glob("[0-9]*.py")):
        for stmt in _statements(_upgrade_sql(path)):
            if m := _CREATE.search(stmt):
                table = m.group(1)
                for col, raw in _CHECK_IN.findall(stmt):
                    checks[(table, col)] = _values(raw)
                    names[f"{table}_{col}_check"] = (table, col)  # Postgres' default name
            elif m := _ALTER.search(stmt):
                table = m.group(1)
                for dropped in _DROP.findall(stmt):
                    key = names.pop(dropped, None)
                    if key is not None:
                        checks.pop(key, None)
                for cname, col in _ADD_NAMED.findall(stmt):
                    names[cname] = (table, col)
                for col, raw in _CHECK_IN.findall(stmt):
                    checks[(table, col)] = _values(raw)
    return checks


def test_migrations_are_parsed() -> None:
    checks = effective_checks()
    assert set(EXPECTED) <= set(checks), f"no CHECK found for {sorted(set(EXPECTED) - set(checks))}"


@pytest.mark.parametrize(("table", "column"), sorted(EXPECTED))
def test_check_constraint_equals_enum(table: str, column: str) -> None:
    enum = EXPECTED[(table, column)]
    assert effective_checks()[(table, column)] == {m.value for m in enum}, (
        f"erasure.{table}.{column}: the migrations' CHECK and vocab.{enum.__name__} differ"
    )


def test_members_are_their_values() -> None:
    """StrEnum members go into SQL parameters and JSON as they are."""
    assert TaskStatus.SUCCEEDED == "succeeded" and f"{TaskStatus.SUCCEEDED}" == "succeeded"
    assert set(RequestStatus.open()) | set(RequestStatus.finished()) == set(RequestStatus)
    assert set(TaskStatus.terminal()) < set(TaskStatus)
