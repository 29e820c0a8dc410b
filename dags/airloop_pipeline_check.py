"""
### airloop pipeline check — `airloop__pipeline_check`

Checks every file in `include/pipelines/` against its data source and its stored Great
Expectations suite (`airloop check`, daily and on demand): every configured column exists in the
source (with a "did you mean" for a typo), values parse as the declared types, category values
and classes cover the data, the search space fits the estimators, the stored suite is the one
`make suite` writes. The `check_pipelines` task fails, without retrying, naming the pipelines
whose file is wrong (the log holds each report); a source that cannot be read is retried.

The airloop DAG factories (`airloop_training.py`, `airloop_monitoring.py`, `airloop_lifecycle.py`)
build DAGs for every *valid* file and skip invalid ones, so one broken file never takes the other
pipelines' DAGs down. A file that does not even load is made visible here as an import error
(Airflow UI, `airflow dags list-import-errors`) naming the file and field; while there is one,
this DAG is replaced by that error.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import dag, task

from airloop.core.pipeline import load_all_pipelines
from airloop.core.settings import ConfigError, get_settings
from airloop_provider.dag_defaults import default_args

_, _errors = load_all_pipelines()
if _errors:
    raise ConfigError("invalid airloop pipeline file(s); their DAGs are not built:\n" + "\n".join(_errors.values()))


@dag(
    dag_id="airloop__pipeline_check",
    description="Check every pipeline file against its source and its GX suite",
    doc_md=__doc__,
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["airloop", "check"],
    default_args=default_args("monitoring"),
)
def pipeline_check():
    @task
    def check_pipelines() -> dict:
        from airflow.exceptions import AirflowFailException

        from airloop.tasks import check as stages

        try:
            return stages.check_pipelines(get_settings())
        except stages.ConfigurationError as err:  # a wrong pipeline file: a retry cannot help
            raise AirflowFailException(str(err)) from err

    check_pipelines()


pipeline_check()
