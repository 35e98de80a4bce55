"""Every DAG parses without import errors and is readable in the UI: tags, owner, retries, doc_md,
named map indexes on mapped tasks."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= 1


def test_every_dag_is_documented_and_owned(dagbag):
    problems = []
    for dag_id, dag in dagbag.dags.items():
        if not dag.tags:
            problems.append(f"{dag_id}: no tags")
        if not (dag.doc_md and len(dag.doc_md.strip()) > 40):
            problems.append(f"{dag_id}: no doc_md")
        for t in dag.tasks:
            if t.owner in (None, "", "airflow"):
                problems.append(f"{dag_id}.{t.task_id}: default owner")
            if (t.retries or 0) < 1:
                problems.append(f"{dag_id}.{t.task_id}: retries < 1")
    assert problems == []


def test_mapped_tasks_name_their_map_index(dagbag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    missing = [
        f"{dag_id}.{t.task_id}"
        for dag_id, dag in dagbag.dags.items()
        for t in dag.tasks
        if isinstance(t, MappedOperator) and not t.partial_kwargs.get("map_index_template")
    ]
    assert missing == []


def test_dag_files_do_no_io_at_top_level():
    """DAG files must not connect to services at parse time (they are parsed every few seconds)."""
    forbidden = ("psycopg2.connect", "get_spark(", "Producer(", "Consumer(", "httpx.get", "requests.get")
    offenders = []
    for f in (ROOT / "dags").glob("*.py"):
        src = f.read_text()
        top = [line for line in src.splitlines() if line and not line[0].isspace()]
        offenders += [f"{f.name}: {line}" for line in top for bad in forbidden if bad in line]
    assert offenders == []
    assert os.path.isdir(ROOT / "plugins")


def test_every_dag_shares_the_pipeline_defaults(dagbag):
    """Built by ``erasure.airflow.defaults.dag_kwargs``: the ``erasure`` tag, no catch-up, an owning team,
    retries with a delay; no DAG file types ``default_args`` out itself."""
    problems = []
    for dag_id, dag in dagbag.dags.items():
        if "erasure" not in dag.tags:
            problems.append(f"{dag_id}: no 'erasure' tag")
        if dag.catchup:
            problems.append(f"{dag_id}: catchup")
        for key in ("owner", "retries", "retry_delay"):
            if key not in (dag.default_args or {}):
                problems.append(f"{dag_id}: default_args without {key}")
    for f in sorted((ROOT / "dags").glob("*.py")):
        src = f.read_text()
        if "default_args=" in src or "dag_kwargs(" not in src:
            problems.append(f"{f.name}: DAG arguments not from erasure.airflow.defaults.dag_kwargs")
    assert problems == []


def _airflow_code() -> list[Path]:
    return [
        *sorted((ROOT / "dags").glob("*.py")),
        *sorted((ROOT / "plugins").glob("*.py")),
        *sorted((ROOT / "include" / "erasure" / "airflow").rglob("*.py")),
    ]


def _is_task_decorator(node: ast.expr) -> bool:
    """``@task``, ``@task.short_circuit``, ``@task(...)``, ``@task.x(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "task"


def test_tasks_read_the_context_one_way():
    """Tasks take only their own arguments and read the run's context with ``get_current_context()``:
    no ``**context`` and no parameters that Airflow fills from the context (``params``, ``run_id``, ...)."""
    from airflow.sdk.definitions.context import Context

    context_keys = set(Context.__annotations__)
    offenders = []
    for f in _airflow_code():
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if not any(_is_task_decorator(d) for d in node.decorator_list):
                continue
            args = node.args
            names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
            if args.kwarg is not None:
                offenders.append(f"{f.name}:{node.lineno} {node.name}(**{args.kwarg.arg})")
            offenders += [f"{f.name}:{node.lineno} {node.name}({n})" for n in sorted(names & context_keys)]
    assert offenders == []


def test_airflow_code_reads_no_environment_and_names_no_issue_numbers():
    """Settings come from ``erasure.settings`` (Airflow's own config from ``airflow.sdk.configuration``);
    comments and docs say what the code does, not which issue asked for it."""
    issue = re.compile(r"\bissue\s*#?\d+", re.IGNORECASE)
    env = re.compile(r"\bos\.(environ|getenv)\b|\bfrom os import (environ|getenv)\b")
    offenders = []
    for f in _airflow_code():
        for no, line in enumerate(f.read_text().splitlines(), 1):
            if env.search(line) or issue.search(line):
                offenders.append(f"{f.relative_to(ROOT)}:{no}: {line.strip()}")
    assert offenders == []
