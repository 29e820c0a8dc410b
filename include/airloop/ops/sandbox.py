"""Throwaway airloop + Airflow state: the environment that puts every store in one folder.

Tests and benchmarks run the real components (Airflow metadata DB, MLflow store, monitoring
store, Optuna journal, data) without touching the developer's ``.airloop`` folder: they export
these variables before anything imports Airflow or airloop, and remove the folder afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from airloop.core.security import generate_secrets
from airloop.core.settings import SECRET_VARS

#: The variables that locate airloop's own state (data, MLflow, monitoring store, Optuna).
STATE_VARS = ("AIRLOOP_STATE_DIR", "AIRLOOP_DATA_DIR", "MLFLOW_TRACKING_URI", "AIRLOOP_MLFLOW_ARTIFACT_ROOT",
              "AIRLOOP_MONITORING_DB_URI", "AIRLOOP_OPTUNA_STORAGE")


def state_environ(state: Path) -> dict[str, str]:
    """airloop's stores under ``state`` (embedded defaults: SQLite files and a journal file)."""
    return {
        "AIRLOOP_STATE_DIR": str(state),
        "AIRLOOP_DATA_DIR": str(state / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow' / 'mlflow.db'}",
        "AIRLOOP_MLFLOW_ARTIFACT_ROOT": str(state / "mlflow" / "artifacts"),
        "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{state / 'monitoring.db'}",
        "AIRLOOP_OPTUNA_STORAGE": f"journal://{state / 'optuna' / 'journal.log'}",
    }


#: Variables of a person's own install (``make init`` writes them into ``.airloop/secrets.env`` and
#: the Makefile exports them) that a sandbox must not inherit: it sets its own or none.
USER_SECRET_VARS = tuple(SECRET_VARS)


def drop_user_secrets(environ: dict[str, str] | None = None) -> None:
    """Remove :data:`USER_SECRET_VARS` from ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    for name in USER_SECRET_VARS:
        environ.pop(name, None)


def generated_secrets() -> dict[str, str]:
    """Fresh Airflow/serving secrets for one throwaway session (never written anywhere)."""
    return generate_secrets()


def isolated_environ(root: Path, session: Path, secret_values: Mapping[str, str] | None = None) -> dict[str, str]:
    """Everything of one session under ``session``: airloop's stores in ``session/state``, the
    Airflow metadata DB (SQLite), task logs and the UI login file beside it. ``root`` is the
    checkout (``AIRFLOW_HOME``: its ``airflow.cfg``, ``dags/`` and ``plugins/``)."""
    state = session / "state"
    return {
        "AIRFLOW_HOME": str(root),
        "AIRLOOP_HOME": str(root),
        **state_environ(state),
        "AIRLOOP_PIPELINES_DIR": str(root / "include" / "pipelines"),
        # a port of the session's own, not the person's serving (`make demo` leaves it on 8000,
        # with other tokens and models): a test that starts no serving finds none there
        **_serving_environ(free_port()),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{session / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(session / "airflow-logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(session / "airflow-logs" / "dag_processor"),
        # the api-server writes the generated UI login here; the checkout may have no .airloop/
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(session / "simple_auth_manager_passwords.json"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **(dict(secret_values) if secret_values is not None else generated_secrets()),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "false",
    }


def _serving_environ(port: int) -> dict[str, str]:
    return {"AIRLOOP_SERVING_PORT": str(port), "AIRLOOP_SERVING_URL": f"http://127.0.0.1:{port}"}


def free_port() -> int:
    """An unused TCP port on loopback (for a throwaway server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_groups(procs: Iterable[subprocess.Popen], timeout: float = 30) -> None:
    """Stop processes started with ``start_new_session=True`` and everything they started:
    SIGTERM to each process group, SIGKILL to what is left after ``timeout`` seconds."""
    procs = list(procs)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)


def restore_environ(saved: Mapping[str, str | None]) -> None:
    """Put back environment variables saved as ``{name: value or None (was unset)}``."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
