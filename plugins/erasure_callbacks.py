"""Deadline Alert callbacks of the erasure pipeline (imported by the triggerer / executor by dotted path).

Airflow puts ``plugins/`` on ``sys.path`` of every component, so ``erasure_callbacks.deadline_missed``
resolves in the triggerer. The callbacks only translate Airflow's callback context into
``erasure.alerts.record_deadline_miss``: one row in ``erasure.alert`` per (DAG run, deadline), sent
through the owning team's notifier (log / webhook / email), and retried by the reconcile DAG if the send
failed. Nothing is imported at module level beyond the standard library, so importing this file is cheap.

The tracking DSN comes from the ``erasure_tracking`` Airflow connection (``AIRFLOW_CONN_ERASURE_TRACKING``),
falling back to the ``tracking_dsn`` setting (``ERASURE_TRACKING_DSN``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("erasure.callbacks")


def _handle(context: dict[str, Any] | None, team: str | None, description: str | None, **extra: Any) -> str:
    from erasure.airflow.conn import tracking_dsn
    from erasure.alerts import record_deadline_miss
    from erasure.catalog import load_catalog
    from erasure.settings import get_settings

    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id = dag_run.get("dag_id") or extra.get("dag_id")
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id") or extra.get("run_id")
    settings = get_settings()
    key, delivery = record_deadline_miss(
        tracking_dsn(fallback_to_settings=True),
        load_catalog(settings.catalog_path),
        settings=settings,
        dag_id=dag_id,
        run_id=run_id,
        deadline_id=deadline.get("id"),
        deadline_time=deadline.get("deadline_time"),
        team=team,
        description=description,
    )
    log.warning("deadline missed: %s/%s -> alert %s (%s)", dag_id, run_id, key, delivery.as_dict())
    return key


async def deadline_missed(
    context: dict[str, Any] | None = None,
    team: str | None = None,
    description: str | None = None,
    **kwargs: Any,
) -> str:
    """AsyncCallback (runs in the triggerer); the blocking DB/HTTP work runs in a worker thread."""
    return await asyncio.to_thread(_handle, context, team, description, **kwargs)


def deadline_missed_sync(
    context: dict[str, Any] | None = None,
    team: str | None = None,
    description: str | None = None,
    **kwargs: Any,
) -> str:
    """SyncCallback variant (runs on the executor)."""
    return _handle(context, team, description, **kwargs)
