"""Proof of erasure on the real tracking store: the append-only, hash-chained audit log and signed receipts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime

import psycopg2
import pytest

from erasure.db import transaction
from erasure.evidence import audit, receipts
from erasure.evidence.keys import ReceiptKeys, init_keys, load_jwks
from tests.conftest import ROOT

VERIFIED = {
    "outcome": "verified",
    "verified_at": "2026-11-24T10:00:00+00:00",
    "method": "lookup",
    "answer": "404",
}


def completed_request(dsn: str, *, verification: dict | None = VERIFIED) -> int:
    """A request with two succeeded tasks (evidence carries the verification) completed by reconcile's SQL."""
    from erasure.tracking.request import complete_finished

    with transaction(dsn) as cur:
        cur.execute(
            """
            INSERT INTO erasure.request (external_id, subject_type, subject_id, requested_by, source, status, due_at)
            VALUES (%s, 'customer', %s, 'tests', 'api', 'received', now() + interval '30 days') RETURNING id
            """,
            (f"ext-{uuid.uuid4().hex[:10]}", f"cus_{uuid.uuid4().hex[:12]}"),
        )
        rid = cur.fetchone()["id"]
        for target, kind in (("crm_contacts", "sync_api"), ("marketing_events", "kafka")):
            cur.execute(
                "INSERT INTO erasure.task (request_id, target, kind) VALUES (%s, %s, %s) RETURNING id",
                (rid, target, kind),
            )
            tid = cur.fetchone()["id"]
            evidence = {"http_status": 204, "outcome": "deleted"}
            if verification is not None:
                evidence["verification"] = verification
            cur.execute(
                "UPDATE erasure.task SET status = 'succeeded', completed_at = now(), evidence = %s WHERE id = %s",
                (json.dumps(evidence), tid),
            )
        complete_finished(cur)
    return rid


def cli(*args: str, dsn: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "erasure.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ERASURE_TRACKING_DSN": dsn, **env},
        cwd=ROOT,
        timeout=120,
    )


def test_update_delete_truncate_on_the_audit_log_are_refused(tracking_db):
    completed_request(tracking_db)
    for sql in (
        "UPDATE erasure.event_log SET status = 'forged'",
        "DELETE FROM erasure.event_log",
        "TRUNCATE erasure.event_log CASCADE",
        "DELETE FROM erasure.request",  # events survive their request: no cascade
    ):
        with pytest.raises(psycopg2.Error) as ei, transaction(tracking_db) as cur:
            cur.execute(sql)
        assert "append-only" in str(ei.value) or "foreign key" in str(ei.value), sql
    rep = audit.verify_chain(tracking_db)
    assert rep.ok and rep.events > 0 and rep.first_seq == 1


def test_a_row_altered_behind_the_trigger_is_named_by_audit_verify(tracking_db):
    for _ in range(3):
        completed_request(tracking_db)
    ok = cli("audit", "verify", dsn=tracking_db)
    assert ok.returncode == 0 and ok.stdout.startswith("audit chain OK in tracking store:"), ok
    with transaction(tracking_db) as cur:
        cur.execute(
            "SELECT seq, event_id::text AS id, hash FROM erasure.event_log ORDER BY seq OFFSET 4 LIMIT 1"
        )
        victim = cur.fetchone()
        cur.execute("SET LOCAL session_replication_role = replica")  # triggers off, as an owner could
        cur.execute("UPDATE erasure.event_log SET status = 'failed' WHERE seq = %s", (victim["seq"],))
    for mode in audit.RECOMPUTE:  # the database and Python recomputations name the same link
        rep = audit.verify_chain(tracking_db, batch_size=2, recompute=mode)
        assert not rep.ok and rep.broken.seq == victim["seq"] and rep.broken.event_id == victim["id"], mode
        assert rep.broken.stored == victim["hash"] and rep.broken.problem.startswith("hash does not match")
    bad = cli("audit", "verify", dsn=tracking_db)
    assert bad.returncode == 1
    assert (
        f"seq {victim['seq']} (event {victim['id']}): hash does not match the event's content" in bad.stdout
    )
    assert f"stored {victim['hash']}" in bad.stdout


def test_both_recomputations_agree_with_the_trigger_on_awkward_text(tracking_db):
    """Quotes, backslashes, newlines, control characters, non-ASCII and NULLs: the trigger's hash, the
    database recomputation and the Python one (what the Delta copy is checked with) are the same bytes."""
    rid = completed_request(tracking_db)
    texts = ['q"uote', "back\\slash", "new\nline\ttab", "ctl\u0001\u001f", "é€😀", "", "null"]
    with transaction(tracking_db) as cur:
        for t in texts:
            cur.execute(
                "INSERT INTO erasure.event_log (request_id, target, event_type, status, attempt, details) "
                "VALUES (%s, %s, 'event_replayed', %s, NULL, %s)",
                (rid, t or None, t, json.dumps({"text": t, "nested": {"k": [t, None, 1.5]}})),
            )
    reports = {mode: audit.verify_chain(tracking_db, recompute=mode) for mode in audit.RECOMPUTE}
    assert all(r.ok for r in reports.values()), {m: r.summary() for m, r in reports.items()}
    assert reports["database"].events == reports["python"].events >= len(texts)
    assert reports["database"].last_hash == reports["python"].last_hash
    with pytest.raises(ValueError, match="recompute"):
        audit.verify_chain(tracking_db, recompute="gpu")


