"""Load for the fault tests: serving as its own process, wrk with one unique request id per
request, serving's counters and its memory.

* :class:`ServingProcess`: uvicorn on ``airloop.serving.app:create_app`` (the options of
  ``airloop.cli.commands.serving_argv``: one worker, no access log) in its own process group, with
  the environment it is given; :meth:`~ServingProcess.terminate` sends SIGTERM (graceful: the
  prediction log drains to the database or the spool) and waits.
* :func:`run_wrk`: ``wrk -t1 -c<n>`` on ``POST /predict``; its Lua script sends every request as
  ``{"records": [record], "request_ids": ["<prefix>-<thread>-<n>"]}`` (one fresh id per request,
  so a duplicate or a lost row is attributable) and writes the request id of every 2xx answer
  (from the answer's body) to a file: :attr:`WrkResult.answered_ids` is the exact set of
  predictions a client received.
* :func:`metrics` reads serving's ``/metrics`` (the prediction log's counters);
  :class:`RssSampler` samples the serving process's RSS (psutil) every few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from airloop.ops.sandbox import free_port

LUA = r"""
local bodies = {}
for line in io.lines(os.getenv("LOAD_BODIES")) do bodies[#bodies + 1] = line end
local prefix = os.getenv("LOAD_PREFIX")
local headers = {["Content-Type"] = "application/json", ["Authorization"] = os.getenv("LOAD_AUTH")}
local counter = 0
local out = nil
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

init = function(args)
  out = io.open(os.getenv("LOAD_IDS") .. "." .. tid, "w")
  out:setvbuf("line")
end

request = function()
  counter = counter + 1
  local id = prefix .. "-" .. tid .. "-" .. counter
  local body = '{"records":[' .. bodies[counter % #bodies + 1] .. '],"request_ids":["' .. id .. '"]}'
  return wrk.format("POST", "/predict", headers, body)
end

response = function(status, headers, body)
  if status >= 200 and status < 300 then
    local id = string.match(body, '"request_id"%s*:%s*"([^"]+)"')
    out:write(id or "?", "\n")
  else
    out:write("!", status, "\n")
  end
end
"""


@dataclass
class WrkResult:
    """What one wrk run reports, and the request ids of the 2xx answers it received."""

    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    rps: float
    answered_ids: list[str] = field(repr=False)
    unparsed: int  # 2xx answers without a request id in the body
    output: str = field(repr=False)

    @property
    def ok(self) -> int:
        return len(self.answered_ids)

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def parse_wrk_report(out: str) -> dict[str, Any]:
    """Completed requests, non-2xx answers, socket errors by kind and requests/s of a wrk report."""
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    return {"requests": requests, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": dict(zip(kinds, map(int, sockets.groups()))) if sockets else dict.fromkeys(kinds, 0),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}


def run_wrk(url: str, folder: Path, bodies: list[str], token: str, seconds: float, *, connections: int = 50,
            prefix: str = "load", timeout_s: int = 10) -> WrkResult:
    """One closed-loop wrk run of ``seconds`` on ``url``/predict; ``bodies``: JSON records (one per line)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "predict.lua"
    script.write_text(LUA)
    body_file = folder / f"{prefix}-bodies.jsonl"
    body_file.write_text("\n".join(bodies) + "\n")
    ids_base = folder / f"{prefix}-ids"
    env = {**os.environ, "LOAD_BODIES": str(body_file), "LOAD_PREFIX": prefix, "LOAD_AUTH": f"Bearer {token}",
           "LOAD_IDS": str(ids_base)}
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", f"{timeout_s}s",
            "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 120)
    if out.returncode != 0 or "requests in" not in out.stdout:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    report = parse_wrk_report(out.stdout)
    answered, unparsed = [], 0
    for path in sorted(folder.glob(f"{ids_base.name}.*")):
        for line in path.read_text().splitlines():
            if line.startswith("!"):
                continue  # a non-2xx answer: counted by wrk's report
            if line == "?":
                unparsed += 1
            else:
                answered.append(line)
    return WrkResult(report["requests"], report["non_2xx"], report["socket_errors"], report["rps"], answered,
                     unparsed, out.stdout)


class ServingProcess:
    """Serving (uvicorn on ``create_app``) as its own process group on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, token: str) -> None:
        self.env = env
        self.log_path = log_path
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "--factory", "airloop.serving.app:create_app",
                "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]

    def start(self, ready_within_s: float = 180) -> "ServingProcess":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serving exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        raise RuntimeError(f"serving not ready within {ready_within_s:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, wait_s: float = 60) -> int:
        """SIGTERM (uvicorn's graceful shutdown) and wait; SIGKILL the group if it hangs. The exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise RuntimeError(f"serving ignored SIGTERM for {wait_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def metrics(url: str, prefix: str = "airloop_predlog") -> dict[str, float]:
    """Serving's prediction-log samples from ``/metrics`` (``rows_spooled``, ``rows_replayed``, ...,
    ``queue_depth``, ``spool_files``, ``db_up``; counters without their ``_total`` suffix)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).raise_for_status().text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix + "_") and not sample.name.endswith("_created"):
                out[sample.name[len(prefix) + 1:].removesuffix("_total")] = sample.value
    return out


def wait_drained(url: str, seconds: float = 120) -> tuple[float, dict[str, float]]:
    """Seconds until serving's prediction log has an empty queue, no spool file and a live database."""
    started = time.monotonic()
    while True:
        current = metrics(url)
        if current.get("queue_depth") == 0 and current.get("spool_files") == 0 and current.get("db_up") == 1:
            return time.monotonic() - started, current
        if time.monotonic() - started > seconds:
            raise AssertionError(f"prediction log not drained within {seconds:.0f} s: {current}")
        time.sleep(0.25)


class RssSampler:
    """Samples a process's resident set size every ``interval_s`` in a background thread."""

    def __init__(self, pid: int, interval_s: float = 5.0) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._started = 0.0

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic() - self._started, self.process.memory_info().rss))
            except psutil.Error:
                return
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "RssSampler":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def emit(test: str, figures: dict[str, Any]) -> None:
    """The test's one ``PGOUTAGE {json}`` line (stdout; ``pytest -s`` shows it, and it is in the report)."""
    print("PGOUTAGE " + json.dumps({"test": test, **figures}, sort_keys=True), flush=True)
