"""Schemathesis against the serving app of a real registered champion (issue 15): whatever the
body, parameters and headers, no answer is a 5xx and every answer is documented (status, content
type, body schema); unauthenticated (every route but the probes closed) and with the admin token. The figures are printed as one
JSON line per run (``pytest -s``)."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.python import asgi

from airloop.serving.app import create_app
from tests.reliability.fuzzing import FuzzReport, fuzz
from tests.unit.serving.test_app import AUTH, registry  # noqa: F401  (module fixture: a real MLflow registry)

pytestmark = pytest.mark.timeout(600)

#: Cases per operation and generation mode (the run must stay within ~2 minutes on 2 busy cores).
MAX_EXAMPLES = 100
#: Operations that load a model or explain records cost more per case.
LIMITS = {"POST /reload": 25, "POST /explain": 20}
#: Routes behind the admin token.
ADMIN_ROUTES = ("POST /reload", "POST /abtest/refresh")


@pytest.fixture(scope="module")
def app(registry):  # noqa: F811
    """The champion served with prediction logging on (rows go to the registry's temporary store)."""
    served = create_app(registry.settings)
    yield served
    asgi.shutdown_lifespans()  # schemathesis started its lifespan: drain the loggers now, not at exit


@pytest.mark.parametrize("headers", [{}, AUTH], ids=["anonymous", "admin"])
def test_serving_never_answers_5xx_or_off_schema(app, headers):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    report = fuzz(schema, FuzzReport(), headers=headers, max_examples=MAX_EXAMPLES, limits=LIMITS)
    print(report.summary(f"serving ({'admin' if headers else 'anonymous'})"))
    assert report.count(500, 600) == 0
    assert report.total >= 400
    if headers:
        predict = report.by_operation["POST /predict"]
        assert predict[200] > 0 and predict[422] > 0, predict  # valid records answered, invalid ones refused
        # the bearer scheme is declared, so negative cases also corrupt the Authorization header
        # (401); a schema-valid case with the admin token is never refused for its token
        assert not {401, 403} & set(report.by_mode["positive"]), report.by_mode
    else:  # closed by default: without a token (or with a generated one) every route but the probes refuses
        for route in ("POST /predict", "POST /feedback", "POST /explain", "GET /model", "GET /abtest"):
            statuses = set(report.by_operation[route])
            assert statuses <= {401, 403}, (route, statuses)
    for route in ADMIN_ROUTES:
        statuses = set(report.by_operation[route])
        if not headers:  # without the token the admin routes refuse, whatever the body
            assert statuses <= {401}, (route, statuses)