def test_deleting_the_newest_events_behind_the_trigger_is_found(tracking_db):
    completed_request(tracking_db)
    with transaction(tracking_db) as cur:
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute("DELETE FROM erasure.event_log WHERE seq = (SELECT max(seq) FROM erasure.event_log)")
    rep = audit.verify_chain(tracking_db)
    assert not rep.ok and "recorded head" in rep.broken.problem


def test_the_chain_stays_linear_under_concurrent_inserts(tracking_db):
    rid = completed_request(tracking_db)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(40):
                with transaction(tracking_db) as cur:
                    for _ in range(3):
                        cur.execute(
                            "INSERT INTO erasure.event_log (request_id, event_type, status, details) "
                            "VALUES (%s, 'event_replayed', 'x', %s)",
                            (rid, json.dumps({"thread": threading.get_ident(), "text": 'q"\n\u00e9\u20ac'})),
                        )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rep = audit.verify_chain(tracking_db)
    assert rep.ok, rep.summary()
    with transaction(tracking_db) as cur:
        cur.execute(
            "SELECT count(*) AS n, max(seq) AS m, count(DISTINCT prev_hash) AS p FROM erasure.event_log"
        )
        row = cur.fetchone()
    assert row["n"] == row["m"] == row["p"] == rep.events and rep.events >= 720


@pytest.fixture
def receipt_keys(tmp_path):
    init_keys(tmp_path / "secrets")
    d = tmp_path / "secrets"
    return ReceiptKeys.from_files(d / "receipt-signing-key.pem", d / "identifier-hmac.key"), d


def test_receipt_is_issued_once_verifies_and_one_changed_byte_does_not(
    tracking_db, receipt_keys, catalog, tmp_path
):
    keys, secrets_dir = receipt_keys
    owners = {t.name: t.owner for t in catalog.targets}
    rid = completed_request(tracking_db)
    unverified = completed_request(tracking_db, verification=None)
    failed = completed_request(tracking_db, verification=dict(VERIFIED, outcome="failed"))
    rep = receipts.issue_receipts(tracking_db, keys, owners=owners)
    assert rep.issued == 1 and set(rep.not_ready) == {unverified, failed}
    assert "verification is missing" in rep.not_ready[unverified]
    assert "verification is failed" in rep.not_ready[failed]
    assert receipts.issue_receipts(tracking_db, keys, owners=owners).issued == 0  # idempotent

    row = receipts.find_receipt(tracking_db, str(rid))
    data = row["document"].encode()
    public = load_jwks(secrets_dir / "receipt-keys.jwks.json")
    res = receipts.verify_receipt(data, public)
    assert res.ok, res.reason
    doc = res.receipt
    assert doc["request"]["id"] == rid
    assert [(t["target"], t["owner"]) for t in doc["targets"]] == [
        ("crm_contacts", "crm"),
        ("marketing_events", "marketing"),
    ]
    assert receipts.check_audit_anchor(tracking_db, doc) is None
    with transaction(tracking_db) as cur:
        cur.execute("SELECT subject_id, external_id FROM erasure.request WHERE id = %s", (rid,))
        ids = cur.fetchone()
        cur.execute(
            "SELECT seq, hash FROM erasure.event_log WHERE request_id = %s ORDER BY seq DESC LIMIT 1", (rid,)
        )
        last = cur.fetchone()
    assert ids["subject_id"] not in row["document"] and ids["external_id"] not in row["document"]
    assert (doc["audit"]["last_event_seq"], doc["audit"]["last_event_hash"]) == (last["seq"], last["hash"])

    env = {
        "ERASURE_RECEIPT_JWKS_FILE": str(secrets_dir / "receipt-keys.jwks.json"),
        "ERASURE_RECEIPTS_DIR": str(tmp_path / "receipts"),
        "ERASURE_DATASET_DIR": str(tmp_path / "datasets"),
    }
    out = cli("receipt", "verify", str(rid), dsn=tracking_db, **env)
    assert out.returncode == 0 and out.stdout.startswith("receipt OK: signature by key"), out
    assert "audit anchor OK" in out.stdout
    exported = cli("receipt", "export", "--files", "--delta", dsn=tracking_db, **env)
    assert exported.returncode == 0, exported
    assert json.loads(exported.stdout) == {"receipts": 1, "files_written": 1, "delta_inserted": 1}
    path = tmp_path / "receipts" / f"{rid}.receipt.json"
    assert path.read_bytes() == data
    from deltalake import DeltaTable

    table = DeltaTable(receipts.receipts_path(tmp_path / "datasets")).to_pyarrow_table()
    assert table["document"].to_pylist() == [row["document"]]
    assert (
        json.loads(cli("receipt", "export", "--delta", dsn=tracking_db, **env).stdout)["delta_inserted"] == 0
    )

    i = data.index(b'"outcome":"succeeded"') + len('"outcome":"su')
    changed = bytearray(data)
    changed[i] = ord("x")
    path.write_bytes(bytes(changed))
    out = cli("receipt", "verify", str(path), dsn=tracking_db, **env)
    assert out.returncode == 1
    assert out.stdout.strip() == (
        "receipt INVALID: signature does not match the receipt's content (altered, or signed by another key)"
    )
    with pytest.raises(psycopg2.Error), transaction(tracking_db) as cur:
        cur.execute("UPDATE erasure.receipt SET document = '{}'")


