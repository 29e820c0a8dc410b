"""What the serving server and its client agree on: routes, headers, tenants.

Imported by the server (routes, auth, metrics) and by the client (:mod:`airloop.serving.client`)
alike; the client never imports the server.
"""

from __future__ import annotations

from airloop.core.pipeline import PipelineConfig

# Routes of one pipeline's app (also under its tenant route, see :func:`tenant_route`).
PREDICT = "/predict"
FEEDBACK = "/feedback"
HEALTH = "/health"
READY = "/ready"
MODEL = "/model"
RELOAD = "/reload"
ABTEST = "/abtest"
ABTEST_REFRESH = "/abtest/refresh"
METRICS = "/metrics"
EXPLAIN = "/explain"
#: Every route of a pipeline's app.
ROUTES = frozenset({PREDICT, FEEDBACK, HEALTH, READY, MODEL, RELOAD, ABTEST, ABTEST_REFRESH, METRICS, EXPLAIN})
#: Routes open without a tenant token (probes and Prometheus).
OPEN_ROUTES = frozenset({HEALTH, READY, METRICS})
#: Admin routes: only the admin token (checked by the route itself); never opened.
ADMIN_ROUTES = frozenset({RELOAD, ABTEST_REFRESH})
#: The routes that need the tenant's (or the admin) token unless ``AIRLOOP_SERVING_OPEN_ROUTES``
#: names them, by the name that variable uses.
GUARDED_ROUTES = {"predict": PREDICT, "feedback": FEEDBACK, "explain": EXPLAIN, "model": MODEL, "abtest": ABTEST}

#: The HTTP header naming the tenant of a request (checked against the route's tenant).
TENANT_HEADER = "X-Tenant"
#: The HTTP header of a replay (admin token only): ``<start>/<end>`` (ISO 8601), the interval every
#: ``event_ts`` of the request must lie in instead of the window around now.
REPLAY_INTERVAL_HEADER = "X-Airloop-Replay-Interval"
#: The HTTP header carrying the request key when ``key_field == "header"``.
KEY_HEADER_NAME = "X-Request-Key"


#: Tenant of the deploy smoke test's requests (kept apart from real traffic in the prediction log).
SMOKE_TENANT = "airloop-smoke"


def tenant_route(config: PipelineConfig) -> str:
    """The URL prefix of a pipeline in the serving process: ``/t/<tenant>/<pipeline>``."""
    return f"/t/{config.tenant}/{config.name}"
