"""Review gate: requests the catalog marks for review (``review:`` in the catalog; status ``in_review``)
wait here for a person, in a human-in-the-loop task of the standard provider (Airflow's **Required
Actions**), before anything is erased.

Every 2 minutes:

1. **claim** - the requests in review no run has claimed yet are bound to this run (one mapped review
   task each; the task shows the request with its identifier masked, its due date and why it needs
   review);
2. **request.review** (a mapped task group, one per request) - ``HITLOperator`` with the options
   Approve / Reject and a reason field; it waits (no worker slot) until someone answers in Required
   Actions or through the REST API;
3. **request.apply** (same map index: each request goes on as soon as it is answered) - approve: the request goes ``in_progress`` and the next dispatch run erases it; reject:
   it is closed as ``rejected`` with the reason; both audited with the reviewer.

Nothing is dispatched while a request is in review, and its SLA clock and alerts keep running
(``erasure_reconcile``). Code: ``erasure.review`` (no Airflow).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param, dag, get_current_context, task, task_group

from erasure.airflow.defaults import dag_kwargs

APPROVE, REJECT = "Approve", "Reject"


@dag(
    dag_id="erasure_review",
    schedule=timedelta(minutes=2),
    max_active_runs=16,
    **dag_kwargs(__doc__, tags=["review"]),
)
def erasure_review():
    @task
    def claim() -> list[dict]:
        from erasure.airflow.conn import tracking_dsn
        from erasure.review import claim as claim_reviews

        run_id = get_current_context()["run_id"]
        claimed = claim_reviews(tracking_dsn(), run_id)
        print(f"{len(claimed)} request(s) to review: {[c.request_id for c in claimed]}")
        return [{"subject": c.subject, "body": c.body} for c in claimed]

    @task_group(group_id="request")
    def review_one(subject: str, body: str) -> None:
        """One claimed request: its review task, then its decision (map index by map index: a request
        approved goes on at once, whatever the others of the run wait for)."""
        review = HITLOperator(
            task_id="review",
            subject=subject,
            body=body,
            options=[APPROVE, REJECT],
            params={
                "reason": Param("", type="string", title="Reason", description="Why (required to reject).")
            },
            # an answer given right as the task parks can race Airflow 3.3.2's scheduler into a retry (a
            # fresh try that asks again): allow a few
            retries=3,
        )

        @task
        def apply(decision: dict) -> str:
            from erasure.airflow.conn import tracking_dsn
            from erasure.db import transaction
            from erasure.review import decide

            ctx = get_current_context()
            mapped = ctx["ti"].map_index
            run_id = ctx["run_id"]
            with transaction(tracking_dsn()) as cur:
                cur.execute(
                    "SELECT request_id FROM erasure.review WHERE dag_run_id = %s AND map_index = %s",
                    (run_id, mapped),
                )
                row = cur.fetchone()
            if row is None:
                raise RuntimeError(f"no review claimed by run {run_id} at index {mapped}")
            request_id = int(row["request_id"])
            user = decision.get("responded_by_user") or {}
            reviewer = f"airflow:{user.get('name') or user.get('id') or 'unknown'}"
            approved = decision["chosen_options"] == [APPROVE]
            reason = (decision.get("params_input") or {}).get("reason")
            status = decide(tracking_dsn(), request_id, approved, reviewer, reason)
            print(f"request {request_id}: {'approved' if approved else 'rejected'} by {reviewer} -> {status}")
            return status

        apply(review.output)

    review_one.expand_kwargs(claim())


erasure_review()