def test_delta_event_dataset_carries_a_verifiable_chain(spark, tracking_db, catalog, tmp_path):
    from erasure.event_dataset import build_event_dataset, events_path

    for _ in range(3):
        completed_request(tracking_db)
    build_event_dataset(spark, tracking_db, catalog, tmp_path, retention_days=30, apply_retention=False)
    rep = audit.verify_delta(events_path(tmp_path))
    db = audit.verify_chain(tracking_db)
    assert rep.ok, rep.summary()
    assert (rep.events, rep.last_hash) == (db.events, db.last_hash) and rep.first_seq == 1
    out = cli("audit", "verify", "--delta", events_path(tmp_path), dsn=tracking_db)
    assert out.returncode == 0 and out.stdout.startswith(
        f"audit chain OK in Delta table {events_path(tmp_path)}"
    )
    assert datetime.now(UTC)  # keep the import honest


def test_proof_dag_issues_exports_and_fails_on_a_broken_chain(
    tracking_db, receipt_keys, tmp_path, monkeypatch
):
    """The scheduled ``erasure_proof`` DAG: receipts for ready requests, exported as files and Delta,
    the audit chain checked; a link altered behind the trigger fails the run."""
    from airflow.dag_processing.dagbag import DagBag
    from deltalake import DeltaTable

    _keys, secrets_dir = receipt_keys
    monkeypatch.setenv("ERASURE_RECEIPT_SIGNING_KEY_FILE", str(secrets_dir / "receipt-signing-key.pem"))
    monkeypatch.setenv("ERASURE_IDENTIFIER_HMAC_KEY_FILE", str(secrets_dir / "identifier-hmac.key"))
    monkeypatch.setenv("ERASURE_RECEIPTS_DIR", str(tmp_path / "receipts"))
    monkeypatch.setenv("ERASURE_DATASET_DIR", str(tmp_path / "datasets"))
    ready = completed_request(tracking_db)
    completed_request(tracking_db, verification=None)  # not ready: stays without a receipt
    dag = DagBag(dag_folder=str(ROOT / "dags" / "erasure_proof.py")).get_dag("erasure_proof")

    run = dag.test()
    assert run.state == "success"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert {k: ti.state for k, ti in tis.items()} == dict.fromkeys(
        ("issue_receipts", "export_receipts", "verify_audit_chain"), "success"
    )
    issued = tis["issue_receipts"].xcom_pull(task_ids="issue_receipts")
    assert issued["issued"] == 1 and issued["not_ready"] == 1
    assert tis["export_receipts"].xcom_pull(task_ids="export_receipts")["delta_inserted"] == 1
    stored = receipts.find_receipt(tracking_db, str(ready))
    assert (tmp_path / "receipts" / f"{ready}.receipt.json").read_bytes() == stored["document"].encode()
    table = DeltaTable(receipts.receipts_path(tmp_path / "datasets")).to_pyarrow_table()
    assert table["request_id"].to_pylist() == [ready]

    again = dag.test()  # idempotent: nothing new to issue or export
    tis = {ti.task_id: ti for ti in again.get_task_instances()}
    assert again.state == "success"
    assert tis["issue_receipts"].xcom_pull(task_ids="issue_receipts")["issued"] == 0
    assert tis["export_receipts"].xcom_pull(task_ids="export_receipts")["delta_inserted"] == 0

    with transaction(tracking_db) as cur:
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute("UPDATE erasure.event_log SET status = 'failed' WHERE seq = 2")
    broken = dag.test()
    states = {ti.task_id: ti.state for ti in broken.get_task_instances()}
    assert broken.state == "failed" and states["verify_audit_chain"] == "failed", states
