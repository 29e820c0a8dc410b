"""Hooks: turn Airflow connections into the library's endpoint objects."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook


class ServingHook(BaseHook):
    """Reach the airloop serving process described by an Airflow connection.

    Connection (e.g. ``AIRFLOW_CONN_AIRLOOP_SERVING='http://:TOKEN@127.0.0.1:8000'``): host and port
    of the serving process, scheme in the URI (``http``/``https``), the admin token as password.
    When the connection is not defined, the airloop settings (``AIRLOOP_SERVING_URL`` and
    ``AIRLOOP_ADMIN_TOKEN`` from the environment / ``.env``) are used.
    """

    conn_name_attr = "serving_conn_id"
    default_conn_name = "airloop_serving"
    conn_type = "http"
    hook_name = "airloop serving"

    def __init__(self, serving_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.serving_conn_id = serving_conn_id

    @cached_property
    def endpoint(self):
        """The :class:`airloop.serving.client.ServingEndpoint` to call."""
        from airflow.exceptions import AirflowNotFoundException

        from airloop.core.settings import get_settings
        from airloop.serving.client import ServingEndpoint

        try:
            conn = self.get_connection(self.serving_conn_id)
        except AirflowNotFoundException:
            settings = get_settings()
            self.log.info("connection %s not defined; using AIRLOOP_SERVING_URL %s", self.serving_conn_id, settings.serving_url)
            return ServingEndpoint(settings.serving_url, settings.admin_token)
        scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
        port = f":{conn.port}" if conn.port else ""
        return ServingEndpoint(f"{scheme}://{conn.host}{port}", conn.password or None)
