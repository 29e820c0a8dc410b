"""Airflow's local settings hook: Airflow imports this file ($AIRFLOW_HOME/config) at start-up in
every one of its processes.

airloop uses it for one thing: the processes that fork task processes (``airflow scheduler``
with the LocalExecutor, ``airflow celery worker``) import the task libraries once, so each task
inherits them instead of importing Evidently, MLflow, pandas and scikit-learn again
(``airloop.ops.preload``; ``AIRLOOP_PRELOAD=off`` turns it off). No Airflow setting is overridden.
"""

from airloop.ops.preload import preload_for_process

__all__: list[str] = []  # nothing here for airflow.settings to pick up

preload_for_process()
