"""Shared helpers of the benchmarks: an isolated state folder per run, timing, the JSON line.

Every benchmark runs on throwaway state (``airloop.ops.sandbox``, the same environment the tests
use): its own Airflow metadata DB, MLflow store, monitoring store, Optuna journal and data, in
a temporary folder removed at the end (``--keep`` keeps it). Figures are medians of repeats with
the warm-up excluded, and the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "include", ROOT / "plugins"):  # a plain `python benchmarks/x.py` finds the project
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from airloop.ops.sandbox import free_port, isolated_environ, state_environ  # noqa: E402,F401 - after the path fix
from airloop.ops.sandbox import stop_process_groups as stop_group  # noqa: E402,F401

PIPELINE = "claims_fraud"
#: 1-minute load average when the benchmark started: other work on the 2 cores skews figures.
LOAD_AT_START = os.getloadavg()[0]


def parser(description: str) -> argparse.ArgumentParser:
    """Command line shared by the benchmarks (``--repeats``, ``--keep``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=3, help="measured repeats (median reported); a warm-up runs first")
    p.add_argument("--keep", action="store_true", help="keep the benchmark's state folder (path printed)")
    return p


def log(message: str) -> None:
    """Progress on stderr, so stdout ends with the JSON line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    """Median, rounded for the report."""
    return round(statistics.median(values), 4)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, wall seconds) of ``fn()``."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def emit(figures: dict[str, Any]) -> None:
    """Print the benchmark's figures as the last line: one JSON object (with the machine's load
    when the benchmark started and its core count, to judge how quiet the run was)."""
    figures = {**figures, "cpus": os.cpu_count(), "load_1m_at_start": round(LOAD_AT_START, 2)}
    print(json.dumps(figures, sort_keys=False, default=str), flush=True)


def bench_python(name: str, requirements: list[str]) -> Path:
    """The interpreter of a peer tool's own virtual environment, ``<state>/bench-venvs/<name>``
    (``AIRLOOP_STATE_DIR``, default ``.airloop``), created once with the project's ``uv`` and
    re-created when ``requirements`` change, so that the peer's pins never touch ours."""
    state = Path(os.environ.get("AIRLOOP_STATE_DIR") or ROOT / ".airloop")
    venv = (state if state.is_absolute() else ROOT / state) / "bench-venvs" / name
    python = venv / "bin" / "python"
    marker, wanted = venv / ".installed", " ".join(requirements)
    if marker.is_file() and marker.read_text().strip() == wanted:
        return python
    uv = ROOT / ".venv" / "bin" / "uv"
    log(f"creating {venv} with {wanted} (once)")
    if not python.is_file():
        subprocess.run([str(uv), "venv", "--python", "3.11", str(venv)], check=True, stdout=sys.stderr)
    subprocess.run([str(uv), "pip", "install", "--python", str(python), *requirements], check=True, stdout=sys.stderr)
    marker.write_text(wanted)
    return python


def _clear_caches() -> None:
    """Forget settings and engines built for another state folder."""
    if "airloop.core.settings" in sys.modules:
        sys.modules["airloop.core.settings"].get_settings.cache_clear()
    if "airloop.core.store" in sys.modules:
        sys.modules["airloop.core.store"].get_engine.cache_clear()


