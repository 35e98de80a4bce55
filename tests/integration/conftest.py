"""Integration-test fixtures shared by every module in this folder.

Workaround for apache/airflow#73428 (fix: PR #73430, not in 3.3.2): ``DAG.test()`` crashes when a run of a
DAG with a ``deadline`` succeeds (``DagRun.update_state`` looks up the in-memory, still-encoded deadline
alerts as ``deadline_alert`` ids: "can't adapt type 'dict'"). Real scheduler runs are not affected.
In-process ``dag.test()`` runs should not create deadlines in the shared metadata DB anyway (the running
scheduler would fire their callbacks later), so the deadlines are switched off for the duration of
``dag.test()`` only. Remove this when Airflow ships the fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _dag_test_without_deadlines() -> Iterator[None]:
    from airflow.sdk.definitions.dag import DAG

    original = DAG.test

    def test(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved = self.deadline
        if not saved:
            return original(self, *args, **kwargs)
        self.deadline = None
        try:
            return original(self, *args, **kwargs)
        finally:
            self.deadline = saved

    DAG.test = test  # type: ignore[method-assign]
    try:
        yield
    finally:
        DAG.test = original  # type: ignore[method-assign]
