"""Unit checks of the canary's ids and test records, and of the demo's people and submissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from erasure import canary
from erasure.catalog import load_catalog
from erasure_demo.demo import Demo, DemoConfig, _short_error, make_people, partner_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cat():
    return load_catalog(ROOT / "include" / "catalog")


def test_canary_ids_match_their_subject_type_and_are_recognisable(cat):
    cus = {canary.new_subject_id(cat, "customer") for _ in range(50)}
    emp = canary.new_subject_id(cat, "employee")
    assert len(cus) == 50
    assert all(cat.subject_type("customer").id_regex.fullmatch(c) and canary.is_canary_id(c) for c in cus)
    assert cat.subject_type("employee").id_regex.fullmatch(emp) and emp.startswith("emp_99")
    with pytest.raises(canary.CanaryError, match="subject_type: unknown subject type 'robot'"):
        canary.new_subject_id(cat, "robot")


def test_canary_payload_marks_every_personal_field(cat):
    t = cat.target("crm_contacts")
    p = canary.partner_payload(t, "canary_abc123", "customer")
    assert p["subject_id"] == "canary_abc123" and p["is_test"] is True
    assert p["data"]["is_canary"] is True
    assert {f: p["data"][f] for f in t.personal_data} == {
        f: f"canary-{f}-canary_abc123" for f in t.personal_data
    }


def test_canary_targets_cover_every_kind(cat):
    kinds = {t.kind for st in ("customer", "employee") for t in canary.canary_targets(cat, st)}
    assert kinds == {"sync_api", "kafka", "warehouse_delta", "postgres_table"}


def test_demo_people_are_fresh_valid_and_cover_the_roles(cat):
    a = make_people(DemoConfig(customers=4, tag="a1b2c3"), cat)
    b = make_people(DemoConfig(customers=4, tag="d4e5f6"), cat)
    assert not {p.subject_id for p in a} & {p.subject_id for p in b}  # re-runnable: new ids per run
    for p in a:
        assert cat.subject_type(p.subject_type).id_regex.fullmatch(p.subject_id), p
    assert [p.role for p in a].count("held") == 1
    assert {p.subject_type for p in a if p.role == "erase"} == {"customer", "employee"}
    rec = partner_record(cat.target("billing_profiles"), a[0])
    assert rec["customer_id"] == a[0].subject_id and a[0].address in rec["billing_address"]


def test_demo_submissions_cover_duplicates_rejections_and_hold(cat):
    demo = Demo.__new__(Demo)  # no stack needed to build the submissions
    demo.cfg = DemoConfig(tag="abcdef")
    demo.catalog = cat
    demo.people = make_people(demo.cfg, cat)
    subs = demo.build_submissions()
    assert [s.expect for s in subs] == [
        "registered",
        "held",
        "duplicate",
        "duplicate",
        "rejected",
        "http_4xx",
    ]
    assert len(subs[0].conf["requests"]) == len(demo.erased_people)
    assert subs[2].conf["external_id"] == subs[0].conf["requests"][0]["external_id"]


def test_short_error_is_one_line():
    text = '{"detail": "Invalid input for param subject_id: \\"x\\" does not match\\n\\nFailed validating \'pattern\'"}'
    assert _short_error(text) == 'Invalid input for param subject_id: "x" does not match'
