"""Failure callbacks of the pipeline's DAGs and tasks: what fails says so, to the team that owns it.

* :func:`dag_failed` - every pipeline DAG's ``on_failure_callback`` (set by
  :func:`erasure.airflow.defaults.dag_kwargs`): one ``dag_run_failed`` alert per failed run to the
  catalog's pipeline owner, naming the failed tasks (``erasure.alerts.record_dag_run_failure``).
* :func:`batch_failed` - the dispatch DAG's delete batches' ``on_failure_callback`` (called once the
  task instance failed for good, not on a retry; also when Airflow finds its process killed): releases
  the batch's claimed tasks so the next dispatch run takes them at once, and raises one
  ``batch_failed`` alert to the target's owner (``erasure.dispatch.release_claim``).

Callbacks run in the DAG processor or the task's process; they read the tracking store through the
``erasure_tracking`` connection (else ``ERASURE_TRACKING_DSN``) and never raise: a failing callback is
logged (the pipeline's reconcile DAG still finds stuck tasks by their lease).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

DELETE_TASK_PREFIX = "delete_"
"""Task id of a target's mapped delete batches: ``delete_<target>`` (dags/erasure_dispatch.py)."""


def claim_key(run_id: str, target: str, batch: int) -> str:
    """The claim key a delete batch stamps on its tasks (one per DAG run, target and batch)."""
    return f"{run_id}/{target}/{batch}"


def _failed_tasks(context: dict[str, Any]) -> list[str]:
    dag_run = context.get("dag_run")
    try:
        tis = dag_run.get_task_instances(state="failed")  # type: ignore[union-attr]
        return sorted({ti.task_id for ti in tis})
    except Exception:  # noqa: BLE001 - not every context's dag_run can list its task instances
        ti = context.get("ti") or context.get("task_instance")
        return [ti.task_id] if ti is not None else []


def dag_failed(context: dict[str, Any]) -> None:
    """``on_failure_callback`` of a pipeline DAG: one alert per failed run (deduplicated)."""
    try:
        from erasure.airflow.conn import tracking_dsn
        from erasure.alerts import record_dag_run_failure
        from erasure.catalog import load_catalog
        from erasure.settings import get_settings

        dag_run = context.get("dag_run")
        dag_id = getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
        run_id = getattr(dag_run, "run_id", None) or context.get("run_id")
        settings = get_settings()
        key, delivery = record_dag_run_failure(
            tracking_dsn(fallback_to_settings=True),
            load_catalog(settings.catalog_path),
            dag_id=str(dag_id or ""),
            run_id=str(run_id or ""),
            failed_tasks=_failed_tasks(context),
            reason=str(context.get("reason") or "") or None,
            settings=settings,
        )
        log.warning("DAG run %s/%s failed -> alert %s (%s)", dag_id, run_id, key, delivery.as_dict())
    except Exception:
        log.exception("recording the failed DAG run as an alert failed")


def batch_failed(context: dict[str, Any]) -> None:
    """``on_failure_callback`` of a mapped delete batch: release its claim, alert the target's owner."""
    try:
        from erasure.airflow.conn import tracking_dsn
        from erasure.catalog import load_catalog
        from erasure.dispatch import release_claim
        from erasure.settings import get_settings

        ti = context.get("ti") or context.get("task_instance")
        run_id = getattr(context.get("dag_run"), "run_id", None) or context.get("run_id")
        task_id = str(getattr(ti, "task_id", ""))
        if not task_id.startswith(DELETE_TASK_PREFIX) or run_id is None:
            log.error("batch_failed: not a delete batch (%s, run %s)", task_id, run_id)
            return
        target = task_id[len(DELETE_TASK_PREFIX) :]
        batch = int(getattr(ti, "map_index", -1))
        exc = context.get("exception")
        error = (
            f"task instance {task_id}[{batch}] failed: {type(exc).__name__}: {exc}"
            if exc
            else (f"task instance {task_id}[{batch}] failed")
        )
        settings = get_settings()
        released = release_claim(
            tracking_dsn(fallback_to_settings=True),
            load_catalog(settings.catalog_path),
            target,
            claim_key(str(run_id), target, batch),
            error=error,
            settings=settings,
        )
        log.warning("batch %s[%s] failed: %d task(s) released", task_id, batch, len(released))
    except Exception:
        log.exception("releasing the failed batch's claim failed (the lease expires instead)")
