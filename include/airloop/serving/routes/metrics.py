"""``GET /metrics``: Prometheus text exposition (one registry per app)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from airloop.serving import protocol
from airloop.serving.deps import MetricsDep

router = APIRouter()


@router.get(protocol.METRICS, response_class=Response, responses={200: {
    "description": "Prometheus text exposition", "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
