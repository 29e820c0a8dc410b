"""airloop.ops.preload: which Airflow processes pre-import the task libraries, and the real hook
(``config/airflow_local_settings.py``) as Airflow itself loads it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airloop.ops.preload import DEFAULT_MODULES, forks_tasks, modules_to_preload, preload
from tests.conftest import ROOT


@pytest.mark.parametrize(("argv", "executor", "expected"), [
    (["airflow", "scheduler"], "LocalExecutor", True),
    (["/venv/lib/airflow/__main__.py", "scheduler", "--skip-serve-logs"], "LocalExecutor", True),
    (["airflow", "scheduler"], "airflow.executors.local_executor.LocalExecutor", True),
    (["airflow", "scheduler"], "CeleryExecutor", False),           # Celery workers run the tasks
    (["airflow", "scheduler"], "CeleryExecutor,LocalExecutor", True),
    (["airflow", "celery", "worker", "-q", "default"], "CeleryExecutor", True),
    (["airflow", "celery", "flower"], "CeleryExecutor", False),
    (["airflow", "api-server"], "LocalExecutor", False),
    (["airflow", "dag-processor"], "LocalExecutor", False),
    (["airflow", "triggerer"], "LocalExecutor", False),
    (["airflow", "dags", "list"], "LocalExecutor", False),
    (["pytest", "-q"], "LocalExecutor", False),
])
def test_only_processes_that_fork_tasks_preload(argv, executor, expected):
    assert forks_tasks(argv, executor) is expected
    assert bool(modules_to_preload(argv, executor, None)) is expected


@pytest.mark.parametrize(("setting", "expected"), [
    (None, DEFAULT_MODULES), ("", DEFAULT_MODULES), ("auto", DEFAULT_MODULES), (" AUTO ", DEFAULT_MODULES),
    ("off", ()), ("0", ()), ("false", ()), ("None", ()),
    ("pandas, mlflow,,evidently", ("pandas", "mlflow", "evidently")),
])
def test_setting_picks_the_modules(setting, expected):
    assert modules_to_preload(["airflow", "scheduler"], "LocalExecutor", setting) == expected


def test_a_module_that_fails_to_import_is_skipped(caplog):
    seconds = preload(["json", "airloop_no_such_module", "csv"])
    assert list(seconds) == ["json", "csv"]
    assert "could not import airloop_no_such_module" in caplog.text


def _modules_after_importing_airflow(argv: list[str], **env: str) -> set[str]:
    """Start a Python process whose argv is ``argv``, import Airflow (which imports the local
    settings hook from $AIRFLOW_HOME/config) and report which heavy modules are loaded."""
    code = ("import sys; sys.argv = %r; import airflow.settings; "
            "print(' '.join(m for m in ('evidently', 'mlflow', 'optuna', 'great_expectations', 'airloop.monitoring.interval') "
            "if m in sys.modules))" % (argv,))
    environ = {**os.environ, "AIRFLOW_HOME": str(ROOT), "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", **env}
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(out.stdout.split())


def test_airflow_loads_the_hook_and_the_scheduler_preloads():
    """The real hook as Airflow imports it: a scheduler process holds the task libraries before it
    forks anything; an api-server and an explicit ``AIRLOOP_PRELOAD=off`` scheduler hold none."""
    assert _modules_after_importing_airflow(["airflow", "scheduler"]) == {
        "evidently", "mlflow", "optuna", "great_expectations", "airloop.monitoring.interval"}
    assert _modules_after_importing_airflow(["airflow", "api-server"]) == set()
    assert _modules_after_importing_airflow(["airflow", "scheduler"], AIRLOOP_PRELOAD="off") == set()