@contextmanager
def session(name: str, keep: bool = False) -> Iterator[Path]:
    """A throwaway session folder whose environment is exported to this process (and so to
    the Airflow subprocesses it starts); the environment is restored and the folder removed
    afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"airloop-bench-{name}-"))
    saved = dict(os.environ)
    os.environ.update(isolated_environ(ROOT, folder))
    (folder / "state" / "mlflow").mkdir(parents=True, exist_ok=True)
    _clear_caches()
    try:
        yield folder
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _clear_caches()
        if keep:
            log(f"state kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def use_state(state: Path, data_dir: Path | None = None):
    """Point airloop at a fresh state folder (new MLflow store, monitoring store, Optuna
    journal), optionally reading the data of ``data_dir`` so repeats see the same data; return
    its settings with the MLflow store already created (store creation is set-up, not timed)."""
    from airloop.core.pipeline import load_pipeline_config
    from airloop.core.settings import get_settings
    from airloop.registry import client as registry

    env = state_environ(state)
    if data_dir is not None:
        env["AIRLOOP_DATA_DIR"] = str(data_dir)
    os.environ.update(env)
    (state / "mlflow").mkdir(parents=True, exist_ok=True)
    _clear_caches()
    settings = get_settings()
    client = registry.get_client(settings)
    registry.ensure_experiment(client, load_pipeline_config(PIPELINE, settings), settings)
    return settings


def write_demo_history(settings, days: int = 150) -> Path:
    """The demo's simulated history (as ``make demo`` writes it) into the settings' data folder."""
    from airloop.core.pipeline import load_pipeline_config, resolve_source_path
    from airloop.data.simulator import DEFAULT_START, write_history

    config = load_pipeline_config(PIPELINE, settings)
    root = resolve_source_path(config, settings)
    write_history(root, start=DEFAULT_START, days=days, pattern=config.source.partition, fmt=config.source.format)
    return root


def airflow(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``airflow <args>`` with this process's environment; raise with its output on failure."""
    out = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def start_group(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a long-running process in its own process group (stopped with :func:`stop_group`)."""
    return subprocess.Popen(argv, env=env or os.environ.copy(), stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=ROOT)


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 180, ok_below: int = 500) -> None:
    """Wait until ``url`` answers with a status below ``ok_below`` while ``proc`` lives."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=5).status_code < ok_below:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object (a child benchmark process's figures)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON line in output:\n{text[-2000:]}")


@contextmanager
def serving_process(folder: Path, ready: bool = False) -> Iterator[str]:
    """The real serving process (``airloop.cli.commands.serving_argv``) on a free loopback port, reachable
    by the DAGs' deploy task through ``AIRFLOW_CONN_AIRLOOP_SERVING``; yields its URL once it
    answers ``/health`` (and ``/ready``, the champion loaded, when ``ready``)."""
    from airloop.cli.commands import serving_argv
    from airloop.core.settings import get_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ.update({"AIRLOOP_SERVING_HOST": "127.0.0.1", "AIRLOOP_SERVING_PORT": str(port), "AIRLOOP_SERVING_URL": url})
    os.environ["AIRFLOW_CONN_AIRLOOP_SERVING"] = f"http://:{os.environ['AIRLOOP_ADMIN_TOKEN']}@127.0.0.1:{port}"
    _clear_caches()
    get_settings()
    proc = start_group(serving_argv(), folder / f"serving-{port}.log")
    try:
        wait_http(f"{url}/health", proc)
        if ready:
            wait_http(f"{url}/ready", proc, ok_below=300)
        yield url
    finally:
        stop_group([proc])


def plain_training(config, as_of: str, settings, *, window: int | None = None, n_trials: int | None = None,
                   timeout_s: int | None = None, force: bool = False, endpoint=None,
                   run_id: str = "plain") -> tuple[dict[str, Any], dict[str, float]]:
    """The training DAG's stages called one after the other in this process (workers in turn,
    as ``dag.test`` runs them): (outputs by stage, seconds by stage). ``endpoint`` (a
    :class:`airloop.serving.client.ServingEndpoint`): also deploy, as the DAG's last task does."""
    from airloop.tasks import lifecycle, training

    context = {"dag_id": f"{config.name}__train", "dag_run_id": run_id, "run_type": "manual", "as_of": as_of,
               "trigger_reason": ""}
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        out[name], took = timed(fn)
        seconds[name] = seconds.get(name, 0.0) + took
        return out[name]

    snapshot = step("extract", lambda: training.extract(config, as_of, settings, window=window))
    validation = step("validate", lambda: training.validate(config, snapshot, settings))
    plan = step("prepare_study", lambda: training.prepare_training(config, snapshot, validation, settings, context,
                                                                 n_trials=n_trials, timeout_s=timeout_s))
    for worker in plan["workers"]:
        step("train_trials", lambda: training.train_worker(config, snapshot, plan, worker, settings))
    evaluation = step("evaluate", lambda: training.evaluate(config, snapshot, plan, settings))
    registration = step("register", lambda: training.register(config, snapshot, validation, plan, evaluation, settings,
                                                            context))
    promotion = step("promote", lambda: training.promote(config, registration, evaluation, settings, "benchmark",
                                                       context, force=force))
    if endpoint is not None and promotion.get("promoted"):
        step("deploy", lambda: lifecycle.deploy(config, promotion, snapshot, endpoint, settings, actor="benchmark",
                                             run_context=context))
    return out, seconds
