"""Intake of erasure requests triggered through the REST API v2 or the UI's trigger form.

Thin DAG file: validation and registration live in ``erasure.intake`` (no Airflow in the core).
The conf is declared with ``Param``s generated from the catalog, so Airflow refuses bad conf with
HTTP 400 before any task runs; ``erasure.intake`` validates again (per-type id patterns, payload size).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from erasure.catalog import load_catalog
from erasure.intake import MAX_BATCH, field_schemas, request_item_schema

DOC = f"""
### erasure_intake
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

Task `register` returns (XCom) `received`, `registered`, `duplicates`, `rejected`, `held` and one
outcome per request; task `report` fails the run when any request was rejected (reasons in its log).
"""

_catalog = load_catalog()
_fields = field_schemas(_catalog)


def _nullable(schema: dict, **extra: object) -> dict:
    out = {**schema, **extra, "type": ["null", schema["type"]]}
    if "enum" in out:
        out["enum"] = [None, *out["enum"]]
    return out


PARAMS = {
    "subject_type": Param(
        None, **_nullable(_fields["subject_type"], title="Subject type", description="Kind of data subject.")
    ),
    "subject_id": Param(
        None,
        **_nullable(
            _fields["subject_id"], title="Subject id", description="The subject's id, e.g. cus_8f3k2j."
        ),
    ),
    "requested_by": Param(
        None,
        **_nullable(
            _fields["requested_by"],
            title="Requested by",
            description="Who submits the request (user or system).",
        ),
    ),
    "external_id": Param(
        None,
        **_nullable(
            _fields["external_id"],
            title="External request id",
            description="Your ticket id / idempotency key; generated when empty.",
        ),
    ),
    "reason": Param(
        None, **_nullable(_fields["reason"], title="Reason", description="Free text (optional).")
    ),
    "jurisdiction": Param(
        None,
        **_nullable(
            _fields["jurisdiction"], title="Jurisdiction", description="Sets the SLA; default GDPR (30 days)."
        ),
    ),
    "requests": Param(
        None,
        type=["null", "array"],
        items=request_item_schema(_catalog),
        minItems=1,
        maxItems=MAX_BATCH,
        title="Batch of requests",
        description="A list of request objects (same fields as above); leave the single fields empty.",
    ),
}


@dag(
    dag_id="erasure_intake",
    schedule=None,
    catchup=False,
    doc_md=DOC,
    params=PARAMS,
    tags=["erasure", "intake"],
    max_active_runs=16,
    dagrun_timeout=timedelta(minutes=30),
    default_args={"owner": "privacy-platform", "retries": 2, "retry_delay": timedelta(seconds=15)},
)
def erasure_intake():
    @task
    def register(**context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from erasure.airflow.conn import tracking_dsn
        from erasure.intake import register_requests, requests_from_conf

        try:
            requests = requests_from_conf(dict(context["dag_run"].conf or {}), list(PARAMS))
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        result = register_requests(
            tracking_dsn(), load_catalog(), requests, source="api", run_id=context["run_id"]
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

    report(register())


erasure_intake()
