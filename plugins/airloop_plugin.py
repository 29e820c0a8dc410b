"""Airflow plugin: mounts the airloop lifecycle API on the Airflow API server at ``/airloop``
(``/airloop/api/v1/pipelines/<pipeline>/…``; see ``airloop_provider/api.py``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airloop_provider.api import create_api_app


class AirloopPlugin(AirflowPlugin):
    """airloop: lifecycle API (audit, lineage, compare, promote, rollback)."""

    name = "airloop"
    fastapi_apps = [{"app": create_api_app(), "url_prefix": "/airloop", "name": "airloop lifecycle API"}]
