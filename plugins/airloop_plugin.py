"""Airflow plugin: mounts the airloop lifecycle API on the Airflow API server at ``/airloop``
(``/airloop/api/v1/pipelines/<pipeline>/…``; see ``airloop_provider/api.py``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airloop_provider.api import create_api_app
from airloop_provider.timetables import TIMETABLES


class AirloopPlugin(AirflowPlugin):
    """airloop: lifecycle API (audit, lineage, compare, promote, rollback)."""

    name = "airloop"
    # schedules that end on the pipeline's schedule.end_date without ending the DAG (manual runs work)
    timetables = TIMETABLES
    fastapi_apps = [{"app": create_api_app(), "url_prefix": "/airloop", "name": "airloop lifecycle API"}]
