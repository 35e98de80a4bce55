"""Issue 18 without services: scrubbing identifiers from evidence, run confs, the CLI's input checks,
and the engines' keyed hash equal to the Python one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from erasure.airflow_metadata import MARK, db_clean_command, scrub_conf
from erasure.identifiers import mask
from erasure.privacy import contains_any, scrub, scrub_text


def test_scrub_masks_every_occurrence_in_nested_evidence_and_keys():
    ev = {
        "verification": {"answer": "GET http://p/subjects/cus_12345678 -> 404"},
        "items": ["cus_12345678", {"cus_12345678": 1}],
        "n": 3,
        "none": None,
    }
    out = scrub(ev, ["cus_12345678"])
    assert not contains_any(out, ["cus_12345678"])
    assert out["verification"]["answer"] == f"GET http://p/subjects/{mask('cus_12345678')} -> 404"
    assert out["items"][1] == {mask("cus_12345678"): 1} and out["n"] == 3 and out["none"] is None
    assert ev["items"][0] == "cus_12345678"  # the input is not changed


def test_scrub_with_a_mapping_is_one_pass_and_longest_first():
    # the replacement contains the other value: a second pass would corrupt it
    m = {"abc": "hmac-sha256:abc0", "abcdef": "hmac-sha256:ffff"}
    assert scrub_text("x abcdef y abc", m) == "x hmac-sha256:ffff y hmac-sha256:abc0"
    assert scrub_text("ab", ["ab"]) == "ab"  # too short to scrub safely


def test_scrub_with_several_values_in_nested_evidence_and_one_value_many_times():
    # several values (a task erased by an e-mail and a customer id): each replaced, the longer one whole
    ev = {"calls": ["DELETE /s/cus_12345678", "GET /s/cus_1234567899?e=ann@example.com"], "k": {1: "x"}}
    out = scrub(ev, ["cus_12345678", "cus_1234567899", "ann@example.com"])
    assert out["calls"][0] == f"DELETE /s/{mask('cus_12345678')}"
    assert out["calls"][1] == f"GET /s/{mask('cus_1234567899')}?e={mask('ann@example.com')}"
    assert out["k"] == {1: "x"}  # non-string keys and untouched strings stay as they are
    # one value (the usual case) replaced at every occurrence
    assert scrub_text("a cus_12345678 b cus_12345678", ["cus_12345678"]) == (
        f"a {mask('cus_12345678')} b {mask('cus_12345678')}"
    )


def test_scrub_conf_drops_personal_keys_also_in_a_batch_and_marks_it():
    conf = {
        "external_id": "x1",
        "subject_type": "customer",
        "subject_id": "cus_1",
        "requests": [{"subject_id": "cus_2", "identifiers": {"email": ["a@b.c"]}, "jurisdiction": "GDPR"}],
    }
    out = scrub_conf(conf)
    assert out == {
        "external_id": "x1",
        "subject_type": "customer",
        "requests": [{"jurisdiction": "GDPR"}],
        MARK: True,
    }
    assert scrub_conf({"count": 1}) == {"count": 1}  # nothing personal: unchanged, not marked


def test_db_clean_never_keeps_an_archive():
    cmd = db_clean_command(["erasure_intake", "erasure_dispatch"], "2026-11-01T00:00:00+00:00")
    assert "--skip-archive" in cmd and "--yes" in cmd
    assert cmd[cmd.index("--dag-ids") + 1] == "erasure_intake,erasure_dispatch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reapply", "--restored-at", "yesterday"], "--restored-at: not an ISO 8601 time"),
        (
            ["reapply", "--restored-at", "2026-11-30T02:00:00Z", "--target", "nope"],
            "--target: not in the catalog",
        ),
        (["reapply", "--record", "--restored-at", "2026-11-30T02:00:00Z"], "--by: who records the restore"),
    ],
)
def test_reapply_cli_names_the_bad_argument(args, message, monkeypatch):
    env = {"ERASURE_TRACKING_DSN": "postgresql://nobody@127.0.0.1:1/none", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "erasure.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_a_minimised_subject_is_found_by_the_same_keyed_hash_everywhere():
    """The Erasure view and ``status --subject`` look a person up by the hash minimisation stored."""
    from pathlib import Path

    from erasure.airflow.ui.model import subject_digest as ui_digest
    from erasure.catalog import load_catalog
    from erasure.identity import IdentityCodec
    from erasure.retention import subject_digest

    cat = load_catalog(Path(__file__).resolve().parents[2] / "include" / "catalog")
    key = bytes(range(32))
    codec = IdentityCodec(bytes(32), key)
    for stype, sid in (("customer", "cus_8f3k2j9xq1"), ("employee", "emp_00123")):
        stored = subject_digest(codec, cat, stype, sid)
        assert stored.startswith("hmac-sha256:") and sid not in stored
        assert ui_digest(cat, key, (stype, sid)) == stored
        assert subject_digest(codec, cat, stype, stored) == stored  # never hashed twice
    assert ui_digest(cat, None, ("customer", "cus_8f3k2j9xq1")) is None
    # the customer id is hashed as its identifier type, like erasure.identity's digests
    assert subject_digest(codec, cat, "customer", "cus_8f3k2j9xq1") == codec.digest(
        "customer_id", "cus_8f3k2j9xq1"
    )
