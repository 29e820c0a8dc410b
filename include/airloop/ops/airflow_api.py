"""A client of the Airflow API server's public REST API (``/api/v2``): the calls the UI makes.

The demo drives its history through it (backfills and triggers executed by the real scheduler,
so every run has its task logs and wall-clock times), and the end-to-end tests use it to do what
a person does in the UI: the trigger form (``POST /dags/{id}/dagRuns``), the Backfill dialog
(``POST /backfills``), clearing a run, reading a task log. Authentication is the auth manager's
token endpoint (``POST /auth/token``, the simple auth manager's login).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx

#: Run states after which a DAG run no longer changes.
FINISHED = frozenset({"success", "failed"})


class AirflowApiError(RuntimeError):
    """The API server refused a call: the status, the path and Airflow's own detail."""


def simple_auth_password(passwords_file: Path, user: str = "admin") -> str | None:
    """The generated password of ``user`` (``airflow standalone`` / the API server writes it)."""
    try:
        return json.loads(passwords_file.read_text()).get(user)
    except (OSError, ValueError):
        return None


def _sqlite_locked(err: AirflowApiError) -> bool:
    """The API server's 503 for a write that met SQLite's lock (the transaction was rolled back)."""
    return "HTTP 503" in str(err) and "Database is locked" in str(err)


