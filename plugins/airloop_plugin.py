"""Airflow plugin: mounts the airloop lifecycle API on the Airflow API server at ``/airloop``
(``/airloop/api/v1/pipelines/<pipeline>/…``; see ``airloop_provider/api``) and the MLOps view at
``/airloop/ui`` (``airloop_provider/view``), shown in the Airflow UI as the "MLOps" nav item and
as an "MLOps" tab on every DAG (the tab opens the card of the DAG's pipeline)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airloop_provider.lazyapp import LazyApp
from airloop_provider.timetables import TIMETABLES


class AirloopPlugin(AirflowPlugin):
    """airloop: lifecycle API (audit, lineage, compare, promote, rollback) and the MLOps view."""

    name = "airloop"
    # schedules that end on the pipeline's schedule.end_date without ending the DAG (manual runs work)
    timetables = TIMETABLES
    # the view first: its mount (/airloop/ui) must match before the API's (/airloop). Built on the
    # first request: every Airflow process (each task too) imports this plugin, only the API
    # server serves it (airloop_provider.lazyapp)
    fastapi_apps = [{"app": LazyApp("airloop_provider.view:create_view_app"), "url_prefix": "/airloop/ui",
                     "name": "airloop MLOps view"},
                    {"app": LazyApp("airloop_provider.api:create_api_app"), "url_prefix": "/airloop",
                     "name": "airloop lifecycle API"}]
    # iframes of the same origin; hrefs are relative to the UI's base URL (no leading slash)
    external_views = [
        {"name": "MLOps", "href": "airloop/ui/", "url_route": "mlops", "destination": "nav", "nav_top_level": True,
         "icon": "airloop/ui/static/mlops.svg", "icon_dark_mode": "airloop/ui/static/mlops-dark.svg"},
        {"name": "MLOps", "href": "airloop/ui/dags/{DAG_ID}", "url_route": "mlops-dag", "destination": "dag",
         "icon": "airloop/ui/static/mlops.svg", "icon_dark_mode": "airloop/ui/static/mlops-dark.svg"},
    ]
