"""Every DAG parses without import errors and is readable in the UI: tags, owner, retries, doc_md,
named map indexes on mapped tasks."""

from __future__ import annotations

import os
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
