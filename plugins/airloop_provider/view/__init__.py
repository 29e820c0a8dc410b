"""The MLOps view inside the Airflow UI (server-rendered pages at ``/airloop/ui``); see
:mod:`airloop_provider.view.app`."""

from airloop_provider.view.app import create_view_app

__all__ = ["create_view_app"]
