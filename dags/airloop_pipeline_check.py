"""
### airloop pipeline files check (no DAG)

The airloop DAG factories (`airloop_training.py`, `airloop_monitoring.py`, `airloop_lifecycle.py`)
build DAGs for every *valid* file in `include/pipelines/` and skip invalid ones, so one broken
file never takes the other pipelines' DAGs down. This file makes the broken ones visible: it
raises an import error (Airflow UI, `airflow dags list-import-errors`) naming each bad file and
field.
"""

from __future__ import annotations

from airloop.core.pipeline import load_all_pipelines
from airloop.core.settings import ConfigError

_, _errors = load_all_pipelines()
if _errors:
    raise ConfigError("invalid airloop pipeline file(s); their DAGs are not built:\n" + "\n".join(_errors.values()))
