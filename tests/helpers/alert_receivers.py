"""Real local receivers for alert tests: an HTTP webhook server and a minimal SMTP server (threads).

Both bind 127.0.0.1 on a free port, record what they receive, and stop when the context exits.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class WebhookReceiver:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    """Answer HTTP 500 to this many upcoming POSTs (counted down), then 200."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                p["body"]
                for p in self.posts
                if p["status"] == 200 and (kind is None or p["body"]["kind"] == kind)
            ]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    state: dict[str, WebhookReceiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            rec = state["rec"]
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rec.lock:
                status = 500 if rec.fail_next > 0 else 200
                if rec.fail_next > 0:
                    rec.fail_next -= 1
                rec.posts.append(
                    {
                        "path": self.path,
                        "status": status,
                        "idempotency_key": self.headers.get("Idempotency-Key"),
                        "body": json.loads(raw or b"{}"),
                    }
                )
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["rec"] = WebhookReceiver(url=f"http://127.0.0.1:{server.server_address[1]}/alerts")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["rec"]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpReceiver:
    host: str
    port: int
    messages: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """Speaks enough SMTP for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""
    received: list[dict[str, Any]] = []

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write((line + "\r\n").encode())
            self.wfile.flush()

        def handle(self) -> None:
            self.reply("220 localhost test SMTP")
            mail_from, rcpts = None, []
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                cmd = raw.decode(errors="replace").rstrip("\r\n")
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    self.reply("250 localhost")
                elif verb == "MAIL":
                    mail_from, rcpts = cmd.split(":", 1)[1].strip(), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    rcpts.append(cmd.split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 end with .")
                    lines = []
                    while True:
                        line = self.rfile.readline().decode(errors="replace")
                        if line in (".\r\n", ".\n", ""):
                            break
                        lines.append(line[1:] if line.startswith("..") else line)
                    received.append({"from": mail_from, "to": rcpts, "data": "".join(lines)})
                    self.reply("250 queued")
                elif verb in ("RSET", "NOOP"):
                    self.reply("250 OK")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("502 not implemented")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    rec = SmtpReceiver("127.0.0.1", server.server_address[1], received)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
