"""Airflow glue of retention (docs/personal-data.md): the ``erasure_retention`` DAG's tasks and the
intake DAG's ``forget_conf``. Thin: the work is in :mod:`erasure.retention`,
:mod:`erasure.airflow_metadata` and ``spark_jobs/retention_job.py``. Only counts go to XCom.

Connections: ``erasure_tracking`` (the tracking store) and ``erasure_airflow_db`` (Airflow's own
metadata DB: its ``dag_run.conf`` and API ``log`` rows are scrubbed, and ``airflow db clean`` is given
it explicitly because task processes have no metadata-DB access in Airflow 3).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger("erasure.retention")

AIRFLOW_DB_CONN_ID = "erasure_airflow_db"
ERASURE_DAG_IDS = (
    "erasure_intake",
    "erasure_intake_scheduled",
    "erasure_dispatch",
    "erasure_acks",
    "erasure_reconcile",
    "erasure_review",
    "erasure_warehouse",
    "erasure_event_dataset",
    "erasure_proof",
    "erasure_canary",
    "erasure_pii_drift",
    "erasure_smoke",
    "erasure_retention",
)
"""The pipeline's DAGs: their runs are scrubbed and cleaned (the intake's conf holds identifiers)."""


def airflow_db_dsn() -> str | None:
    """The metadata DB's DSN from the ``erasure_airflow_db`` connection, None when it is not set."""
    from erasure.airflow.conn import tracking_dsn

    try:
        return tracking_dsn(AIRFLOW_DB_CONN_ID)  # the same URI handling as the tracking store's
    except Exception:  # noqa: BLE001 - not configured
        return None


def run_retention() -> dict[str, Any]:
    """Tombstones, minimisation and expiry in the tracking store (:func:`erasure.retention.run_retention`)."""
    from erasure.airflow.conn import tracking_dsn
    from erasure.airflow.identity import identity_codec
    from erasure.catalog import load_catalog
    from erasure.retention import run_retention as run
    from erasure.settings import get_settings

    settings = get_settings()
    return run(tracking_dsn(), load_catalog(settings.catalog_path), identity_codec(), settings).to_dict()


def scrub_airflow_metadata(dag_ids: tuple[str, ...] = ERASURE_DAG_IDS) -> dict[str, Any]:
    """Personal keys removed from the confs of finished erasure runs and their API log rows."""
    from erasure.airflow_metadata import scrub_finished_runs

    dsn = airflow_db_dsn()
    if dsn is None:
        raise RuntimeError(
            f"connection '{AIRFLOW_DB_CONN_ID}' (Airflow's metadata DB) is not set: run confs cannot be "
            f"scrubbed (set AIRFLOW_CONN_{AIRFLOW_DB_CONN_ID.upper()}; docs/personal-data.md)"
        )
    out = scrub_finished_runs(dsn, dag_ids)
    log.info("airflow metadata scrubbed: %s", out)
    return out


def clean_airflow_db(days: int | None = None, dag_ids: tuple[str, ...] = ERASURE_DAG_IDS) -> dict[str, Any]:
    """``airflow db clean --skip-archive`` of the erasure DAGs' history older than ``days``
    (``retention_airflow_days``), against the metadata DB of ``erasure_airflow_db``."""
    from erasure.airflow_metadata import run_db_clean
    from erasure.settings import get_settings

    dsn = airflow_db_dsn()
    if dsn is None:
        raise RuntimeError(f"connection '{AIRFLOW_DB_CONN_ID}' is not set: airflow db clean cannot run")
    days = days if days is not None else get_settings().retention_airflow_days
    before = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
    for line in run_db_clean(dsn, dag_ids, before):
        log.info("db clean: %s", line)
    return {"before": before, "dag_ids": len(dag_ids)}


def forget_intake_conf() -> dict[str, Any]:
    """The intake DAG's last task: this run's conf (and its API log row) without identifiers, now that
    the requests are registered. Without the connection it warns: the scheduled scrub needs it too."""
    from airflow.sdk import get_current_context

    from erasure.airflow_metadata import forget_run_conf

    ctx = get_current_context()
    dsn = airflow_db_dsn()
    if dsn is None:
        log.warning(
            "connection '%s' is not set: this run's conf keeps its identifiers (docs/personal-data.md)",
            AIRFLOW_DB_CONN_ID,
        )
        return {"forgotten": False}
    out = forget_run_conf(dsn, ctx["dag"].dag_id, ctx["run_id"])
    return {"forgotten": True, **out}
