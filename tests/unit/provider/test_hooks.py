"""airloop_provider.hooks.ServingHook: the serving endpoint from an Airflow connection (given as
``AIRFLOW_CONN_*``), else from the airloop settings."""

from __future__ import annotations

import pytest

from airloop_provider.hooks import ServingHook


@pytest.fixture
def no_serving_conn(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_AIRLOOP_SERVING", raising=False)


def test_hook_metadata():
    assert ServingHook.default_conn_name == "airloop_serving"
    assert ServingHook.conn_name_attr == "serving_conn_id"
    assert ServingHook.conn_type == "http"
    assert ServingHook().serving_conn_id == "airloop_serving"


def test_init_only_assigns(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the connection was read at construction")

    monkeypatch.setattr(ServingHook, "get_connection", classmethod(boom))
    hook = ServingHook(serving_conn_id="other")
    assert hook.serving_conn_id == "other"
    assert "endpoint" not in vars(hook)  # built lazily


def test_endpoint_from_the_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_SERVING", "https://:conn-token-123@serving.example:8443")
    endpoint = ServingHook().endpoint
    assert endpoint.url == "https://serving.example:8443"
    assert endpoint.token == "conn-token-123"


def test_endpoint_of_a_named_connection_without_password_or_port(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_STAGING_SERVING", "http://10.0.0.5")
    endpoint = ServingHook(serving_conn_id="staging_serving").endpoint
    assert endpoint.url == "http://10.0.0.5"
    assert endpoint.token is None


def test_endpoint_of_a_connection_of_another_type_uses_http(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_SERVING", "generic://:tok-generic@127.0.0.1:8001")
    endpoint = ServingHook().endpoint
    assert endpoint.url == "http://127.0.0.1:8001"
    assert endpoint.token == "tok-generic"


def test_endpoint_is_cached(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_SERVING", "http://127.0.0.1:8001")
    hook = ServingHook()
    assert hook.endpoint is hook.endpoint


def test_falls_back_to_the_settings(airloop_settings, no_serving_conn):
    """No connection defined: ``AIRLOOP_SERVING_URL`` / ``AIRLOOP_ADMIN_TOKEN`` of the settings."""
    endpoint = ServingHook().endpoint
    assert endpoint.url == "http://serving.test:9000"
    assert endpoint.token == "settings-token-456"


def test_fallback_without_admin_token(monkeypatch, airloop_settings, no_serving_conn):
    from airloop.core import settings as settings_module

    monkeypatch.setattr(settings_module, "get_settings",
                        lambda: airloop_settings.model_copy(update={"serving_url": "http://127.0.0.1:8000", "admin_token": None}))
    endpoint = ServingHook(serving_conn_id="undefined_serving").endpoint
    assert endpoint.url == "http://127.0.0.1:8000"
    assert endpoint.token is None
