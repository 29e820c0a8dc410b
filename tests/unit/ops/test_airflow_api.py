"""airloop.ops.airflow_api: a read that times out is tried again; a write is never repeated."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from airloop.ops.airflow_api import AirflowApi


class _JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Slow(_JsonHandler):
    """An API server whose first answer to each path comes too late."""

    seen: dict[str, int] = {}

    def do_POST(self) -> None:
        if self.path == "/auth/token":
            self._answer({"access_token": "t"})
            return
        self.seen[self.path] = self.seen.get(self.path, 0) + 1
        time.sleep(1.0)
        self._answer({"ok": True})

    def do_GET(self) -> None:
        self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if self.seen[self.path] == 1:
            time.sleep(1.0)  # past the client's timeout
        self._answer({"dag_runs": [], "attempt": self.seen[self.path]})


@pytest.fixture()
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    _Slow.seen = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield AirflowApi(f"http://127.0.0.1:{server.server_port}", "admin", "pw", timeout=0.4)
    server.shutdown()


def test_a_read_that_times_out_is_tried_again(api):
    assert api.request("GET", "/dags/x/dagRuns") == {"dag_runs": [], "attempt": 2}
    assert _Slow.seen["/api/v2/dags/x/dagRuns"] == 2


def test_a_write_that_times_out_is_not_repeated(api):
    with pytest.raises(httpx.TimeoutException):
        api.request("POST", "/dags/x/dagRuns", json={})
    time.sleep(1.2)  # let the server finish the one request it got
    assert _Slow.seen["/api/v2/dags/x/dagRuns"] == 1


class _Locked(_JsonHandler):
    """An API server on SQLite whose first two backfill creations meet the scheduler's lock."""

    posts = 0

    def do_POST(self) -> None:
        if self.path == "/auth/token":
            self._answer({"access_token": "t"})
            return
        type(self).posts += 1
        if self.path == "/api/v2/backfills" and type(self).posts <= 2:
            self._answer({"detail": "Database is locked. Backfill creation is not supported on SQLite "
                                    "under concurrent access. Please use PostgreSQL or MySQL."}, 503)
            return
        if self.path == "/api/v2/backfills":
            self._answer({"id": 7, "dag_id": "d"})
            return
        self._answer({"detail": "Database is locked."}, 503)


@pytest.fixture()
def locked():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Locked)
    _Locked.posts = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield AirflowApi(f"http://127.0.0.1:{server.server_port}", "admin", "pw", timeout=5)
    server.shutdown()


def test_a_backfill_that_meets_sqlites_lock_is_created_on_a_later_try(locked):
    from datetime import date

    assert locked.backfill("d", date(2026, 1, 1), date(2026, 1, 3), wait_s=30) == {"id": 7, "dag_id": "d"}
    assert _Locked.posts == 3


def test_another_write_that_meets_the_lock_is_not_repeated(locked):
    from airloop.ops.airflow_api import AirflowApiError

    with pytest.raises(AirflowApiError, match="HTTP 503"):
        locked.request("POST", "/dags/d/dagRuns", json={})
    assert _Locked.posts == 1
