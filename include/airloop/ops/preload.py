"""Pre-import the task libraries in the Airflow process that forks the task processes.

Airflow runs every task in a process forked from a long-lived one: the LocalExecutor's workers
(forked from the scheduler) or the Celery worker's pool. A task then imports what it needs:
for the monitoring task that is Evidently, MLflow, pandas and scikit-learn, several seconds per
task even with compiled bytecode, repeated for every task of every interval of a backfill. If
the parent has imported them before it forks, every task inherits them for free (copy on
write). Airflow does the same for its own modules (the Celery executor's
``celery_import_modules`` hook, the DAG processor's ``parsing_pre_import_modules``); this module
extends it to the libraries airloop's tasks use.

``config/airflow_local_settings.py`` (Airflow imports it at start-up in every process) calls
:func:`preload_for_process`. Only the processes that fork tasks import anything: ``airflow
scheduler`` with a LocalExecutor and ``airflow celery worker``; the API server, the DAG
processor, the triggerer and the CLI stay light. ``AIRLOOP_PRELOAD`` (environment or ``.env``)
picks the modules: empty or ``auto`` = :data:`DEFAULT_MODULES`, ``off`` = none, else a
comma-separated list. ``benchmarks/backfill.py`` measures the effect.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from airloop.core.settings import AIRLOOP_PRELOAD

log = logging.getLogger(__name__)


#: What airloop's tasks import (training: GX, Optuna, scikit-learn, MLflow; monitoring: Evidently,
#: the drift statistics, the stores). Each is imported only if installed.
DEFAULT_MODULES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "scipy.stats",
    "sqlalchemy",
    "sklearn.compose",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "optuna",
    "mlflow",
    "mlflow.sklearn",
    # the local profile's registry client: its import maps every ORM class (configure_mappers),
    # ~0.3 s per task otherwise (py-spy over a backfill)
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "great_expectations",
    "evidently",
    "evidently.presets",
    "airloop.tasks.training",
    "airloop.tasks.monitoring",
    "airloop.tasks.lifecycle",
    "airloop.training.search",
    "airloop.data.validation",
    "airloop.training.evaluation",
    "airloop.registry.client",
    "airloop.registry.lifecycle",
    "airloop.monitoring.alerts",
    "airloop.monitoring.interval",
    "airloop.monitoring.driftstats",
    # the drift cell pass's compiler (airloop.monitoring.ecdf._kernel), ~0.5 s to import
    "numba",
    # what each task's parse of its DAG file imports (``@dag`` / ``@task``)
    "airflow.sdk.definitions.decorators",
    "airflow.providers.standard.decorators.python",
)


OFF_VALUES = frozenset({"off", "0", "false", "no", "none"})


def forks_tasks(argv: Sequence[str], executor: str) -> bool:
    """Whether this Airflow process forks task processes: ``airflow scheduler`` running a
    LocalExecutor (its workers are forked from it) or ``airflow celery worker``."""
    args = [a for a in argv[1:] if not a.startswith("-")]
    if args[:1] == ["scheduler"]:
        return any(name.strip().split(".")[-1] == "LocalExecutor" for name in executor.split(","))
    return args[:2] == ["celery", "worker"]


def modules_to_preload(argv: Sequence[str], executor: str, setting: str | None) -> tuple[str, ...]:
    """The modules this process should import before it forks tasks (pure: no imports).

    ``setting`` is ``AIRLOOP_PRELOAD``: empty/``auto`` → :data:`DEFAULT_MODULES`, ``off`` →
    nothing, else the comma-separated module names. Processes that fork no tasks get nothing.
    """
    if not forks_tasks(argv, executor):
        return ()
    value = (setting or "").strip()
    if value.lower() in OFF_VALUES:
        return ()
    if value.lower() in ("", "auto"):
        return DEFAULT_MODULES
    return tuple(name.strip() for name in value.split(",") if name.strip())


def preload(modules: Sequence[str]) -> dict[str, float]:
    """Import ``modules`` in order; return the seconds each took. A module that fails to import
    is logged and skipped: a missing optional library must not stop the scheduler."""
    seconds: dict[str, float] = {}
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import error only costs the speed-up
            log.warning("airloop preload: could not import %s (%s: %s); tasks will import it themselves",
                        name, type(exc).__name__, exc)
            continue
        seconds[name] = time.perf_counter() - started
    return seconds


def _setting(environ: Mapping[str, str]) -> str | None:
    """``AIRLOOP_PRELOAD`` from the environment, else from the project's ``.env``."""
    if AIRLOOP_PRELOAD.is_set(environ):
        return environ[AIRLOOP_PRELOAD.name]
    from airloop.core.settings import project_root, read_env_file

    env_file = project_root(environ) / ".env"
    return read_env_file(env_file).get(AIRLOOP_PRELOAD.name) if env_file.is_file() else None


def preload_for_process(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Pre-import the task libraries if this is a process that forks tasks; return what was
    imported. Called by ``config/airflow_local_settings.py``."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if not forks_tasks(argv, "LocalExecutor"):  # neither a scheduler nor a Celery worker: nothing to do
        return ()
    from airflow.configuration import conf  # already loaded: Airflow reads it before the local settings

    modules = modules_to_preload(argv, conf.get("core", "executor", fallback=""), _setting(environ))
    if not modules:
        return ()
    started = time.perf_counter()
    threads_before = threading.active_count()
    seconds = preload(modules)
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:3]
    _report("airloop preload: %d modules in %.1f s before forking tasks (slowest: %s)", len(seconds),
            time.perf_counter() - started, ", ".join(f"{name} {s:.1f} s" for name, s in slowest))
    if threading.active_count() != threads_before:
        # Forking a process that runs threads can copy a lock another thread holds.
        _report("airloop preload: importing started %d thread(s): %s",
                threading.active_count() - threads_before, [t.name for t in threading.enumerate()], level=logging.WARNING)
    return tuple(seconds)


def _report(message: str, *args: object, level: int = logging.INFO) -> None:
    """Log ``message``; Airflow configures logging only after the local settings are imported,
    so until then the line goes to stderr (the process's log) instead of being dropped."""
    if logging.getLogger().handlers:
        log.log(level, message, *args)
    else:
        print(message % args, file=sys.stderr, flush=True)
