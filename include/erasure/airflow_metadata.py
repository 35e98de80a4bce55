"""Keep identifiers out of Airflow's metadata DB (docs/personal-data.md "Airflow metadata DB").

A request triggered through the REST API or the UI lands in Airflow's own tables before the pipeline
sees it: the run's ``dag_run.conf`` and the API's audit ``log`` row (``trigger_dag_run``, whose
``extra`` is the request body). Once the intake has registered the request in the tracking store, the
identifiers there are no longer needed:

* :func:`forget_run_conf` removes them from one run (the intake DAG's last task calls it for its own
  run right after ``register`` succeeded);
* :func:`scrub_finished_runs` does the same for every finished run of the given DAGs (the scheduled
  retention DAG: runs whose own task could not, e.g. failed or killed ones);
* ``airflow db clean --dag-ids ... --skip-archive`` (the retention DAG) then deletes the erasure DAGs'
  runs, task instances, XComs and log rows older than ``retention_airflow_days``.

The conf keeps what is not personal (``external_id``, ``subject_type``, ``jurisdiction``) and gets
``"_minimised": true``. No Airflow import: it takes the metadata DB's DSN (the Airflow glue reads it
from the ``erasure_airflow_db`` connection).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import psycopg2.extras

from erasure.db import connect

log = logging.getLogger("erasure.airflow_metadata")

PERSONAL_KEYS = frozenset({"subject_id", "identifiers", "reason", "requested_by"})
"""Conf keys that may carry personal data (also inside a batch's ``requests``)."""
MARK = "_minimised"
TERMINAL = ("success", "failed")


def scrub_conf(conf: Any) -> Any:
    """``conf`` without its personal keys (recursively: a batch's ``requests`` too), marked; a conf
    without any is returned unchanged."""

    def walk(o: Any) -> tuple[Any, bool]:
        if isinstance(o, dict):
            hit = any(k in PERSONAL_KEYS for k in o)
            out = {}
            for k, v in o.items():
                if k in PERSONAL_KEYS:
                    continue
                out[k], h = walk(v)
                hit = hit or h
            return out, hit
        if isinstance(o, list):
            pairs = [walk(v) for v in o]
            return [p[0] for p in pairs], any(p[1] for p in pairs)
        return o, False

    out, hit = walk(conf)
    if hit and isinstance(out, dict):
        out[MARK] = True
    return out if hit else conf


def _scrub_log_extra(extra: str | None) -> str | None:
    if not extra:
        return extra
    try:
        body = json.loads(extra)
    except ValueError:
        return extra
    new = scrub_conf(body)
    return extra if new is body else json.dumps(new)


def _scrub(cur: Any, where: str, params: dict[str, Any]) -> dict[str, int]:
    cur.execute(f"SELECT id, conf FROM dag_run WHERE {where} FOR UPDATE", params)  # noqa: S608 - fixed clauses
    runs = [(r["id"], scrub_conf(r["conf"]), r["conf"]) for r in cur.fetchall()]
    changed = [(i, json.dumps(new)) for i, new, old in runs if new is not old]
    if changed:
        psycopg2.extras.execute_values(
            cur,
            "UPDATE dag_run d SET conf = v.c::jsonb FROM (VALUES %s) AS v(id, c) WHERE d.id = v.id",
            changed,
        )
    cur.execute(
        f"""SELECT l.id, l.extra FROM log l WHERE l.event = 'trigger_dag_run' AND l.dag_id = ANY(%(dag_ids)s)
              AND l.extra LIKE '%%"conf"%%' AND EXISTS (SELECT 1 FROM dag_run WHERE {where}
              AND dag_run.dag_id = l.dag_id AND position(dag_run.run_id IN l.extra) > 0)""",  # noqa: S608
        params,
    )
    logs = [(r["id"], _scrub_log_extra(r["extra"]), r["extra"]) for r in cur.fetchall()]
    log_changed = [(i, new) for i, new, old in logs if new != old]
    if log_changed:
        psycopg2.extras.execute_values(
            cur, "UPDATE log l SET extra = v.e FROM (VALUES %s) AS v(id, e) WHERE l.id = v.id", log_changed
        )
    return {"dag_run": len(changed), "log": len(log_changed)}


def forget_run_conf(dsn: str, dag_id: str, run_id: str) -> dict[str, int]:
    """Remove the personal keys from one run's conf and from the API log row that triggered it."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            return _scrub(
                cur,
                "dag_run.dag_id = %(dag_id)s AND dag_run.run_id = %(run_id)s",
                {"dag_id": dag_id, "run_id": run_id, "dag_ids": [dag_id]},
            )
    finally:
        conn.close()


def scrub_finished_runs(dsn: str, dag_ids: Sequence[str]) -> dict[str, int]:
    """:func:`forget_run_conf` for every finished run of ``dag_ids`` whose conf still holds personal keys."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            return _scrub(
                cur,
                "dag_run.dag_id = ANY(%(dag_ids)s) AND dag_run.state = ANY(%(terminal)s) "
                "AND NOT (dag_run.conf ? %(mark)s) AND dag_run.conf ?| %(keys)s",
                {
                    "dag_ids": list(dag_ids),
                    "terminal": list(TERMINAL),
                    "mark": MARK,
                    "keys": sorted(PERSONAL_KEYS) + ["requests"],
                },
            )
    finally:
        conn.close()


def db_clean_command(dag_ids: Sequence[str], before_iso: str) -> list[str]:
    """The ``airflow db clean`` command that deletes the erasure DAGs' history older than
    ``before_iso`` without keeping archive tables (an archive would keep the confs)."""
    return [
        "airflow", "db", "clean", "--clean-before-timestamp", before_iso,
        "--dag-ids", ",".join(dag_ids), "--skip-archive", "--yes",
        "--tables", "dag_run,task_instance,task_instance_history,xcom,log,deadline,trigger",
    ]  # fmt: skip


def run_db_clean(dsn: str, dag_ids: Sequence[str], before_iso: str, *, timeout_s: float = 1800) -> list[str]:
    """Run :func:`db_clean_command` against the metadata DB at ``dsn`` (given explicitly: task
    processes have no metadata-DB access in Airflow 3). Returns the last lines of its output; raises
    ``RuntimeError`` with them when it fails."""
    import subprocess

    from erasure.db import sqlalchemy_url
    from erasure.settings import environ

    env = {**environ(), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(dsn)}
    proc = subprocess.run(  # noqa: S603 - fixed command
        db_clean_command(dag_ids, before_iso),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db clean exited {proc.returncode}: {' | '.join(tail[-5:])}")
    return tail
