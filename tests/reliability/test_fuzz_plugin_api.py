"""Schemathesis against the plugin API (``/airloop/api/v1``) as the Airflow API server mounts it:
Airflow's real SimpleAuthManager, a real MLflow store and SQLite monitoring store
(:func:`tests.unit.provider.test_api.lifecycle`); unauthenticated, as a signed-in viewer (JWT) and
with the admin token. No answer is a 5xx; every answer is documented (status, content type,
body schema). The figures are printed as one JSON line per run (``pytest -s``)."""

from __future__ import annotations

import socket

import pytest
import schemathesis
from fastapi import FastAPI

from tests.reliability.fuzzing import FuzzReport, fuzz
from tests.unit.provider.test_api import auth_manager, bearer, jwt, lifecycle  # noqa: F401  (module fixtures)
from tests.unit.serving.test_app import TOKEN

pytestmark = pytest.mark.timeout(600)

#: Cases per operation and generation mode, by caller (the file must stay within ~2 minutes on 2 busy cores).
MAX_EXAMPLES = {"anonymous": 6, "viewer": 12, "admin": 12}


@pytest.fixture(scope="module")
def root(lifecycle, auth_manager):  # noqa: F811
    """The API server's shape: a root app with the auth manager's ``/auth``, the plugin at ``/airloop``."""
    from airflow.api_fastapi.app import init_auth_manager

    from airloop.core import settings as settings_module
    from airloop_provider.api import create_api_app

    with socket.socket() as probe:  # a port nobody listens on: deploys and reloads fail fast, reach no real server
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = lifecycle[0].settings.model_copy(update={"serving_url": f"http://127.0.0.1:{closed}"})
    patch = pytest.MonkeyPatch()
    patch.setattr(settings_module, "get_settings", lambda: settings)
    app = FastAPI()
    init_auth_manager(app)
    app.mount("/airloop", create_api_app())
    yield app
    patch.undo()


@pytest.mark.parametrize("who", ["anonymous", "viewer", "admin"])
def test_the_plugin_api_never_answers_5xx_or_off_schema(root, auth_manager, who):  # noqa: F811
    headers = {"anonymous": {}, "viewer": lambda: bearer(jwt(auth_manager, "viewer")),
               "admin": bearer(TOKEN)}[who]
    headers = headers() if callable(headers) else headers
    schema = schemathesis.openapi.from_asgi("/airloop/openapi.json", root)
    report = fuzz(schema, FuzzReport(), headers=headers, max_examples=MAX_EXAMPLES[who],
                  path_parameters={"pipeline": "claims_fraud"})
    print(report.summary(f"plugin API ({who})"))
    assert report.count(500, 600) == 0
    assert report.total >= 50 * MAX_EXAMPLES[who]
    if who == "anonymous":  # all but the docs need the login (a body is parsed first; 404: no route matches)
        assert set(report.statuses) <= {400, 401, 404, 422} and report.statuses[401] > 0, report.statuses
    else:
        assert report.count(200, 300) > 0
