"""Airflow Deadline Alerts for the scheduled erasure DAGs (the Airflow 3 replacement for SLA-miss callbacks).

``run_deadline(timedelta(minutes=10))`` returns a ``DeadlineAlert`` that fires when a DAG run has not
finished ``interval`` after it was queued (``DeadlineReference.DAGRUN_QUEUED_AT``). The callback is an
``AsyncCallback`` that runs in the triggerer: ``erasure_callbacks.deadline_missed`` in ``plugins/``
(Airflow puts the plugins folder on ``sys.path`` of every component). It records one alert per run in
``erasure.alert`` and sends it through the same notifiers as every other alert (``erasure.alerts``).

Usage in a DAG file::

    from erasure.airflow.deadlines import run_deadline

    @dag(..., deadline=run_deadline(timedelta(minutes=10)))
"""

from __future__ import annotations

from datetime import timedelta

# airflow.sdk exports these at run time, but its type stub (__init__.pyi, 3.3.2) does not list them
from airflow.sdk import (  # type: ignore[attr-defined]
    AsyncCallback,
    DeadlineAlert,
    DeadlineReference,
    SyncCallback,
)

ASYNC_CALLBACK = "erasure_callbacks.deadline_missed"
SYNC_CALLBACK = "erasure_callbacks.deadline_missed_sync"


def run_deadline(
    interval: timedelta,
    *,
    team: str | None = None,
    description: str | None = None,
    sync: bool = False,
    name: str | None = None,
) -> DeadlineAlert:
    """A deadline ``interval`` after the run was queued; alerts ``team`` (default: the pipeline owner).

    ``sync=True`` runs the callback on the executor (``SyncCallback``) instead of the triggerer.
    """
    if not isinstance(interval, timedelta):
        raise TypeError(f"deadline interval: expected a timedelta, got {type(interval).__name__}")
    if interval <= timedelta(0):
        raise ValueError(f"deadline interval: must be positive, got {interval}")
    kwargs: dict[str, object] = {"interval_s": int(interval.total_seconds())}
    if team:
        kwargs["team"] = team
    if description:
        kwargs["description"] = description
    callback = (
        SyncCallback(SYNC_CALLBACK, kwargs=kwargs) if sync else AsyncCallback(ASYNC_CALLBACK, kwargs=kwargs)
    )
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=callback,
        name=name,
    )
