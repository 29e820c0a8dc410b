"""Configuration: runtime settings from the environment and pipeline files in YAML.

Two kinds of configuration live here:

* :class:`Settings` — where things are (state folder, MLflow, monitoring store, Optuna storage,
  serving URL, admin token). Read from the process environment, with the repository's ``.env``
  file as a fallback, so every component (Airflow tasks, the serving process, tests, the CLI)
  resolves the same endpoints. Relative paths resolve against the project root.
* :class:`PipelineConfig` — what a pipeline does (data source, schema, target, task type,
  search space, gates). One YAML file per pipeline under ``include/pipelines/``, validated with
  pydantic; a mistake raises :class:`ConfigError` naming the file and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # include/airloop (this file is core/settings.py)


#: Repository root when airloop runs from a checkout (include/airloop/ -> repo root).
DEFAULT_ROOT = PACKAGE_ROOT.parent.parent


class ConfigError(ValueError):
    """A pipeline file or setting is wrong; the message names the file and the field."""


# --------------------------------------------------------------------------------------------
# Every environment variable airloop reads: one table (in the style of mlflow/environment_variables.py)
# --------------------------------------------------------------------------------------------


class EnvVar:
    """One environment variable: its name, type, default and meaning. ``get()`` reads it from the
    process environment (or a given mapping); unset or empty means the default."""

    def __init__(self, name: str, type_: type, default: Any, doc: str) -> None:
        self.name, self.type, self.default, self.doc = name, type_, default, doc

    def get(self, env: Mapping[str, str] | None = None) -> Any:
        raw = (os.environ if env is None else env).get(self.name)
        if raw is None or raw == "":
            return self.default
        return self.type(raw)

    def is_set(self, env: Mapping[str, str] | None = None) -> bool:
        return self.name in (os.environ if env is None else env)

    def __repr__(self) -> str:
        return f"EnvVar({self.name!r})"


AIRLOOP_HOME = EnvVar("AIRLOOP_HOME", str, None, "project root (default: the checkout this package sits in)")
AIRLOOP_STATE_DIR = EnvVar("AIRLOOP_STATE_DIR", str, ".airloop", "the one git-ignored folder of local state")
AIRLOOP_PIPELINES_DIR = EnvVar("AIRLOOP_PIPELINES_DIR", str, "include/pipelines", "pipeline YAML files")
AIRLOOP_PIPELINE = EnvVar("AIRLOOP_PIPELINE", str, "claims_fraud", "the default pipeline (served at /)")
AIRLOOP_DATA_DIR = EnvVar("AIRLOOP_DATA_DIR", str, None, "root of relative file sources (default: <state>/data)")
MLFLOW_TRACKING_URI = EnvVar("MLFLOW_TRACKING_URI", str, None, "MLflow tracking store or server URL")
MLFLOW_REGISTRY_URI = EnvVar("MLFLOW_REGISTRY_URI", str, None, "MLflow registry (default: the tracking store)")
AIRLOOP_MLFLOW_ARTIFACT_ROOT = EnvVar("AIRLOOP_MLFLOW_ARTIFACT_ROOT", str, None, "artifact root of a local store")
AIRLOOP_MLFLOW_BACKEND_STORE_URI = EnvVar("AIRLOOP_MLFLOW_BACKEND_STORE_URI", str, None,
                                          "database of the MLflow server `make up` starts (profiles)")
AIRLOOP_MONITORING_DB_URI = EnvVar("AIRLOOP_MONITORING_DB_URI", str, None, "monitoring store URI")
AIRLOOP_MONITORING_CONN_ID = EnvVar("AIRLOOP_MONITORING_CONN_ID", str, None,
                                    "monitoring store as an Airflow connection id")
AIRLOOP_PREDICTION_RETENTION_DAYS = EnvVar(
    "AIRLOOP_PREDICTION_RETENTION_DAYS", int, 0,
    "days of predictions kept before each monitored interval's end (0: all; airloop.core.partitions)")
AIRLOOP_MONITORING_MAX_ACTIVE_RUNS = EnvVar(
    "AIRLOOP_MONITORING_MAX_ACTIVE_RUNS", int, 3,
    "monitoring runs (intervals) of one pipeline side by side; the order-dependent tasks still go in interval order")
AIRLOOP_OPTUNA_STORAGE = EnvVar("AIRLOOP_OPTUNA_STORAGE", str, None, "Optuna storage (journal file or RDB URL)")
AIRLOOP_SERVING_URL = EnvVar("AIRLOOP_SERVING_URL", str, "http://127.0.0.1:8000", "where clients reach serving")
AIRLOOP_SERVING_HOST = EnvVar("AIRLOOP_SERVING_HOST", str, "127.0.0.1", "address serving binds")
AIRLOOP_SERVING_PORT = EnvVar("AIRLOOP_SERVING_PORT", str, "8000", "port serving binds")
AIRLOOP_SERVING_BATCH_WAIT_MS = EnvVar("AIRLOOP_SERVING_BATCH_WAIT_MS", float, 2.0,
                                       "longest micro-batching wait of a /predict request")
AIRLOOP_SERVING_BATCH_MAX_RECORDS = EnvVar("AIRLOOP_SERVING_BATCH_MAX_RECORDS", int, 1024,
                                           "most records in one micro-batched model call (1: no batching)")
AIRLOOP_SERVING_MAX_BODY_BYTES = EnvVar("AIRLOOP_SERVING_MAX_BODY_BYTES", int, 8 * 1024 * 1024,
                                        "largest request body serving reads (bytes; larger: 413; 0: no limit)")
AIRLOOP_SERVING_MAX_RECORDS = EnvVar("AIRLOOP_SERVING_MAX_RECORDS", int, 10_000,
                                     "most records in one /predict or labels in one /feedback (more: 413)")
AIRLOOP_SERVING_OPEN_ROUTES = EnvVar("AIRLOOP_SERVING_OPEN_ROUTES", str, "",
                                     "serving routes opened without a token (comma list: predict, feedback, "
                                     "explain, model, abtest; default none: every route but the probes needs one)")
AIRLOOP_EVENT_TS_MAX_AGE_S = EnvVar("AIRLOOP_EVENT_TS_MAX_AGE_S", float, 7 * 86400.0,
                                    "oldest event_ts /predict accepts, in seconds before now (older: 422)")
AIRLOOP_EVENT_TS_MAX_AHEAD_S = EnvVar("AIRLOOP_EVENT_TS_MAX_AHEAD_S", float, 300.0,
                                      "latest event_ts /predict accepts, in seconds after now (later: 422)")
AIRLOOP_SERVING_GC_FREEZE = EnvVar("AIRLOOP_SERVING_GC_FREEZE", str, "1", "0: do not gc.freeze() after start-up")
AIRLOOP_PREDLOG_PROCESS = EnvVar("AIRLOOP_PREDLOG_PROCESS", str, "1",
                                 "0: serving writes its prediction log from a thread, not a writer process")
AIRLOOP_ADMIN_TOKEN = EnvVar("AIRLOOP_ADMIN_TOKEN", str, None, "admin token of serving and the lifecycle API (secret)")
AIRLOOP_TENANT_TOKENS = EnvVar("AIRLOOP_TENANT_TOKENS", str, None, "tenant=token,... serving tokens (secret)")
AIRLOOP_PRELOAD = EnvVar("AIRLOOP_PRELOAD", str, None, "auto | off | module list the scheduler/workers pre-import")
AIRLOOP_CODE_VERSION = EnvVar("AIRLOOP_CODE_VERSION", str, None, "code version tag (default: git describe)")
AIRLOOP_TASK_RETRIES = EnvVar("AIRLOOP_TASK_RETRIES", int, None,
                              "retries of every airloop DAG task (default: per DAG family)")
AIRLOOP_RETRY_DELAY_S = EnvVar("AIRLOOP_RETRY_DELAY_S", float, None,
                               "seconds between task retries of every airloop DAG (default: per DAG family)")
AIRLOOP_FAULT_AT = EnvVar("AIRLOOP_FAULT_AT", str, None,
                          "tests only: folder of armed fault points (airloop.registry.reconcile.fault_point)")
MLFLOW_PORT = EnvVar("MLFLOW_PORT", str, "5000", "MLflow UI port of `make up`")
AIRFLOW_PORT = EnvVar("AIRFLOW_PORT", str, "8080", "Airflow UI/API port of `make up`")

#: The secrets ``airloop init`` generates (``<state>/secrets.env``) and which processes need each:
#: a process is started with only the secrets its role needs (:func:`process_environ`).
SECRET_VARS: dict[str, frozenset[str]] = {
    "AIRFLOW__CORE__FERNET_KEY": frozenset({"airflow"}),
    "AIRFLOW__API_AUTH__JWT_SECRET": frozenset({"airflow"}),
    "AIRFLOW__API__SECRET_KEY": frozenset({"airflow"}),
    # Airflow's tasks reload serving (connection airloop_serving); its plugin API takes the admin token
    "AIRFLOW_CONN_AIRLOOP_SERVING": frozenset({"airflow"}),
    "AIRLOOP_ADMIN_TOKEN": frozenset({"airflow", "serving"}),
    "AIRLOOP_TENANT_TOKENS": frozenset({"airflow", "serving"}),
}


def process_environ(role: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) for a child process of ``role``
    (``airflow``, ``serving``, ``mlflow``, ...), without the secrets that role does not need."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k not in SECRET_VARS or role in SECRET_VARS[k]}


#: The table, by name.
ENV_VARS: dict[str, EnvVar] = {v.name: v for v in list(globals().values()) if isinstance(v, EnvVar)}

# --------------------------------------------------------------------------------------------
# Settings (endpoints, paths, secrets) — from the environment / .env
# --------------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (``#`` comments, blank lines, an optional ``export``
    prefix and matching quotes around a value). The subset of python-dotenv's syntax that
    ``.env.example`` uses, without its import cost (~0.25 s of regex compilation in every DAG
    file parse); ``tests/unit/core/test_pipeline.py`` checks both agree on ``.env.example``."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def _load_dotenv(root: Path) -> None:
    """Load ``<root>/.env`` into ``os.environ`` without overriding variables already set."""
    env_file = root / ".env"
    if env_file.is_file():
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)


class Settings(BaseModel):
    """Where airloop keeps its state and how it reaches its services."""

    model_config = ConfigDict(frozen=True)

    root: Path
    state_dir: Path
    pipelines_dir: Path
    default_pipeline: str
    data_dir: Path
    mlflow_tracking_uri: str
    mlflow_registry_uri: str | None
    mlflow_artifact_root: str
    monitoring_db_uri: str
    #: Days of ``predictions`` the monitoring DAG keeps before each interval's end (0: keep all;
    #: ``AIRLOOP_PREDICTION_RETENTION_DAYS``, applied by :func:`airloop.core.partitions.apply_retention`).
    prediction_retention_days: int = Field(default=0, ge=0)
    #: Runs of a monitoring DAG at once (``AIRLOOP_MONITORING_MAX_ACTIVE_RUNS``; the DAG's
    #: ``max_active_runs`` and what ``benchmarks/backfill.py`` gives its backfill). Safe at any value:
    #: the tasks that read earlier intervals' results wait for them (``depends_on_past``).
    monitoring_max_active_runs: int = Field(default=3, ge=1)
    optuna_storage: str
    serving_url: str
    #: Secrets are left out of ``repr()`` (and so of logs and tracebacks that print settings).
    admin_token: str | None = Field(repr=False)
    #: Per-tenant serving tokens (``AIRLOOP_TENANT_TOKENS=tenant=token,...``; see airloop.serving.gateway).
    tenant_tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    #: Serving routes the operator opened without a token (``AIRLOOP_SERVING_OPEN_ROUTES``; default none).
    serving_open_routes: frozenset[str] = frozenset()

    @property
    def snapshots_dir(self) -> Path:
        """Immutable training snapshots, one folder per pipeline and interval."""
        return self.state_dir / "snapshots"

    @property
    def validation_dir(self) -> Path:
        """Great Expectations results and Data Docs, per pipeline and interval."""
        return self.state_dir / "validation"

    @property
    def reports_dir(self) -> Path:
        """Evidently drift reports, per pipeline, tenant and interval (monitoring writes them)."""
        return self.state_dir / "reports"

    @property
    def quarantine_dir(self) -> Path:
        """Copies of partitions that failed validation (kept, never deleted)."""
        return self.state_dir / "quarantine"


def _resolve(root: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (root / path).resolve()


def project_root(env: Mapping[str, str]) -> Path:
    """The project root: ``AIRLOOP_HOME``, else ``AIRFLOW_HOME`` when it holds ``include/airloop``,
    else the checkout this package sits in."""
    if AIRLOOP_HOME.get(env):
        return Path(AIRLOOP_HOME.get(env)).resolve()
    airflow_home = env.get("AIRFLOW_HOME")
    if airflow_home and (Path(airflow_home) / "include" / "airloop").is_dir():
        return Path(airflow_home).resolve()
    return DEFAULT_ROOT.resolve()


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ`` plus the root ``.env``).

    The project root is ``AIRLOOP_HOME``, else ``AIRFLOW_HOME`` when it holds ``include/airloop``,
    else the checkout this package sits in.
    """
    if environ is None:
        root_guess = Path(AIRLOOP_HOME.get() or DEFAULT_ROOT)
        _load_dotenv(root_guess)
        environ = dict(os.environ)
    env = environ
    root = project_root(env)
    state = _resolve(root, AIRLOOP_STATE_DIR.get(env))
    tracking = MLFLOW_TRACKING_URI.get(env) or f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"
    conn_id = AIRLOOP_MONITORING_CONN_ID.get(env)
    return Settings(
        root=root,
        state_dir=state,
        pipelines_dir=_resolve(root, AIRLOOP_PIPELINES_DIR.get(env)),
        default_pipeline=AIRLOOP_PIPELINE.get(env),
        data_dir=_resolve(root, AIRLOOP_DATA_DIR.get(env) or str(state / "data")),
        mlflow_tracking_uri=tracking,
        mlflow_registry_uri=MLFLOW_REGISTRY_URI.get(env),
        mlflow_artifact_root=AIRLOOP_MLFLOW_ARTIFACT_ROOT.get(env) or str(state / "mlflow" / "artifacts"),
        monitoring_db_uri=AIRLOOP_MONITORING_DB_URI.get(env)
        or (f"airflow-conn://{conn_id}" if conn_id else None)
        or f"sqlite:///{state / 'monitoring.db'}",
        prediction_retention_days=AIRLOOP_PREDICTION_RETENTION_DAYS.get(env),
        monitoring_max_active_runs=AIRLOOP_MONITORING_MAX_ACTIVE_RUNS.get(env),
        optuna_storage=AIRLOOP_OPTUNA_STORAGE.get(env) or f"journal://{state / 'optuna' / 'journal.log'}",
        serving_url=AIRLOOP_SERVING_URL.get(env).rstrip("/"),
        admin_token=AIRLOOP_ADMIN_TOKEN.get(env),
        tenant_tokens=parse_tenant_tokens(AIRLOOP_TENANT_TOKENS.get(env)),
        serving_open_routes=parse_route_names(AIRLOOP_SERVING_OPEN_ROUTES.get(env)),
    )


def parse_route_names(value: str | None) -> frozenset[str]:
    """``"predict, /feedback"`` → ``{"predict", "feedback"}`` (which names serving accepts is
    checked where the app is built, :func:`airloop.serving.auth.open_routes`)."""
    return frozenset(name.strip().strip("/").lower() for name in (value or "").split(",") if name.strip().strip("/"))


def parse_tenant_tokens(value: str | None) -> dict[str, str]:
    """``"acme=tok1,globex=tok2"`` → ``{"acme": "tok1", "globex": "tok2"}``; ``ConfigError`` on a
    malformed entry (the message never shows a token)."""
    tokens: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        tenant, sep, token = item.partition("=")
        if not sep or not tenant.strip() or not token.strip():
            raise ConfigError(f"AIRLOOP_TENANT_TOKENS: expected tenant=token entries, got one for {tenant.strip()[:40]!r}")
        tokens[tenant.strip()] = token.strip()
    return tokens


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide cached :func:`load_settings` (call ``get_settings.cache_clear()`` in tests)."""
    return load_settings()