@dataclass
class AirflowApi:
    """``/api/v2`` of one API server, as user ``username``."""

    base_url: str
    username: str
    password: str
    timeout: float = 30.0
    _token: str | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------ plumbing
    def _headers(self) -> dict[str, str]:
        if self._token is None:
            answer = httpx.post(f"{self.base_url}/auth/token", json={"username": self.username,
                                                                     "password": self.password},
                                timeout=self.timeout)
            if answer.status_code >= 300:
                raise AirflowApiError(f"login as {self.username!r} failed: HTTP {answer.status_code} {answer.text[:300]}")
            self._token = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; a read (GET) that times out or loses its connection is tried twice more
        (a loaded API server answers late; a read changes nothing), a write is never repeated."""
        attempts = 3 if method.upper() == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                return httpx.request(method, f"{self.base_url}/api/v2{path}", headers=self._headers(),
                                     timeout=self.timeout, **kwargs)
            except (httpx.TimeoutException, httpx.NetworkError):
                if attempt == attempts:
                    raise
                time.sleep(2 * attempt)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; JSON answer (None for an empty body). Raises :class:`AirflowApiError` on >= 400."""
        answer = self._send(method, path, **kwargs)
        if answer.status_code == 401:  # token expired: log in once more
            self._token = None
            answer = self._send(method, path, **kwargs)
        if answer.status_code >= 400:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {answer.status_code} {answer.text[:500]}")
        return answer.json() if answer.content and "json" in answer.headers.get("content-type", "") else answer.text

    # -------------------------------------------------------------------------------- health
    def healthy(self) -> bool:
        """The metadatabase, scheduler and DAG processor report healthy."""
        try:
            health = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        parts = [health.get(k, {}).get("status") for k in ("metadatabase", "scheduler", "dag_processor")]
        return all(p == "healthy" for p in parts)

    def wait_healthy(self, seconds: float = 240, alive=lambda: True) -> None:
        deadline = time.monotonic() + seconds
        while not self.healthy():
            if not alive():
                raise AirflowApiError("an Airflow component exited before the API server was healthy")
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{self.base_url}: not healthy within {seconds:.0f} s")
            time.sleep(1)

    def wait_dags(self, dag_ids: list[str], seconds: float = 240) -> None:
        """Until the DAG processor has parsed (serialized) every DAG of ``dag_ids``."""
        deadline = time.monotonic() + seconds
        for dag_id in dag_ids:
            while True:
                try:
                    self.request("GET", f"/dags/{dag_id}/details")
                    break
                except AirflowApiError:
                    if time.monotonic() > deadline:
                        errors = self.request("GET", "/importErrors").get("import_errors", [])
                        raise AirflowApiError(f"DAG {dag_id} not parsed within {seconds:.0f} s; import errors: "
                                              f"{[e.get('stack_trace', '')[-300:] for e in errors]}") from None
                    time.sleep(1)

    # ---------------------------------------------------------------------------------- DAGs
    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None, logical_date: datetime | None = None,
                run_id: str | None = None, data_interval: tuple[datetime, datetime] | None = None) -> dict:
        """What the UI's Trigger form posts (``logical_date`` None: the form's "no logical date";
        ``data_interval``: the form's "Specify Manually", else inferred from the timetable)."""
        body: dict[str, Any] = {"conf": conf or {}, "logical_date": logical_date.isoformat() if logical_date else None}
        if run_id:
            body["dag_run_id"] = run_id
        if data_interval:
            body["data_interval_start"], body["data_interval_end"] = (d.isoformat() for d in data_interval)
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def backfill(self, dag_id: str, first: date, last: date, reprocess: str = "none", conf: dict | None = None,
                 max_active_runs: int = 1, wait_s: float = 120) -> dict:
        """What the UI's Backfill dialog posts: every schedule tick of ``[first, last]``. A DAG has
        one running backfill at a time and the scheduler marks one completed a few seconds after
        its last run: until then (HTTP 409) the call is retried for up to ``wait_s`` seconds.

        On SQLite the API server answers 503 "Database is locked" when the scheduler holds the
        write lock while the backfill is created; Airflow creates a backfill in one transaction,
        which that error rolls back, so the same call is made again (with a growing pause)."""
        body = {"dag_id": dag_id, "from_date": f"{first.isoformat()}T00:00:00Z", "to_date": f"{last.isoformat()}T00:00:00Z",
                "run_backwards": False, "dag_run_conf": conf or {}, "reprocess_behavior": reprocess,
                "max_active_runs": max_active_runs}
        deadline = time.monotonic() + wait_s
        pause = 1.0
        while True:
            try:
                return self.request("POST", "/backfills", json=body)
            except AirflowApiError as err:
                retriable = "already a running backfill" in str(err) or _sqlite_locked(err)
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 1.5, 5.0) if _sqlite_locked(err) else 1.0

    def runs(self, dag_id: str, **filters: Any) -> list[dict]:
        params = {"order_by": "-run_after", "limit": 100, **filters}
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                            params={"limit": 100})["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The task's log as text (what the UI's log view shows)."""
        answer = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                              params={"map_index": map_index, "full_content": True})
        if isinstance(answer, dict):
            content = answer.get("content")
            if isinstance(content, list):
                return "\n".join(e.get("event", "") if isinstance(e, dict) else str(e) for e in content)
            return str(content)
        return str(answer)

    def clear(self, dag_id: str, run_id: str) -> Any:
        """The UI's "Clear run" (every task, failed or not): the scheduler runs it again."""
        return self.request("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})

    def wait_run(self, dag_id: str, run_id: str, seconds: float = 900, alive=lambda: True) -> dict:
        """Poll until the run is finished; return it."""
        deadline = time.monotonic() + seconds
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            if not alive():
                raise AirflowApiError(f"an Airflow component exited while {dag_id} {run_id} was {run['state']}")
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{dag_id} {run_id} still {run['state']} after {seconds:.0f} s")
            time.sleep(1)

    def wait_backfill(self, backfill: dict, seconds: float = 1800, alive=lambda: True) -> list[dict]:
        """Poll until every run of the backfill has finished; return its runs, oldest first.

        The API server creates a backfill's runs when it creates the backfill; the scheduler marks
        the backfill completed only on a later loop, so the runs' own states are what is polled.
        """
        deadline = time.monotonic() + seconds
        while True:
            runs = self.runs(backfill["dag_id"], run_type=["backfill"], logical_date_gte=backfill["from_date"],
                             logical_date_lte=backfill["to_date"])
            if runs and all(r["state"] in FINISHED for r in runs):
                return sorted(runs, key=lambda r: r["logical_date"] or "")
            if not runs and self.request("GET", f"/backfills/{backfill['id']}").get("completed_at"):
                return []
            if not alive():
                raise AirflowApiError(f"an Airflow component exited during backfill {backfill['id']} of {backfill['dag_id']}")
            if time.monotonic() > deadline:
                raise AirflowApiError(f"backfill {backfill['id']} of {backfill['dag_id']} not done after {seconds:.0f} s")
            time.sleep(0.5)
