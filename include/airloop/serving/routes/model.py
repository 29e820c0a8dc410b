"""``GET /health``, ``GET /ready`` and ``GET /model``: the process and its loaded model."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from airloop.serving import protocol
from airloop.serving.deps import ManagerDep, PredictionLogDep
from airloop.serving.handlers import health_status
from airloop.serving.responses import ModelInfo, _json, error_responses, not_ready

router = APIRouter()


@router.get(protocol.HEALTH)
async def health(manager: ManagerDep, prediction_logger: PredictionLogDep) -> Response:
    """Process liveness (always 200)."""
    return _json(health_status(manager, prediction_logger))


@router.get(protocol.READY, responses=error_responses(503))
async def ready(manager: ManagerDep) -> Response:
    """200 when a model is loaded, else 503."""
    model = manager.current
    if model is None:
        return not_ready(manager)
    return _json({"status": "ready", "model": model.ref()})


@router.get(protocol.MODEL, responses={200: {"model": ModelInfo, "description": "The loaded version"},
                                       **error_responses(401, 403, 503)})
async def model_info(manager: ManagerDep) -> Response:
    """The loaded version: name, version, alias, run, metrics, tags, inputs."""
    model = manager.current
    if model is None:
        return not_ready(manager)
    return _json(model.describe())
