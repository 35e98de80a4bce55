"""Intake of erasure requests triggered through the REST API v2 or the UI's trigger form.

The conf is declared with `Param`s generated from the catalog (`erasure.airflow.params.intake_params`),
so Airflow refuses bad conf with HTTP 400 before any task runs; `erasure.intake` validates again
(per-type id patterns, payload size) and registers the requests (no Airflow in the core).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

from erasure.airflow.defaults import dag_kwargs
from erasure.airflow.params import conf_without_form_defaults, form_defaults, intake_params
from erasure.catalog import load_catalog
from erasure.intake import MAX_BATCH

DOC = f"""
Registers erasure (right-to-be-forgotten) requests. Trigger it from the UI form or with
`POST /api/v2/dags/erasure_intake/dagRuns` and `{{"logical_date": null, "conf": {{...}}}}`
(see `docs/intake.md` for the exact `curl` calls).

* **single request**: `subject_type`, `subject_id`, `requested_by` (required), optional `external_id`
  (your idempotency key; generated when absent), `reason`, `jurisdiction` (sets the SLA);
* **batch**: `requests`, a list of such objects (at most {MAX_BATCH}); leave the single fields empty.

Each request is written in one transaction: the request plus one task per catalog target of its
subject type, due after the jurisdiction's SLA. A repeated `external_id`, or a subject that already
has an open request, is reported as a **duplicate** of the existing request; a subject under legal
hold is registered as **held**. Invalid requests are recorded in `erasure.rejected_request`.

Task `forget_conf` then removes the identifiers from this run's conf and from the API's log row
(connection `erasure_airflow_db`; docs/personal-data.md), so Airflow's metadata DB does not keep them.

Task `register` returns (XCom) `received`, `registered`, `duplicates`, `rejected`, `held` and one
outcome per request; task `report` fails the run when any request was rejected (reasons in its log).
"""

CATALOG = load_catalog()
PARAMS = intake_params(CATALOG)
FORM_DEFAULTS = form_defaults(CATALOG)


@dag(
    dag_id="erasure_intake",
    schedule=None,
    params=PARAMS,
    max_active_runs=16,
    dagrun_timeout=timedelta(minutes=30),
    **dag_kwargs(DOC, tags=["intake"], retries=2, retry_delay=timedelta(seconds=15)),
)
def erasure_intake():
    @task
    def register() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from erasure.airflow.conn import tracking_dsn
        from erasure.intake import register_requests, requests_from_conf
        from erasure.vocab import RequestSource

        ctx = get_current_context()
        try:
            conf = conf_without_form_defaults(dict(ctx["dag_run"].conf or {}), FORM_DEFAULTS)
            requests = requests_from_conf(conf, list(PARAMS))
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        result = register_requests(
            tracking_dsn(), load_catalog(), requests, source=RequestSource.API, run_id=ctx["run_id"]
        )
        return result.to_dict()

    @task
    def report(result: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from erasure.intake import result_report

        text = result_report(result)
        print(text)
        if result["rejected"]:
            raise AirflowFailException(text)
        return {k: result[k] for k in ("received", "registered", "duplicates", "rejected", "held")}

    @task
    def forget_conf(result: dict) -> dict:
        """The requests are registered: this run's conf and its API log row lose their identifiers."""
        from erasure.airflow.retention import forget_intake_conf

        return forget_intake_conf()

    registered = register()
    report(registered)
    forget_conf(registered)


erasure_intake()
