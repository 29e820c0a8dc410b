"""Fixtures of the provider tests: the ``airloop_provider`` package on ``sys.path`` (as Airflow's
plugins folder), a local webhook receiver and a local SMTP sink, both on 127.0.0.1.

Connections are given as ``AIRFLOW_CONN_*`` variables (monkeypatched), never read from a store;
the session's environment (``tests/conftest.py``) keeps every state path in a temporary folder.
"""

from __future__ import annotations

import json
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from email import message_from_string, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PLUGINS = ROOT / "plugins"
if str(PLUGINS) not in sys.path:  # what Airflow does for its plugins folder
    sys.path.append(str(PLUGINS))


@pytest.fixture
def airloop_settings(tmp_path, monkeypatch):
    """Settings built from an explicit environment (state in ``tmp_path``, the repository's pipeline
    files, a made-up serving URL and token), returned by ``airloop.core.settings.get_settings``
    during the test: neither the developer's ``.env`` nor their state is read."""
    from airloop.core import settings as settings_module

    settings = settings_module.load_settings({
        "AIRLOOP_HOME": str(ROOT), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
        "AIRLOOP_PIPELINES_DIR": str(ROOT / "include" / "pipelines"),
        "AIRLOOP_SERVING_URL": "http://serving.test:9000/", "AIRLOOP_ADMIN_TOKEN": "settings-token-456",
    })
    monkeypatch.setattr(settings_module, "get_settings", lambda: settings)
    return settings


@dataclass
class Received:
    """What a local server got."""

    requests: list[dict] = field(default_factory=list)
    status: int = 200  # what the webhook answers


@pytest.fixture
def webhook():
    """A real HTTP server on 127.0.0.1 recording each request (method, path, headers, JSON body);
    ``webhook.status`` is the status it answers with. Yields ``(received, url)``."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                      "json": json.loads(body) if body else None})
            self.send_response(received.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def smtp_sink():
    """A minimal SMTP server on 127.0.0.1 (plain, no TLS, no auth) keeping every message it gets.
    Yields ``(received, port)``; each request is ``{"from", "to", "message"}`` (parsed e-mail)."""
    received = Received()

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self):
            self.reply("220 sink ESMTP")
            sender, recipients = None, []
            while line := self.rfile.readline():
                command = line.decode().rstrip("\r\n")
                verb = command[:4].upper()
                if verb == "EHLO":
                    self.reply("250-sink")
                    self.reply("250 8BITMIME")
                elif verb == "HELO":
                    self.reply("250 sink")
                elif verb == "MAIL":
                    sender, recipients = command.split(":", 1)[1].strip().split()[0].strip("<>"), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    lines = []
                    while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                        lines.append(data[1:] if data.startswith("..") else data)
                    received.requests.append({"from": sender, "to": recipients,
                                              "message": message_from_string("".join(lines), policy=policy.default)})
                    self.reply("250 OK queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:  # RSET, NOOP, ...
                    self.reply("250 OK")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield received, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
