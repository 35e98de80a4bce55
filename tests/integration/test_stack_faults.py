"""Faults on a real stack of its own: supervised processes come back by themselves, the pipeline finishes.

Every test here starts a PRIVATE stack (own ``ERASURE_LOCAL`` that reuses the installed venv and jars, own
ports below the ephemeral range) and stops it at the end: the shared stack is never touched.

* fast (``make test``): a killed process is restarted by its supervisor and ``stack.sh status`` shows the
  restart; an HTTP partner restarted after a delete answers the retried idempotency key with "deleted".
* slow (``@pytest.mark.faults``, ``make test-faults``, ~7 min): PostgreSQL restarted under a running stack,
  then a request completes with no manual step; the Kafka broker killed and left down for 3 minutes, then
  the pipeline completes on its own and the Kafka partner did not crash-loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest
import yaml

from erasure_demo.airflow_client import AirflowApi

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STACK = str(ROOT / "scripts" / "stack.sh")


class PrivateStack:
    """``scripts/stack.sh`` on an ERASURE_LOCAL and ports of its own."""

    def __init__(self, base: Path, port_base: int, catalog: Path | None = None) -> None:
        local = base / "local"
        local.mkdir(parents=True)
        real = Path(os.environ["ERASURE_LOCAL"])
        for name in ("venv", "jars", "secrets.env"):
            (local / name).symlink_to(real / name)
        (local / "kafka").mkdir()
        (local / "kafka" / "libs").symlink_to(real / "kafka" / "libs")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ERASURE_"))}
        env.update(
            ERASURE_LOCAL=str(local),
            ERASURE_PG_PORT=str(port_base + 432),
            ERASURE_KAFKA_PORT=str(port_base + 92),
            ERASURE_KAFKA_CONTROLLER_PORT=str(port_base + 93),
            ERASURE_AIRFLOW_PORT=str(port_base + 80),
            ERASURE_PARTNER_PORT_BASE=str(port_base + 100),
            ERASURE_SUPERVISE_MAX_BACKOFF="10",
        )
        if catalog is not None:
            env["ERASURE_CATALOG"] = str(catalog)
        self.local = local
        self.base_env = env
        # the full environment the stack's processes see (scripts/env.sh on top of the private settings)
        out = subprocess.run(
            ["bash", "-c", f". {ROOT}/scripts/env.sh && env -0"], env=env, capture_output=True, check=True
        )
        self.env = dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)

    def run(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", STACK, *args], capture_output=True, text=True, env=self.base_env, timeout=timeout
        )

    def up(self, *services: str) -> None:
        r = self.run("up", *services)
        assert r.returncode == 0, r.stderr

    def status(self) -> str:
        return self.run("status", timeout=60).stdout

    def state(self, name: str) -> dict[str, str]:
        path = self.local / "run" / f"{name}.state"
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    def wait_state(self, name: str, restarts: int, timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(name)
            if st["state"] == "running" and int(st["restarts"]) >= restarts:
                return st
            assert time.monotonic() < deadline, f"{name} not running again with {restarts} restarts: {st}"
            time.sleep(0.5)

    def log(self, name: str) -> str:
        return (self.local / "logs" / name).read_text(errors="replace")

    def down(self) -> None:
        r = self.run("down")
        assert r.returncode == 0, r.stderr


def _wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout}s"
        time.sleep(0.3)


# ============================================================================ fast: partners only
@pytest.fixture(scope="module")
def partners_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    # Kafka is not started on this stack: its Kafka partners wait for a broker that never comes
    stack = PrivateStack(tmp_path_factory.mktemp("faults-fast"), 26200)
    try:
        stack.up("partners")
        yield stack
    finally:
        stack.down()
    assert "partners" not in stack.run("status").stdout.replace("partners   stopped", "")


def test_a_killed_process_is_restarted_and_status_shows_it(partners_stack: PrivateStack) -> None:
    st = partners_stack.state("partners")
    assert st["state"] == "running" and st["restarts"] == "0"
    assert re.search(r"^partners   running  \(pid \d+, restarts 0\)$", partners_stack.status(), re.M)

    os.kill(int(st["child_pid"]), signal.SIGKILL)
    again = partners_stack.wait_state("partners", restarts=1)
    assert again["child_pid"] != st["child_pid"] and again["last_exit"] == "signal SIGKILL"
    assert re.search(
        rf"^partners   running  \(pid {again['child_pid']}, restarts 1\)$", partners_stack.status(), re.M
    )
    _wait_http(partners_stack.env["ERASURE_PARTNER_CRM_URL"] + "/healthz")

    # `up` again is harmless; the log kept the first run's lines (appended, not truncated)
    r = partners_stack.run("up", "partners")
    assert r.returncode == 0 and "partners already running" in r.stderr
    log = partners_stack.log("partners.log")
    assert log.count("partner crm_contacts serving on") == 2
    assert "partners: exited (signal SIGKILL)" in log and "partners: restarted (restart 1)" in log


def test_http_partner_restarted_after_a_delete_replays_the_key(partners_stack: PrivateStack) -> None:
    """The partner erased the subject, then crashed before its answer reached the pipeline: the retry
    with the same idempotency key gets the original outcome ("deleted"), not "already gone"."""
    crm = partners_stack.env["ERASURE_PARTNER_CRM_URL"]
    _wait_http(f"{crm}/healthz")
    sid, key = f"cus_{uuid.uuid4().hex[:12]}", f"idem-{uuid.uuid4().hex}"
    httpx.post(f"{crm}/admin/seed", json={"subject_ids": [sid]}).raise_for_status()
    first = httpx.delete(f"{crm}/subjects/{sid}", headers={"Idempotency-Key": key})
    assert first.status_code == 200 and first.json()["deleted"] is True  # this answer is "lost"

    before = partners_stack.state("partners")
    os.kill(int(before["child_pid"]), signal.SIGKILL)  # the crash
    partners_stack.wait_state("partners", restarts=int(before["restarts"]) + 1)
    _wait_http(f"{crm}/healthz")

    retry = httpx.delete(f"{crm}/subjects/{sid}", headers={"Idempotency-Key": key})
    assert retry.status_code == 200, retry.text
    body = retry.json()
    assert body["deleted"] is True and body["replayed"] is True
    assert body["deletion_id"] == first.json()["deletion_id"] == retry.headers["X-Request-Id"]
    other = httpx.delete(f"{crm}/subjects/{sid}", headers={"Idempotency-Key": f"{key}-other"})
    assert other.status_code == 404 and other.json()["deleted"] is False  # a new key: already gone

    # the Kafka partners wait for their (absent) broker without crash-looping or flooding the log
    log = partners_stack.log("partners.log")
    assert "consumer exited with" not in log
    assert log.count("Connection refused") < 20, log[-3000:]


# ============================================================================ slow: the whole pipeline
WORK_DAGS = ("erasure_dispatch", "erasure_acks", "erasure_reconcile")


def _catalog_without_warehouse(dst: Path) -> Path:
    """The demo catalog less its Spark targets (their erasure is not what these faults are about)."""
    dst.mkdir()
    for f in (ROOT / "include" / "catalog").glob("*.yaml"):
        data = yaml.safe_load(f.read_text())
        if isinstance(data, dict) and "targets" in data:
            data["targets"] = [t for t in data["targets"] if t.get("kind") != "warehouse_delta"]
        (dst / f.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


@pytest.fixture(scope="module")
def full_stack() -> Iterator[PrivateStack]:
    # not under pytest's tmp dir (mode 0700): PostgreSQL runs as its own OS user and must reach its files
    base = Path(tempfile.mkdtemp(prefix="erasure-faults-"))
    base.chmod(0o755)
    stack = PrivateStack(base, 26000, catalog=_catalog_without_warehouse(base / "catalog"))
    try:
        stack.up("postgres", "kafka", "airflow", "partners")
        api = _api(stack)
        for d in WORK_DAGS:
            api.wait_for_dag(d, timeout=300)
            api.unpause(d)
        yield stack
    finally:
        stack.down()
    shutil.rmtree(base, ignore_errors=True)


def _api(stack: PrivateStack) -> AirflowApi:
    pw = json.loads(Path(stack.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())["admin"]
    return AirflowApi(stack.env["AIRFLOW__API__BASE_URL"], "admin", pw)


def _submit(stack: PrivateStack) -> str:
    """A request through the intake CLI (no Airflow); returns the subject id."""
    sid = f"cus_{uuid.uuid4().hex[:12]}"
    r = subprocess.run(
        [stack.env["ERASURE_VENV"] + "/bin/python", "-m", "erasure.cli", "intake", "submit",
         "--subject-type", "customer", "--subject-id", sid, "--requested-by", "faults-test",
         "--external-id", f"faults-{sid}", "--jurisdiction", "GDPR"],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return sid


def _request(stack: PrivateStack, sid: str) -> tuple[str, dict[str, str]]:
    with psycopg2.connect(stack.env["ERASURE_TRACKING_DSN"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, status FROM erasure.request WHERE subject_id = %s", (sid,))
        rid, status = cur.fetchone()
        cur.execute("SELECT target, status FROM erasure.task WHERE request_id = %s", (rid,))
        tasks = dict(cur.fetchall())
    conn.close()
    return status, tasks


def _drive_until_completed(stack: PrivateStack, sid: str, timeout: float = 900) -> dict[str, str]:
    """Trigger the work DAGs round after round (what their schedules do) until the request completes."""
    api = _api(stack)
    deadline = time.monotonic() + timeout
    while True:
        for d in WORK_DAGS:
            r = api.trigger(d, run_id=f"faults_{d}_{uuid.uuid4().hex[:8]}")
            assert r.status_code < 300, r.text
            api.wait_for_run(d, r.json()["dag_run_id"], timeout=600)
        status, tasks = _request(stack, sid)
        if status == "completed":
            return tasks
        assert time.monotonic() < deadline, f"request of {sid} still {status}: {tasks}"
        time.sleep(10)


@pytest.mark.faults
@pytest.mark.timeout(2400)
def test_postgres_restart_then_a_request_completes_without_a_person(full_stack: PrivateStack) -> None:
    before = {c: int(full_stack.state(f"airflow-{c}")["restarts"]) for c in ("scheduler", "triggerer")}
    r = full_stack.run("down", "postgres")
    assert r.returncode == 0, r.stderr
    time.sleep(15)  # the scheduler, dag-processor and triggerer lose their DB and exit
    full_stack.up("postgres")

    sid = _submit(full_stack)  # nobody restarts Airflow: its supervisors do
    tasks = _drive_until_completed(full_stack, sid)
    assert set(tasks.values()) == {"succeeded"}, tasks
    after = {c: full_stack.wait_state(f"airflow-{c}", restarts=0) for c in ("scheduler", "triggerer")}
    assert any(int(after[c]["restarts"]) > before[c] for c in before), after  # they did die and come back
    assert "restarts" in full_stack.status()


@pytest.mark.faults
@pytest.mark.timeout(2400)
def test_kafka_down_for_three_minutes_then_the_pipeline_completes(full_stack: PrivateStack) -> None:
    sid = _submit(full_stack)
    log_before = len(full_stack.log("partners.log"))
    st = full_stack.state("kafka")
    os.kill(int(st["supervisor_pid"]), signal.SIGKILL)  # broker and its supervisor killed: it stays down
    os.kill(int(st["child_pid"]), signal.SIGKILL)
    down_at = time.monotonic()
    api = _api(full_stack)
    # dispatch while it is down: the publish task waits for the broker (and is retried); not waited for here
    r = api.trigger("erasure_dispatch", run_id=f"faults_dispatch_{uuid.uuid4().hex[:8]}")
    assert r.status_code < 300, r.text
    time.sleep(max(0.0, 180 - (time.monotonic() - down_at)))
    full_stack.up("kafka")

    tasks = _drive_until_completed(full_stack, sid)
    assert set(tasks.values()) == {"succeeded"}, tasks
    outage_log = full_stack.log("partners.log")[log_before:]
    assert "consumer exited with" not in outage_log, outage_log[-3000:]  # no crash loop
    assert outage_log.count("Connection refused") < 60, outage_log[-3000:]  # a quiet log
    assert full_stack.state("partners")["restarts"] == "0"
