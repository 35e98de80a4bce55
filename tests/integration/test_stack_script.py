"""scripts/stack.sh: running it again is harmless, a busy port or a missing tool gives a clear message."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STACK = str(ROOT / "scripts" / "stack.sh")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", STACK, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_setup_and_up_twice_are_harmless():
    first = run("setup")
    assert first.returncode == 0, first.stderr
    up = run("up", "postgres", "kafka")
    assert up.returncode == 0, up.stderr
    assert "postgres already running" in up.stderr and "kafka already running" in up.stderr
    status = run("status")
    assert "postgres   running" in status.stdout and "kafka      running" in status.stdout


def _private_local(tmp_path: Path) -> dict[str, str]:
    """An ERASURE_LOCAL of its own that reuses the installed venv and jars (nothing shared is touched)."""
    local = tmp_path / "local"
    local.mkdir()
    real = Path(os.environ["ERASURE_LOCAL"])
    for name in ("venv", "jars", "secrets.env"):
        (local / name).symlink_to(real / name)
    (local / "kafka").mkdir()
    (local / "kafka" / "libs").symlink_to(real / "kafka" / "libs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ERASURE_"))}
    env["ERASURE_LOCAL"] = str(local)
    return env


def test_port_in_use_is_reported(tmp_path):
    env = _private_local(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env["ERASURE_KAFKA_PORT"] = str(port)
        env["ERASURE_KAFKA_CONTROLLER_PORT"] = str(port + 1 if port < 65000 else port - 1)
        out = run("up", "kafka", env=env, timeout=60)
    assert out.returncode != 0
    assert f"port {port} (needed by kafka) is already in use" in out.stderr


def test_missing_tool_is_reported(tmp_path):
    env = _private_local(tmp_path)
    os.unlink(Path(env["ERASURE_LOCAL"]) / "jars")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in (
        "bash",
        "dirname",
        "cat",
        "mkdir",
        "id",
        "ls",
        "sort",
        "tail",
        "python3.11",
        "sha256sum",
        "cut",
        "grep",
    ):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    env["PATH"] = str(bindir)  # java is there on the machine, mvn is not on this PATH
    out = subprocess.run(
        [shutil.which("bash"), STACK, "setup"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode != 0
    assert "missing tool" in out.stderr and ("'mvn'" in out.stderr or "'java'" in out.stderr)


def test_unknown_service_is_reported():
    out = run("up", "mongodb")
    assert out.returncode != 0 and "unknown service 'mongodb'" in out.stderr


def test_status_sees_postgres_under_a_minimal_path():
    """cron and `env -i` give PATH=/usr/bin:/bin; as root, Postgres is run through runuser (in sbin).
    Without sbin the script once said "postgres stopped" for a running server and could not stop it."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    status = run("status", env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "postgres   running" in status.stdout
