"""The Erasure view in a real browser (Debian's chromium driven by Playwright; no browser is downloaded):
log in to the running Airflow, open the "Erasure" entry of the navigation and every page, check the
numbers against the tracking store, find a request by external id and by identifier (shown masked,
never in clear), place and release a legal hold, re-run an escalated task, withdraw a request; a
read-only user sees no action, a user without permission is refused. Screenshots go to
``$ERASURE_LOCAL/screenshots/ui-*.png``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from erasure.vocab import RequestStatus
from tests.conftest import MAIN_TRACKING_DSN
from tests.helpers import ui
from tests.helpers.reconcile_data import fetch, make_request

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("ERASURE_LOCAL", ".local")) / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    ui.require_plugin()
    ui.passwords()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def login(browser, user: str):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(30_000)
    page = ctx.new_page()
    page.goto(ui.BASE + "/auth/login")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", ui.passwords()[user])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(ui.BASE) + r"/?$"))
    return page


def count(sql: str, *args) -> int:
    return int(fetch(MAIN_TRACKING_DSN, sql, args or None)[0]["n"])


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"ui-{name}.png"), full_page=True)


def test_operator_uses_every_page(browser):
    from playwright.sync_api import expect

    sid = f"cus_{uuid.uuid4().hex[:12]}"
    fresh = make_request(
        MAIN_TRACKING_DSN, {"crm_contacts": {}, "billing_profiles": {}}, status="received", subject_id=sid
    )
    failed = make_request(
        MAIN_TRACKING_DSN,
        {
            "crm_contacts": {"status": "escalated", "attempts": 5, "last_error": "HTTP 500: partner down"},
            "billing_profiles": {"status": "succeeded", "attempts": 1, "evidence": {"outcome": "deleted"}},
        },
        status="failed",
        due_in=timedelta(days=-2),
    )
    page = login(browser, "operator")

    # the navigation has an "Erasure" entry; its page is the overview, served by the API server itself
    total_before = count("SELECT count(*) AS n FROM erasure.request")
    page.get_by_role("link", name="Erasure", exact=True).click()
    page.wait_for_url(re.compile(r"/plugin/erasure"))
    frame = page.frame_locator("iframe")
    total = int(frame.locator("#kpi-total").inner_text())
    total_after = count("SELECT count(*) AS n FROM erasure.request")
    assert total_before <= total <= total_after
    failed_shown = int(frame.locator("#kpi-failed").inner_text())
    assert failed_shown >= 1
    bars = frame.locator("#chart-status .bar")
    assert bars.count() == len(RequestStatus)  # one per request status
    assert (
        int(frame.locator('#chart-status .bar[data-label="failed"]').get_attribute("data-value"))
        == failed_shown
    )
    assert frame.locator("#chart-throughput rect.col").count() == 28  # 14 days x (received, completed)
    assert frame.locator("#chart-sla").count() == 1 and frame.locator("#chart-teams").count() == 1
    assert frame.locator('#team-table tr[data-team="crm"] .escalated').inner_text() != "0"
    shot(page, "overview")

    # find by external id, open the request page: masked subject, timeline, the escalated task can be re-run
    frame.get_by_role("link", name="Requests").click()
    frame.locator("#search-ref input[name=q]").fill(failed["external_id"])
    frame.locator("#search-ref button").click()
    frame.locator(f'#results a:text-is("{failed["id"]}")').click()
    assert frame.locator("#request-status").inner_text() == "failed"
    crm = frame.locator("#tasks tr[data-target=crm_contacts]")
    assert crm.get_attribute("data-status") == "escalated"
    assert crm.locator(".timeline li").count() >= 1
    assert frame.locator("#no-receipt").count() == 1
    shot(page, "request-failed")
    crm.locator("form.rerun input[name=reason]").fill("partner fixed their API")
    crm.locator("form.rerun button").click()
    frame.locator("#tasks tr[data-target=crm_contacts][data-status=pending]").wait_for()
    rows = fetch(
        MAIN_TRACKING_DSN,
        "SELECT t.status AS task, r.status AS request FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id WHERE t.id = %s",
        (failed["tasks"]["crm_contacts"],),
    )
    assert rows == [{"task": "pending", "request": "in_progress"}]

    # find by identifier (POST body), shown masked; never in clear anywhere on the page
    frame.get_by_role("link", name="Requests").click()
    frame.locator("#search-subject input[name=identifier]").fill(f"customer:{sid}")
    frame.locator("#search-subject button").click()
    frame.locator(f'#results a:text-is("{fresh["id"]}")').wait_for()
    assert sid not in frame.locator("body").inner_html()
    assert f"/{sid}" not in page.url and sid not in frame.locator("body").inner_text()

    # holds: place one on the subject (its request becomes held), then release it with a reason
    frame.get_by_role("link", name="Holds").click()
    frame.locator("#place-hold select[name=subject_type]").select_option("customer")
    frame.locator("#place-hold input[name=subject_id]").fill(sid)
    reason = f"litigation {uuid.uuid4().hex[:8]}"
    frame.locator("#place-hold input[name=reason]").fill(reason)
    frame.locator("#place-hold button").click()
    frame.locator(f'#holds tr:has-text("{reason}")').wait_for()
    hold_id = int(
        fetch(MAIN_TRACKING_DSN, "SELECT id FROM erasure.legal_hold WHERE subject_id = %s", (sid,))[0]["id"]
    )
    row = frame.locator(f"#hold-{hold_id}")
    assert sid not in frame.locator("body").inner_html()
    assert (
        fetch(MAIN_TRACKING_DSN, "SELECT status FROM erasure.request WHERE id = %s", (fresh["id"],))[0][
            "status"
        ]
        == "held"
    )
    shot(page, "holds")
    row.locator("input[name=reason]").fill("litigation closed")
    row.locator("button").click()
    row.locator("form.release").wait_for(state="detached")
    hold = fetch(MAIN_TRACKING_DSN, "SELECT released_by FROM erasure.legal_hold WHERE id = %s", (hold_id,))[0]
    assert hold["released_by"] == "airflow:operator"

    # withdraw the untouched request from its page
    frame.get_by_role("link", name="Requests").click()
    frame.locator("#search-ref input[name=q]").fill(str(fresh["id"]))
    frame.locator("#search-ref button").click()
    frame.locator(f'#results a:text-is("{fresh["id"]}")').click()
    frame.locator("#withdraw-form input[name=reason]").fill("the customer withdrew it")
    frame.locator("#withdraw-form button").click()
    frame.locator("#request-status:text-is('rejected')").wait_for()
    assert "withdrawn by airflow:operator" in frame.locator("#status-reason").inner_text()
    shot(page, "request-withdrawn")

    # the audit page lists each action with the user
    frame.get_by_role("link", name="Audit of actions").click()
    actions = frame.locator("#actions tbody tr")
    actions.first.wait_for()
    listed = [
        (actions.nth(i).locator(".actor").inner_text(), actions.nth(i).locator(".what").inner_text())
        for i in range(4)
    ]
    assert listed == [
        ("airflow:operator", "request_withdrawn"),
        ("airflow:operator", "hold_released"),
        ("airflow:operator", "hold_placed"),
        ("airflow:operator", "task_rerun"),
    ]

    # target health: crm's task count is the store's (tasks of the last 30 days)
    frame.get_by_role("link", name="Target health").click()
    before = count(
        "SELECT count(*) AS n FROM erasure.task WHERE target = 'crm_contacts' AND created_at >= now() - interval '30 days'"
    )
    shown = int(frame.locator("#targets tr[data-target=crm_contacts] .tasks").inner_text())
    after = count(
        "SELECT count(*) AS n FROM erasure.task WHERE target = 'crm_contacts' AND created_at >= now() - interval '30 days'"
    )
    assert before <= shown <= after
    frame.locator("#team-filter select").select_option("crm")
    expect(frame.locator("#targets tbody tr")).to_have_count(1)
    assert frame.locator("#targets tbody tr").get_attribute("data-target") == "crm_contacts"
    shot(page, "targets")
    page.context.close()


def test_viewer_sees_no_action_and_outsider_is_refused(browser):
    req = make_request(
        MAIN_TRACKING_DSN,
        {"crm_contacts": {"status": "escalated", "attempts": 5, "last_error": "HTTP 500"}},
        status="failed",
    )
    page = login(browser, "viewer")
    page.goto(f"{ui.BASE}/erasure/ui/requests/{req['id']}")
    assert page.locator("#request-status").inner_text() == "failed"
    assert page.locator("#current-user").inner_text() == "viewer (read only)"
    assert page.locator("form.action").count() == 0
    page.goto(f"{ui.BASE}/erasure/ui/holds")
    assert page.locator("#place-hold").count() == 0
    page.context.close()

    # a user without any permission: no "Erasure" entry in the navigation, and the page itself refuses
    page = login(browser, "outsider")
    page.get_by_role("link", name="Dags").first.wait_for()
    assert page.get_by_role("link", name="Erasure", exact=True).count() == 0
    page.goto(f"{ui.BASE}/erasure/ui/")
    assert page.locator("#error-status").inner_text() == "403"
    assert page.locator("#kpi-total").count() == 0
    shot(page, "outsider")
    page.context.close()


def test_reviewer_approves_and_rejects_in_required_actions(browser, airflow_api):
    """Two requests in review: from each request's page in the Erasure view to its human-in-the-loop
    task (Airflow's Required Actions), one approved, one rejected with the reason; audited."""
    from tests.integration.test_review_dag import DAG_ID, in_review, wait_for

    approve, reject = in_review(), in_review()
    ids = [approve["id"], reject["id"]]
    airflow_api.wait_for_dag(DAG_ID, timeout=180)
    airflow_api.unpause(DAG_ID)
    try:
        airflow_api.trigger(DAG_ID, {}, run_id=f"it_review_ui_{uuid.uuid4().hex[:8]}")
        wait_for(
            "both requests claimed",
            lambda: (
                len(
                    fetch(
                        MAIN_TRACKING_DSN, "SELECT 1 FROM erasure.review WHERE request_id = ANY(%s)", (ids,)
                    )
                )
                == 2
            ),
        )
        page = login(browser, "operator")
        for req, choice, reason, status in (
            (approve, "Approve", "identity verified by ticket", "in_progress"),
            (reject, "Reject", "identity not verified", "rejected"),
        ):
            page.goto(f"{ui.BASE}/erasure/ui/requests/{req['id']}")
            assert page.locator("#request-status").inner_text() == "in_review"
            page.locator("#review-link").click()
            page.wait_for_url(re.compile(r"/required_actions$"))
            page.get_by_text(f"Erasure request {req['id']} ").first.wait_for()
            # Under load Airflow 3.3.2 can lose a HITL task's first try to a scheduler race ("task state
            # changed externally") and ask again (a fresh try): a person answers again, so does this test.
            for attempt in range(3):
                page.get_by_role("button", name=choice, exact=True).wait_for()
                page.locator("input[name=reason], textarea[name=reason], #element_reason").first.fill(reason)
                if attempt == 0:
                    shot(page, f"review-{choice.lower()}")
                page.get_by_role("button", name=choice, exact=True).click()
                try:
                    wait_for(
                        f"request {req['id']} {status}",
                        lambda req=req, status=status: (
                            fetch(
                                MAIN_TRACKING_DSN,
                                "SELECT status FROM erasure.request WHERE id = %s",
                                (req["id"],),
                            )[0]["status"]
                            == status
                        ),
                        timeout=90,
                    )
                    break
                except TimeoutError:
                    if attempt == 2:
                        raise
                    page.reload()
        page.context.close()
        actions = fetch(
            MAIN_TRACKING_DSN,
            "SELECT action, actor, reason FROM erasure.operator_action WHERE request_ids && %s::bigint[] ORDER BY id",
            (ids,),
        )
        assert sorted((a["action"], a["actor"], a["reason"]) for a in actions) == [
            ("review_approved", "airflow:operator", "identity verified by ticket"),
            ("review_rejected", "airflow:operator", "identity not verified"),
        ]
    finally:
        airflow_api.pause(DAG_ID)


def test_trigger_form_registers_a_request_without_touching_the_selects(browser, airflow_api):
    """The intake trigger form's selects start at the catalog's first subject type and the default
    jurisdiction (not "null"): typing the subject id and who asks is enough."""
    from tests.integration.test_review_dag import wait_for

    airflow_api.wait_for_dag("erasure_intake", timeout=180)
    sid = f"cus_{uuid.uuid4().hex[:12]}"
    page = login(browser, "operator")
    page.goto(f"{ui.BASE}/dags/erasure_intake")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.locator("#element_subject_id").wait_for()
    assert form.locator("input[name=element_subject_type]").input_value() == "customer"
    assert form.locator("input[name=element_jurisdiction]").input_value() == "GDPR"
    form.locator("#element_subject_id").fill(sid)
    form.locator("#element_requested_by").fill("ui-form-test")
    shot(page, "trigger-form")
    form.get_by_role("button", name="Trigger").click()
    row = wait_for(
        "the request registered by the triggered run",
        lambda: fetch(
            MAIN_TRACKING_DSN,
            "SELECT subject_type, jurisdiction, status FROM erasure.request WHERE subject_id = %s",
            (sid,),
        ),
        timeout=180,
    )
    assert (row[0]["subject_type"], row[0]["jurisdiction"]) == ("customer", "GDPR")
    page.context.close()
