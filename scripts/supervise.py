"""Keep one process of the local stack running: restart it when it exits, with exponential back-off.

    python scripts/supervise.py --name NAME --log FILE --state FILE [options] -- COMMAND [ARG...]

``scripts/stack.sh`` starts one supervisor per long-running process (PostgreSQL, Kafka, each Airflow
component, the demo partners) and keeps the supervisor's PID in ``.local/run/<name>.pid``.

* The child runs in its own process group. When it exits for any reason other than a stop, it is started
  again after a back-off that doubles from ``--min-backoff`` up to ``--max-backoff`` seconds and falls
  back to the minimum once a child has stayed up ``--healthy-after`` seconds. It never gives up: after a
  long outage of what the child needs (the metadata DB of Airflow's scheduler) it comes back by itself.
* The child's stdout and stderr are appended to ``--log``; a log over ``--max-bytes`` is rotated to
  ``FILE.1`` … ``FILE.<backups>``. Nothing is ever truncated, so the output of a crash survives the
  restart. Every start and exit is written to the log as a ``[supervise]`` line.
* ``--state`` (``key=value`` lines, rewritten atomically) holds the state, the child's PID, the number of
  restarts and the last exit; ``stack.sh status`` prints it.
* SIGTERM/SIGINT stop the supervisor: the child's process group gets ``--stop-signal`` (SIGINT for
  PostgreSQL's fast shutdown), then SIGKILL after ``--stop-timeout`` seconds.

Only the standard library: it runs before and without the project's virtualenv.
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RotatingLog:
    """Append-only log file, rotated to ``.1`` … ``.N`` by size; never truncated."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for the supervisor's lifetime

    def write(self, data: bytes) -> None:
        with self.lock:
            self.f.write(data)
            if self.max_bytes and self.f.tell() >= self.max_bytes:
                self._rotate()

    def note(self, name: str, msg: str) -> None:
        self.write(f"[supervise] {_now()} {name}: {msg}\n".encode())

    def _rotate(self) -> None:
        self.f.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:  # no backups wanted: start a new file, the old one is removed only now that it is full
            self.path.unlink()
        self.f = open(self.path, "ab", buffering=0)  # noqa: SIM115


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.log = RotatingLog(Path(args.log), args.max_bytes, args.backups)
        self.state_path = Path(args.state)
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_exit = ""
        self.last_exit_at = ""

    def write_state(self, state: str, next_start: float | None = None) -> None:
        child = self.child.pid if self.child is not None and self.child.poll() is None else ""
        lines = {
            "name": self.a.name,
            "state": state,
            "supervisor_pid": os.getpid(),
            "child_pid": child,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "next_start_at": datetime.fromtimestamp(next_start, UTC).strftime("%H:%M:%SZ")
            if next_start
            else "",
            "log": self.a.log,
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        tmp.replace(self.state_path)

    def _pump(self, stream: object) -> None:
        fd = stream.fileno()  # type: ignore[attr-defined]
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.log.write(chunk)

    def _spawn(self) -> subprocess.Popen[bytes]:
        kw: dict[str, object] = {}
        if self.a.user:
            pw = pwd.getpwnam(self.a.user)
            kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        return subprocess.Popen(  # noqa: S603 - the command stack.sh gave
            self.a.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.a.cwd,
            **kw,  # type: ignore[arg-type]
        )

    def stop(self, *_: object) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, self.a.stop_signal)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        backoff = self.a.min_backoff
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.child = self._spawn()
            except OSError as exc:
                self.log.note(self.a.name, f"cannot start {self.a.command[0]}: {exc}")
                code: int | str = f"not started ({exc.strerror})"
            else:
                what = "started" if self.restarts == 0 else f"restarted (restart {self.restarts})"
                self.log.note(self.a.name, f"{what}, pid {self.child.pid}: {' '.join(self.a.command)}")
                self.write_state("running")
                pump = threading.Thread(target=self._pump, args=(self.child.stdout,), daemon=True)
                pump.start()
                if self.stopping.is_set():  # a stop that came while spawning
                    self.stop()
                while True:
                    try:
                        rc = self.child.wait()
                        break
                    except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
                        continue
                pump.join(5)
                code = rc if rc >= 0 else f"signal {signal.Signals(-rc).name}"
            ran = time.monotonic() - started
            if self.stopping.is_set():
                self.log.note(self.a.name, f"stopped (exit {code})")
                break
            if ran >= self.a.healthy_after:
                backoff = self.a.min_backoff
            self.restarts += 1
            self.last_exit, self.last_exit_at = f"{code}", _now()
            self.log.note(self.a.name, f"exited ({code}) after {ran:.1f}s; restarting in {backoff:g}s")
            self.write_state("backoff", time.time() + backoff)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, self.a.max_backoff)
        self._kill_leftovers()
        self.write_state("stopped")
        return 0

    def _kill_leftovers(self) -> None:
        child = self.child
        if child is None:
            return
        deadline = time.monotonic() + self.a.stop_timeout
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        for sig in (signal.SIGKILL,):  # the child, or what its group left behind
            try:
                os.killpg(child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if child.poll() is None:
            child.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--user", help="run the child as this OS user (the supervisor must be root)")
    p.add_argument("--cwd", default=None)
    p.add_argument(
        "--min-backoff", type=float, default=float(os.environ.get("ERASURE_SUPERVISE_MIN_BACKOFF", "1"))
    )
    p.add_argument(
        "--max-backoff", type=float, default=float(os.environ.get("ERASURE_SUPERVISE_MAX_BACKOFF", "30"))
    )
    p.add_argument("--healthy-after", type=float, default=60.0)
    p.add_argument("--stop-signal", type=lambda s: signal.Signals[s if s.startswith("SIG") else f"SIG{s}"],
                   default=signal.SIGTERM)  # fmt: skip
    p.add_argument("--stop-timeout", type=float, default=30.0)
    p.add_argument("--max-bytes", type=int, default=50 * 1024 * 1024)
    p.add_argument("--backups", type=int, default=3)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("no command given (after --)")
    return Supervisor(args).run()


if __name__ == "__main__":
    sys.exit(main())
