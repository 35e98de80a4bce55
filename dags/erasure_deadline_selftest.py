"""Self-test of the alert paths: a run that outlasts a 2-second deadline on purpose, and may fail.

Checks the Deadline Alert path end to end: the run has a deadline **2 s** after it was queued and its
only task sleeps `sleep_s` seconds (default 8), so the deadline is always missed. The scheduler then
queues the `erasure_callbacks.deadline_missed` callback, the triggerer runs it, and it records one
`deadline_missed` alert in `erasure.alert` (dedupe key `deadline_missed:<dag_id>:<run_id>:<deadline id>`)
and sends it to the pipeline owner's channel.

With `fail: true` the task also fails (after its retry), so the run fails and the DAG's
`on_failure_callback` records one `dag_run_failed` alert (dedupe key `dag_run_failed:<dag_id>:<run_id>`)
to the pipeline owner, as for every pipeline DAG.

Triggered only (no schedule), paused at creation. Used by `tests/integration/test_deadline.py` and by
operators to check that missed deadlines reach the pipeline owner's alert channel.
Trigger: `POST /api/v2/dags/erasure_deadline_selftest/dagRuns` with `{"logical_date": null}`;
then `SELECT * FROM erasure.alert WHERE kind = 'deadline_missed'`. It touches no personal data.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from erasure.airflow.deadlines import run_deadline
from erasure.airflow.defaults import dag_kwargs


@dag(
    dag_id="erasure_deadline_selftest",
    schedule=None,
    is_paused_upon_creation=True,
    params={
        "sleep_s": Param(8, type="integer", minimum=0, maximum=120, description="how long the task runs"),
        "fail": Param(False, type="boolean", description="fail the task too (tests the failed-run alert)"),
    },
    deadline=run_deadline(timedelta(seconds=2), description="deadline self-test (always missed)"),
    **dag_kwargs(__doc__, tags=["selftest", "alerts"], retries=1, retry_delay=timedelta(seconds=5)),
)
def erasure_deadline_selftest():
    @task
    def outlast_the_deadline() -> int:
        import time

        params = get_current_context()["params"]
        seconds = int(params.get("sleep_s", 8))
        time.sleep(seconds)
        if params.get("fail"):
            raise RuntimeError("alert self-test: failing on purpose (fail=true)")
        return seconds

    outlast_the_deadline()


erasure_deadline_selftest()
