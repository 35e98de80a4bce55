"""Demo HTTP partners: endpoints, runtime faults, and the launcher ``python -m erasure_demo.partners.run``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from erasure_demo.partners.http_service import PartnerServer

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def partner(tmp_path):
    with PartnerServer("billing", tmp_path / "billing.db") as srv:
        yield srv


def test_endpoints(partner):
    u = partner.url
    assert httpx.get(f"{u}/healthz").json()["status"] == "ok"
    r = httpx.post(f"{u}/test-subjects", json={"subject_id": "canary_abc123", "data": {"email": "c@x"}})
    assert r.status_code == 201 and r.json()["is_test"] is True
    assert httpx.get(f"{u}/subjects/canary_abc123").json()["data"] == {"email": "c@x"}
    assert httpx.get(f"{u}/subjects/nobody").status_code == 404
    assert httpx.post(f"{u}/test-subjects", json={"data": {}}).status_code == 400
    assert httpx.post(f"{u}/test-subjects", content=b"not json").status_code == 400

    assert httpx.post(f"{u}/admin/seed", json={"count": 5, "prefix": "cus_", "start": 10}).json() == {
        "seeded": 5
    }
    assert httpx.get(f"{u}/subjects/cus_00000012").status_code == 200
    assert httpx.post(f"{u}/admin/seed", json={}).status_code == 400

    d = httpx.delete(f"{u}/subjects/cus_00000012", headers={"Idempotency-Key": "k-12"})
    assert d.status_code == 200 and d.headers["X-Request-Id"] == d.json()["deletion_id"]
    assert httpx.get(f"{u}/subjects/cus_00000012").status_code == 404
    assert httpx.delete(f"{u}/subjects/cus_00000012").status_code == 404
    log = httpx.get(f"{u}/admin/deletions", params={"subject_id": "cus_00000012"}).json()["deletions"]
    assert [(x["existed"], x["idempotency_key"]) for x in log] == [(1, "k-12"), (0, None)]
    stats = httpx.get(f"{u}/admin/stats").json()
    assert stats["subjects"] == 5 and stats["responses"]["404"] >= 2


def test_runtime_faults(partner):
    u = partner.url
    httpx.post(f"{u}/admin/seed", json={"subject_ids": ["cus_a", "cus_b"]})
    assert httpx.put(f"{u}/admin/faults", json={"nope": 1}).status_code == 400
    assert httpx.put(f"{u}/admin/faults", json={"error_rate": 5}).status_code == 400

    # silent delete failure: answers like a real delete but keeps the data (the canary's case)
    httpx.put(f"{u}/admin/faults", json={"silent_delete_failure": True})
    r = httpx.delete(f"{u}/subjects/cus_a")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert httpx.get(f"{u}/subjects/cus_a").status_code == 200
    assert httpx.get(f"{u}/admin/deletions").json()["deletions"] == []

    httpx.delete(f"{u}/admin/faults")
    httpx.put(f"{u}/admin/faults", json={"latency_ms": 200})
    t0 = time.monotonic()
    assert httpx.get(f"{u}/subjects/cus_a").status_code == 200
    assert time.monotonic() - t0 >= 0.2

    httpx.put(f"{u}/admin/faults", json={"latency_ms": 0, "error_rate": 1.0, "error_status": 500})
    assert httpx.delete(f"{u}/subjects/cus_b").status_code == 500
    assert httpx.get(f"{u}/subjects/cus_b").status_code == 500  # the fault hit before any delete

    httpx.put(f"{u}/admin/faults", json={"error_rate": 0, "rate_limit_per_s": 1, "retry_after_s": 2})
    codes = [httpx.get(f"{u}/subjects/cus_b") for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 429, 429] and codes[1].headers["Retry-After"] == "2"

    httpx.put(f"{u}/admin/faults", json={"rate_limit_per_s": None, "down": True})
    assert httpx.get(f"{u}/healthz").status_code == 503
    with pytest.raises(httpx.TransportError):
        httpx.delete(f"{u}/subjects/cus_b")
    assert httpx.get(f"{u}/admin/faults").json()["down"] is True  # admin still answers
    httpx.put(f"{u}/admin/faults", json={"down": False})
    assert httpx.delete(f"{u}/subjects/cus_b").status_code == 200


def _wait_ok(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "launcher exited early"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def test_launcher_serves_catalog_partners_and_survives_restart(tmp_path):
    ports = {"crm": free_port(), "billing": free_port()}
    index = free_port()
    targets = [
        {"name": n, "kind": "sync_api", "owner": "crm", "subject_types": ["customer"], "identity_key": "customer_id",
         "sync_api": {"base_url": f"http://127.0.0.1:{p}", "delete_path": "/v1/people/{subject_id}"}}
        for n, p in ports.items()
    ] + [
        {"name": "marketing", "kind": "kafka", "owner": "crm", "subject_types": ["customer"],
         "identity_key": "customer_id", "kafka": {"topic": "erasure.events"}},
    ]  # fmt: skip
    cat = tmp_path / "catalog.yaml"
    cat.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "pipeline_owner": "crm",
                "subject_types": [{"name": "customer"}],
                "teams": [{"name": "crm"}],
                "targets": targets,
            }
        )  # fmt: skip
    )
    cmd = [sys.executable, "-m", "erasure_demo.partners.run", "--catalog", str(cat),
           "--data-dir", str(tmp_path / "data"), "--index-port", str(index)]  # fmt: skip
    log = tmp_path / "partners.log"

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, env=os.environ.copy())

    proc = start()
    try:
        _wait_ok(f"http://127.0.0.1:{index}/", proc)
        listing = httpx.get(f"http://127.0.0.1:{index}/").json()
        assert set(listing["http"]) == {"crm", "billing"}
        crm = f"http://127.0.0.1:{ports['crm']}"
        httpx.post(f"{crm}/admin/seed", json={"subject_ids": ["cus_1", "cus_2"]}).raise_for_status()
        assert httpx.delete(f"{crm}/v1/people/cus_1").status_code == 200  # catalog's delete_path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

        proc = start()  # the stores live on disk: same data after a restart
        _wait_ok(f"{crm}/healthz", proc)
        assert httpx.get(f"{crm}/subjects/cus_2").status_code == 200
        assert httpx.get(f"{crm}/subjects/cus_1").status_code == 404
        assert (tmp_path / "data" / "crm.db").exists() and (tmp_path / "data" / "billing.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "partner crm serving on" in text
    assert "kafka" in text.lower()  # started the Kafka partner, or said why not


def test_launcher_bad_catalog_fails_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [{name: X}]\n")
    r = subprocess.run([sys.executable, "-m", "erasure_demo.partners.run", "--catalog", str(bad), "--index-port", "0"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "invalid catalog" in r.stderr and "target 'X'" in r.stderr
