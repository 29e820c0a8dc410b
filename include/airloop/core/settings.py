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

from pydantic import BaseModel, ConfigDict, Field

PACKAGE_ROOT = Path(__file__).resolve().parent


#: Repository root when airloop runs from a checkout (include/airloop/ -> repo root).
DEFAULT_ROOT = PACKAGE_ROOT.parent.parent


class ConfigError(ValueError):
    """A pipeline file or setting is wrong; the message names the file and the field."""


# --------------------------------------------------------------------------------------------
# Settings (endpoints, paths, secrets) — from the environment / .env
# --------------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (``#`` comments, blank lines, an optional ``export``
    prefix and matching quotes around a value). The subset of python-dotenv's syntax that
    ``.env.example`` uses, without its import cost (~0.25 s of regex compilation in every DAG
    file parse); ``tests/unit/test_config.py`` checks both agree on ``.env.example``."""
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
    optuna_storage: str
    serving_url: str
    admin_token: str | None
    #: Per-tenant serving tokens (``AIRLOOP_TENANT_TOKENS=tenant=token,...``; see airloop.serving.gateway).
    tenant_tokens: dict[str, str] = Field(default_factory=dict, repr=False)

    @property
    def snapshots_dir(self) -> Path:
        """Immutable training snapshots, one folder per pipeline and interval."""
        return self.state_dir / "snapshots"

    @property
    def validation_dir(self) -> Path:
        """Great Expectations results and Data Docs, per pipeline and interval."""
        return self.state_dir / "validation"

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
    if env.get("AIRLOOP_HOME"):
        return Path(env["AIRLOOP_HOME"]).resolve()
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
        root_guess = Path(os.environ.get("AIRLOOP_HOME") or DEFAULT_ROOT)
        _load_dotenv(root_guess)
        environ = dict(os.environ)
    env = environ
    root = project_root(env)
    state = _resolve(root, env.get("AIRLOOP_STATE_DIR") or ".airloop")
    tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"
    return Settings(
        root=root,
        state_dir=state,
        pipelines_dir=_resolve(root, env.get("AIRLOOP_PIPELINES_DIR") or "include/pipelines"),
        default_pipeline=env.get("AIRLOOP_PIPELINE") or "claims_fraud",
        data_dir=_resolve(root, env.get("AIRLOOP_DATA_DIR") or str(state / "data")),
        mlflow_tracking_uri=tracking,
        mlflow_registry_uri=env.get("MLFLOW_REGISTRY_URI") or None,
        mlflow_artifact_root=env.get("AIRLOOP_MLFLOW_ARTIFACT_ROOT")
        or str(state / "mlflow" / "artifacts"),
        monitoring_db_uri=env.get("AIRLOOP_MONITORING_DB_URI")
        or (f"airflow-conn://{env['AIRLOOP_MONITORING_CONN_ID']}" if env.get("AIRLOOP_MONITORING_CONN_ID") else None)
        or f"sqlite:///{state / 'monitoring.db'}",
        optuna_storage=env.get("AIRLOOP_OPTUNA_STORAGE")
        or f"journal://{state / 'optuna' / 'journal.log'}",
        serving_url=(env.get("AIRLOOP_SERVING_URL") or "http://127.0.0.1:8000").rstrip("/"),
        admin_token=env.get("AIRLOOP_ADMIN_TOKEN") or None,
        tenant_tokens=parse_tenant_tokens(env.get("AIRLOOP_TENANT_TOKENS")),
    )


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
