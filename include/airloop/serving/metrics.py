"""Prometheus metrics of the serving process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from airloop.serving import protocol
from airloop.serving.runtime import ServedModel

_ENDPOINTS = protocol.ROUTES


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    """Prometheus metrics of one app, in their own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        """Create the registry and the metrics."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "airloop_serving_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
            registry=self.registry,
        )
        self.prediction_errors = Counter(
            "airloop_serving_prediction_errors",
            "Failed /predict requests by kind: model (the model failed on valid records: 500, one error row, "
            "counted in error_rate) or client (a 4xx: the body, a header or the records are invalid, never in "
            "error_rate).",
            ["kind"], registry=self.registry,
        )
        for kind in ("model", "client"):
            self.prediction_errors.labels(kind)
        self.latency = Histogram(
            "airloop_serving_prediction_latency_seconds", "Time to validate and predict one request.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.records = Counter(
            "airloop_serving_records_predicted", "Records predicted.", registry=self.registry
        )
        self.model_info = Gauge(
            "airloop_serving_model_info", "The loaded model version (value 1).", ["name", "version", "alias"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "airloop_serving_model_version", "Version number of the loaded model (0 = none).", ["name"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "airloop_serving_reloads", "POST /reload calls by outcome.", ["outcome"], registry=self.registry
        )
        self.feedback_labels = Counter(
            "airloop_serving_feedback_labels", "Labels written to ground_truth by POST /feedback.",
            registry=self.registry,
        )
        self.ab_records = Counter(
            "airloop_serving_ab_records", "Records of A/B and shadow tests by variant.", ["variant"],
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "airloop_serving_batch_records", "Records per model call of the micro-batcher (one or more requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000), registry=self.registry,
        )
        self.batch_requests = Histogram(
            "airloop_serving_batch_requests", "Requests sharing one micro-batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=self.registry,
        )
        self.abtest_refreshes = Counter(
            "airloop_serving_abtest_refreshes", "A/B test refreshes by outcome.", ["outcome"], registry=self.registry
        )

    def set_model(self, model: ServedModel) -> None:
        """Point the model gauges at ``model``."""
        self.model_info.clear()
        self.model_info.labels(model.name, model.version, model.alias or "").set(1)
        self.model_version.labels(model.name).set(float(model.version) if model.version.isdigit() else 0.0)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)


class _RequestCounter:
    """Pure ASGI middleware counting responses by endpoint and status (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get("path", "")
            self.metrics.requests.labels(path if path in _ENDPOINTS else "other", str(status)).inc()
