"""What every erasure DAG shares: owner, retries, catch-up off, the ``erasure`` tag, its documentation.

A DAG file passes what is its own (id, schedule, deadline, run limits) and spreads the rest::

    from erasure.airflow.defaults import dag_kwargs

    @dag(
        dag_id="erasure_acks",
        schedule=timedelta(minutes=2),
        max_active_runs=1,
        **dag_kwargs(__doc__, tags=["kafka", "acks"], retries=2, retry_delay=timedelta(seconds=30)),
    )

Owners are the teams of the catalog that run the pipeline: ``privacy-platform`` (the default) and
``data-platform`` (the Spark/Delta DAGs). Every task is retried at least once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

PRIVACY_PLATFORM = "privacy-platform"
"""Owner of the pipeline's DAGs (intake, dispatch, acks, reconcile, canary, checks)."""
DATA_PLATFORM = "data-platform"
"""Owner of the Spark/Delta DAGs (warehouse erasure, event dataset)."""
TAG = "erasure"
"""The tag every DAG of the pipeline carries (the UI's filter for the whole pipeline)."""


def default_args(
    *,
    owner: str = PRIVACY_PLATFORM,
    retries: int = 1,
    retry_delay: timedelta = timedelta(seconds=30),
    **extra: Any,
) -> dict[str, Any]:
    """``default_args`` of an erasure DAG: its owner and how its tasks are retried (``extra`` is added)."""
    if not owner:
        raise ValueError("default_args: owner must name a team")
    if retries < 1:
        raise ValueError(f"default_args: every erasure task is retried at least once, got retries={retries}")
    if not isinstance(retry_delay, timedelta):
        raise TypeError(f"default_args: retry_delay must be a timedelta, got {type(retry_delay).__name__}")
    return {"owner": owner, "retries": retries, "retry_delay": retry_delay, **extra}


def dag_kwargs(
    doc_md: str | None,
    *,
    tags: Iterable[str] = (),
    owner: str = PRIVACY_PLATFORM,
    retries: int = 1,
    retry_delay: timedelta = timedelta(seconds=30),
    **kwargs: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``@dag``: ``doc_md`` (a DAG file passes its module docstring), the tags
    (``erasure`` first, then ``tags``), no catch-up, a failed run alerts the pipeline owner
    (:func:`erasure.airflow.callbacks.dag_failed`), and :func:`default_args`. ``kwargs`` are added
    (and may override ``catchup``)."""
    if not (doc_md and doc_md.strip()):
        raise ValueError("dag_kwargs: every erasure DAG is documented (doc_md is empty)")
    from erasure.airflow.callbacks import dag_failed

    own = [t for t in tags if t != TAG]
    return {
        "doc_md": doc_md.strip(),
        "tags": [TAG, *own],
        "catchup": False,
        "on_failure_callback": dag_failed,
        "default_args": default_args(owner=owner, retries=retries, retry_delay=retry_delay),
        **kwargs,
    }
