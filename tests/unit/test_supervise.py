"""scripts/supervise.py: restarts with back-off, counts restarts, appends and rotates its log, stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SUPERVISE = Path(__file__).resolve().parents[2] / "scripts" / "supervise.py"


def _state(path: Path) -> dict[str, str]:
    try:
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except FileNotFoundError:
        return {}


def _start(tmp_path: Path, *command: str, **opts: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(SUPERVISE), "--name", "svc", "--log", str(tmp_path / "svc.log"),
            "--state", str(tmp_path / "svc.state")]  # fmt: skip
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", v]
    return subprocess.Popen([*args, "--", *command], start_new_session=True)


def _wait(cond, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_crashing_child_is_restarted_with_growing_back_off_and_the_log_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("line from an earlier run\n")
    sup = _start(tmp_path, "sh", "-c", "echo child output; exit 3", min_backoff="0.1", max_backoff="0.4")
    try:
        _wait(lambda: int(_state(tmp_path / "svc.state").get("restarts") or 0) >= 4)
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 0
    text = log.read_text()
    assert text.startswith("line from an earlier run\n")  # appended, never truncated
    assert text.count("child output") >= 4
    waits = [float(w) for w in re.findall(r"restarting in ([0-9.]+)s", text)]
    assert waits[:4] == [0.1, 0.2, 0.4, 0.4]  # doubling, capped
    assert "svc: exited (3)" in text and "svc: restarted (restart 1)" in text
    st = _state(tmp_path / "svc.state")
    assert st["state"] == "stopped" and st["last_exit"] == "3"


def test_a_killed_child_comes_back_and_a_stop_ends_the_child(tmp_path: Path) -> None:
    sup = _start(tmp_path, "sleep", "300", min_backoff="0.1")
    try:
        _wait(lambda: _state(tmp_path / "svc.state").get("child_pid", "") != "")
        first = int(_state(tmp_path / "svc.state")["child_pid"])
        os.kill(first, signal.SIGKILL)
        _wait(lambda: _state(tmp_path / "svc.state").get("restarts") == "1"
              and _state(tmp_path / "svc.state").get("state") == "running")  # fmt: skip
        st = _state(tmp_path / "svc.state")
        assert st["last_exit"] == "signal SIGKILL" and int(st["child_pid"]) != first
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 0
    second = int(st["child_pid"])
    _wait(
        lambda: (
            not Path(f"/proc/{second}").exists() or "Z" in Path(f"/proc/{second}/stat").read_text().split()[2]
        )
    )
    assert "svc: stopped" in (tmp_path / "svc.log").read_text()


def test_the_log_is_rotated_by_size(tmp_path: Path) -> None:
    script = "for i in 1 2 3 4 5 6; do head -c 600 /dev/zero | tr '\\0' x; echo; sleep 0.1; done; sleep 300"
    sup = _start(tmp_path, "sh", "-c", script, max_bytes="1000", backups="2")
    try:
        _wait(lambda: (tmp_path / "svc.log.2").exists())
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(20)
    assert (tmp_path / "svc.log.1").stat().st_size >= 1000 and (tmp_path / "svc.log.2").stat().st_size >= 1000
    assert not (tmp_path / "svc.log.3").exists()  # two backups kept
    total = sum((tmp_path / n).read_text().count("x" * 600) for n in ("svc.log", "svc.log.1", "svc.log.2"))
    assert total >= 3
