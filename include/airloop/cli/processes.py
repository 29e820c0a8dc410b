"""Starting and stopping the UIs and serving (``make up``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from airloop.cli.commands import _init_mlflow, _tracking_server, cmd_start_serving, ensure_secrets, secrets_file
from airloop.core.settings import (
    AIRFLOW_PORT,
    AIRLOOP_MLFLOW_BACKEND_STORE_URI,
    MLFLOW_PORT,
    Settings,
    get_settings,
    process_environ,
)


def passwords_file(settings: Settings) -> Path:
    """Where the simple auth manager keeps the generated UI logins (airflow.cfg, or its variable)."""
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    if configured:
        return Path(configured)
    # airflow.cfg: $AIRFLOW_HOME/.airloop/airflow/... (Airflow's files follow AIRFLOW_HOME, not AIRLOOP_STATE_DIR)
    home = Path(os.environ.get("AIRFLOW_HOME") or settings.root)
    return home / ".airloop" / "airflow" / "simple_auth_manager_passwords.json.generated"


def airflow_login(settings: Settings) -> str:
    """The generated Airflow UI login (simple auth manager), once ``airflow standalone`` made it."""
    path = passwords_file(settings)
    try:
        users = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"(not generated yet: see {path})"
    return ", ".join(f"{user} / {password}" for user, password in users.items())


def _signal_tree(proc: subprocess.Popen, sig: int, group: bool) -> None:
    """Signal a child, or its whole process group when it was started in its own session."""
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _start(name: str, argv: list[str], logs: Path, cwd: Path, env: dict[str, str] | None = None,
           group: bool = False, role: str | None = None) -> subprocess.Popen:
    """Start ``argv`` logging to ``logs/<name>.log``, with only the secrets ``role`` (default:
    ``name``) needs (:func:`airloop.core.settings.process_environ`)."""
    return subprocess.Popen(argv, stdout=open(logs / f"{name}.log", "ab"), stderr=subprocess.STDOUT, cwd=cwd,
                            env={**process_environ(role or name), **(env or {})}, start_new_session=group)


def _wait_http(urls: dict[str, str], procs: dict[str, subprocess.Popen], logs: Path, seconds: float = 240) -> None:
    """Wait until every URL answers (< 500) or its process exits."""
    import httpx

    deadline = time.monotonic() + seconds
    pending = set(urls)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if procs[name].poll() is not None:
                print(f"{name} exited ({procs[name].returncode}); see {logs}", file=sys.stderr)
                pending.discard(name)
                continue
            try:
                if httpx.get(urls[name], timeout=2).status_code < 500:
                    pending.discard(name)
            except httpx.HTTPError:
                pass
        time.sleep(1)


def start_airflow(settings: Settings, logs: Path, port: str, triggerer: bool = True
                  ) -> tuple[dict[str, subprocess.Popen], str]:
    """Start Airflow in the background, each component in its own process group; return the
    processes and the name of the one serving the API (and the UI).

    Embedded profile: ``airflow standalone`` (API server, scheduler, DAG processor, triggerer on
    SQLite + LocalExecutor; it writes the UI login). Celery profile: the components one by one
    (:mod:`airloop.ops.topology`). ``make up`` and ``make demo`` both start Airflow here.
    """
    from airloop.ops import topology

    bin_dir = Path(sys.executable).parent
    # Airflow's components start `airflow ...` subprocesses: put this venv first on PATH
    env = {**topology.airflow_port_env({"AIRFLOW_PORT": port}),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs: dict[str, subprocess.Popen] = {}
    if topology.uses_celery():
        for component in topology.airflow_components(int(port)):
            if component.name == "triggerer" and not triggerer:
                continue
            procs[component.name] = _start(component.name, component.argv, logs, settings.root,
                                           {**env, **component.env}, group=True, role="airflow")
        return procs, "api-server"
    # its own process group: stopping it stops every component
    procs["airflow"] = _start("airflow-standalone", [str(bin_dir / "airflow"), "standalone"], logs,
                              settings.root, env, group=True, role="airflow")
    return procs, "airflow"


def airflow_api(settings: Settings, port: str | None = None):
    """A REST client of the local Airflow API server, logged in as the generated admin user."""
    from airloop.ops.airflow_api import AirflowApi, simple_auth_password

    passwords = passwords_file(settings)
    deadline = time.monotonic() + 240
    while (password := simple_auth_password(passwords)) is None:  # standalone writes it on start
        if time.monotonic() > deadline:
            raise RuntimeError(f"no Airflow admin password in {passwords}")
        time.sleep(1)
    return AirflowApi(f"http://127.0.0.1:{port or AIRFLOW_PORT.get()}", "admin", password)


def cmd_up(args) -> int:
    """Start the MLflow UI/server, serving (background) and Airflow; Ctrl-C stops Airflow and MLflow.

    Embedded profile: ``airflow standalone`` (LocalExecutor) and an MLflow UI on the SQLite
    store. PostgreSQL profile (``make up PROFILE=postgres``): an MLflow tracking server on
    PostgreSQL and the Airflow components one by one — API server, scheduler, DAG processor,
    triggerer and two Celery workers (:mod:`airloop.ops.topology`).
    """
    from airloop.ops import topology

    settings = get_settings()
    ensure_secrets(settings)
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mlflow_port = MLFLOW_PORT.get()
    airflow_port = AIRFLOW_PORT.get()
    bin_dir = Path(sys.executable).parent
    procs: dict[str, subprocess.Popen] = {}
    if _tracking_server(settings):
        backend = AIRLOOP_MLFLOW_BACKEND_STORE_URI.get()
        if not backend:
            print("MLFLOW_TRACKING_URI is a server URL: set AIRLOOP_MLFLOW_BACKEND_STORE_URI (its database)", file=sys.stderr)
            return 1
        server = topology.mlflow_server(backend, settings.mlflow_artifact_root, int(mlflow_port))
        procs["mlflow"] = _start("mlflow", server.argv, logs, settings.root)
        _wait_http({"mlflow": settings.mlflow_tracking_uri}, procs, logs)
        _init_mlflow(settings)
    else:
        procs["mlflow"] = _start("mlflow", [
            str(bin_dir / "mlflow"), "server", "--backend-store-uri", settings.mlflow_tracking_uri,
            "--default-artifact-root", settings.mlflow_artifact_root, "--host", "127.0.0.1", "--port", mlflow_port],
            logs, settings.root)
    if cmd_start_serving(args) != 0:
        _stop_all(procs)
        return 1
    airflow_procs, airflow_proc = start_airflow(settings, logs, airflow_port)
    procs.update(airflow_procs)
    urls = {airflow_proc: f"http://127.0.0.1:{airflow_port}", "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    _wait_http(urls, procs, logs)
    print("\n".join([
        "", f"airloop is up ({'CeleryExecutor: ' + ', '.join(procs) if topology.uses_celery() else 'airflow standalone'}):",
        f"  Airflow UI   {urls[airflow_proc]}   login: {airflow_login(settings)}",
        f"  MLflow UI    {urls['mlflow']}",
        f"  Serving      {settings.serving_url}/docs   (admin token in {secrets_file(settings)})",
        f"  Logs         {logs}",
        "Unpause and trigger a DAG from the Airflow UI (Trigger -> form). Ctrl-C stops Airflow and MLflow;",
        "`make down` stops serving.",
    ]))
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(2)
        print("a component exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_all(procs)
    return 0


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM every component (Airflow ones with their process group), SIGKILL stragglers."""
    grouped = {name for name in procs if name != "mlflow"}
    for name, proc in procs.items():
        if proc.poll() is None:
            _signal_tree(proc, signal.SIGTERM, group=name in grouped)
    for name, proc in procs.items():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_tree(proc, signal.SIGKILL, group=name in grouped)
    for name in grouped:  # children (task processes, standalone's components) share the group
        try:
            os.killpg(procs[name].pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
