"""The production topology on one machine: PostgreSQL for every store, Airflow with the
CeleryExecutor on Redis, an MLflow tracking server used over HTTP.

``make up PROFILE=postgres`` (``profiles/postgres.env``) and the cluster test start exactly
these commands; ``docker/docker-compose.yaml`` runs the same components as containers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

#: The variables of the PostgreSQL profile that name a database (created by ``ensure_databases``).
DATABASE_VARS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRLOOP_MLFLOW_BACKEND_STORE_URI",
                 "AIRLOOP_MONITORING_DB_URI", "AIRFLOW_CONN_AIRLOOP_MONITORING", "AIRLOOP_OPTUNA_STORAGE")


@dataclass(frozen=True)
class Component:
    """One long-running process of the cluster."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def uses_celery(environ: dict[str, str] | None = None) -> bool:
    """Whether the configured executor is Celery (``AIRFLOW__CORE__EXECUTOR``)."""
    env = os.environ if environ is None else environ
    return "celery" in env.get("AIRFLOW__CORE__EXECUTOR", "").lower()


#: Airflow's variable of the worker log server port, and Airflow's default for it.
WORKER_LOG_SERVER_PORT_VAR = "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"
DEFAULT_WORKER_LOG_SERVER_PORT = 8793


def worker_log_server_port(environ: dict[str, str] | None = None) -> int:
    """The configured worker log server port (``AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT``, set in
    ``.env``; Airflow's default 8793 when unset or empty)."""
    env = os.environ if environ is None else environ
    return int(env.get(WORKER_LOG_SERVER_PORT_VAR) or DEFAULT_WORKER_LOG_SERVER_PORT)


def airflow_port_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The Airflow variables that follow ``AIRFLOW_PORT`` (default 8080), the one setting of the
    Airflow port: the API server's port and the execution API URL the task processes call
    (Airflow's default is http://localhost:8080/execution/ whatever the port, which would send a
    second clone's tasks to the first clone's API server). ``make up`` sets the same values."""
    env = os.environ if environ is None else environ
    port = env.get("AIRFLOW_PORT") or "8080"
    return {"AIRFLOW__API__PORT": port,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def airflow_components(api_port: int, workers: int = 2, worker_concurrency: int = 2,
                       log_server_port: int | None = None) -> list[Component]:
    """API server, scheduler, DAG processor, triggerer and ``workers`` Celery workers.

    Workers get distinct Celery hostnames (``worker<i>@<host>``) and log-server ports, so several
    can share one machine: worker ``i`` serves its logs on ``log_server_port + i - 1``, from the
    configured port (:func:`worker_log_server_port`) by default.
    """
    airflow = _bin("airflow")
    if log_server_port is None:
        log_server_port = worker_log_server_port()
    components = [
        Component("api-server", [airflow, "api-server", "--port", str(api_port)]),
        Component("scheduler", [airflow, "scheduler"]),
        Component("dag-processor", [airflow, "dag-processor"]),
        Component("triggerer", [airflow, "triggerer"]),
    ]
    for i in range(1, workers + 1):
        components.append(Component(
            f"worker{i}",
            [airflow, "celery", "worker", "--celery-hostname", f"worker{i}@%h",
             "--concurrency", str(worker_concurrency), "--without-mingle", "--without-gossip"],
            {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_port + i - 1)},
        ))
    return components


def mlflow_server(backend_store_uri: str, artifacts_destination: str, port: int, host: str = "127.0.0.1") -> Component:
    """``mlflow server`` on ``backend_store_uri`` (PostgreSQL), proxying artifacts it keeps in
    ``artifacts_destination``: clients need only its URL."""
    return Component("mlflow", [_bin("mlflow"), "server", "--backend-store-uri", backend_store_uri,
                                "--artifacts-destination", artifacts_destination, "--serve-artifacts",
                                "--host", host, "--port", str(port), "--workers", "1"])


def _server_url(url: str) -> sa.URL:
    parsed = sa.make_url(url.removeprefix("db+"))
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def ensure_databases(urls: list[str]) -> list[str]:
    """Create the PostgreSQL databases named by ``urls`` that do not exist yet; return those created.

    Connects to each server's ``postgres`` database with the URL's credentials (AUTOCOMMIT:
    ``CREATE DATABASE`` cannot run in a transaction).
    """
    created = []
    for url in urls:
        target = _server_url(url)
        if not target.drivername.startswith("postgresql") or not target.database:
            continue
        admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                      {"name": target.database}).first()
                if not exists:
                    quoted = conn.dialect.identifier_preparer.quote(target.database)
                    conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
                    created.append(target.database)
        finally:
            admin.dispose()
    return created


def profile_database_urls(environ: dict[str, str] | None = None) -> list[str]:
    """The database URLs the current profile points at (see :data:`DATABASE_VARS`)."""
    env = os.environ if environ is None else environ
    return [env[var] for var in DATABASE_VARS if env.get(var, "").startswith(("postgres", "db+postgres"))]
