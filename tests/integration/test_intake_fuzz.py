"""Property-based fuzzing of intake against the real tracking store (hypothesis, >= 2,000 payloads a run).

Invariants, whatever arrives: nothing raises; received = registered + duplicates + rejected; every
rejection names a field; the store holds one request row per registration and one rejected_request row
per rejection (so nothing is half-written or lost)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erasure.intake import FIELDS, register_requests
from erasure.vocab import IntakeStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]

BATCH = 50
EXAMPLES = 45  # 45 x 50 = 2,250 payloads per run

weird_floats = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5])
weird_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=None, exclude_characters=None), max_size=40
) | st.sampled_from(["", " ", "\x00", "\ud800", "a\u202eb", "x" * 300, "emp_\n123", "cus_\u200babcd"])
scalar = (
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | weird_floats | weird_text
)
junk = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=4),
    max_leaves=8,
)

valid_customer = st.from_regex(r"\Acus_[A-Za-z0-9]{4,12}\Z")
valid_employee = st.from_regex(r"\Aemp_[0-9]{3,8}\Z")


@st.composite
def requests(draw) -> object:
    """Mostly well-formed requests with some fields broken, sometimes junk of any shape."""
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)
    st_name = draw(st.sampled_from(["customer", "employee", "robot"]))
    subject = draw(valid_employee if st_name == "employee" else valid_customer)
    payload: dict[object, object] = {
        "subject_type": st_name,
        "subject_id": subject,
        "requested_by": draw(st.sampled_from(["fuzz", "privacy desk", "dpo@example.com"])),
    }
    if draw(st.booleans()):
        payload["external_id"] = draw(st.from_regex(r"\Afz-[a-z0-9]{1,10}\Z"))
    if draw(st.booleans()):
        payload["reason"] = draw(weird_text)
    if draw(st.booleans()):
        payload["jurisdiction"] = draw(st.sampled_from(["GDPR", "CCPA", "XX"]))
    for _ in range(draw(st.integers(0, 2))):  # break a field, or add an unknown one
        key = draw(st.sampled_from([*FIELDS, "colour", "", 7]))
        payload[key] = draw(junk)
    return payload


def _counts(dsn: str) -> tuple[int, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM erasure.request), (SELECT count(*) FROM erasure.rejected_request)"
        )
        return cur.fetchone()


def test_intake_never_raises_and_accounts_for_every_payload(tracking_db: str, catalog) -> None:
    seen = {"payloads": 0, "rejected": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(requests(), min_size=BATCH, max_size=BATCH))
    def run(batch: list[object]) -> None:
        before = _counts(tracking_db)
        result = register_requests(tracking_db, catalog, batch, "api")
        after = _counts(tracking_db)
        assert result.received == len(batch) == result.registered + result.duplicates + result.rejected
        assert result.consistent
        for o in result.outcomes:
            if o.status == IntakeStatus.REJECTED:
                assert o.errors and all(e["field"] and e["problem"] for e in o.errors), o
        assert after[0] - before[0] == result.registered
        assert after[1] - before[1] == result.rejected
        seen["payloads"] += len(batch)
        seen["rejected"] += result.rejected

    run()
    assert seen["payloads"] >= 2000
    assert 0 < seen["rejected"] < seen["payloads"]  # the generator exercised both ways


def test_non_finite_numbers_are_refused_naming_the_field(tracking_db: str, catalog) -> None:
    batch = [
        {"subject_type": "customer", "subject_id": "cus_nan1", "requested_by": "t", "reason": math.nan},
        {
            "subject_type": "customer",
            "subject_id": "cus_inf1",
            "requested_by": "t",
            "extra": {"x": [math.inf]},
        },
        {"subject_type": "customer", "subject_id": "cus_fine1", "requested_by": "t"},
    ]
    res = register_requests(tracking_db, catalog, batch, "api")
    assert [o.status for o in res.outcomes] == [
        IntakeStatus.REJECTED,
        IntakeStatus.REJECTED,
        IntakeStatus.REGISTERED,
    ]
    assert {e["field"] for e in res.outcomes[0].errors} >= {"reason"}
    assert "non-finite" in res.outcomes[0].message
    assert "extra.x[0]" in {e["field"] for e in res.outcomes[1].errors}
    with psycopg2.connect(tracking_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT payload FROM erasure.rejected_request ORDER BY id")
        stored = [r[0] for r in cur.fetchall()]
    assert stored[0]["reason"] == "<nan>"  # stored, as a marker jsonb can hold
    assert stored[1]["extra"] == {"x": "<array>"}  # nested deeper than the kept depth: named by type


def test_cli_refuses_non_finite_numbers(tracking_db: str, tmp_path: Path) -> None:
    """The CLI's JSON reader accepts NaN (Python's json does): intake still refuses it, naming the field."""
    f = tmp_path / "req.json"
    f.write_text(
        '{"subject_type": "customer", "subject_id": "cus_clinan", "requested_by": "t", "reason": NaN}'
    )
    env = {"ERASURE_TRACKING_DSN": tracking_db}
    proc = subprocess.run(
        [sys.executable, "-m", "erasure.cli", "intake", "submit", "--file", str(f)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr  # some requests were rejected
    out = proc.stdout + proc.stderr
    assert "reason" in out and "non-finite" in out
    assert "Traceback" not in out
    with psycopg2.connect(tracking_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT errors FROM erasure.rejected_request")
        (errors,) = cur.fetchone()
    assert any(e["field"] == "reason" for e in errors)
    json.dumps(errors)
