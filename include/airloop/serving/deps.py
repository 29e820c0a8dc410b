"""FastAPI dependencies of the serving routes: the per-app state that ``create_app`` puts on
``app.state`` (one app per pipeline, so nothing here is process-global).

Each dependency is an ``async def`` so FastAPI calls it on the event loop (a plain ``def`` would
cost a worker-thread hop per request); the ``Annotated`` aliases are what routes declare.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.serving.batching import MicroBatcher
from airloop.serving.handlers import Score
from airloop.serving.manager import ModelManager
from airloop.serving.metrics import ServingMetrics
from airloop.serving.predict import PredictJob
from airloop.serving.predlog import PredictionLogger


async def get_manager(request: Request) -> ModelManager:
    """The app's model manager (``app.state.manager``)."""
    return request.app.state.manager


async def get_metrics(request: Request) -> ServingMetrics:
    """The app's Prometheus metrics (``app.state.metrics``)."""
    return request.app.state.metrics


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with (``app.state.settings``)."""
    return request.app.state.settings


async def get_config(request: Request) -> PipelineConfig:
    """The pipeline the app serves (``app.state.config``)."""
    return request.app.state.config


async def get_prediction_logger(request: Request) -> PredictionLogger | None:
    """The prediction log (``app.state.prediction_logger``; None when logging is off)."""
    return request.app.state.prediction_logger


async def get_shadow_logger(request: Request) -> PredictionLogger | None:
    """The shadow-prediction log (``app.state.shadow_logger``; None when logging is off)."""
    return request.app.state.shadow_logger


async def get_batcher(request: Request) -> MicroBatcher[PredictJob]:
    """The ``/predict`` micro-batcher (``app.state.batcher``)."""
    return request.app.state.batcher


async def get_score(request: Request) -> Score:
    """The pipeline's score function (``app.state.score``)."""
    return request.app.state.score


async def get_ab_tests(request: Request) -> bool:
    """Whether A/B and shadow tests are enabled in this app (``app.state.ab_tests``)."""
    return request.app.state.ab_tests


ManagerDep = Annotated[ModelManager, Depends(get_manager)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ConfigDep = Annotated[PipelineConfig, Depends(get_config)]
PredictionLogDep = Annotated[PredictionLogger | None, Depends(get_prediction_logger)]
ShadowLogDep = Annotated[PredictionLogger | None, Depends(get_shadow_logger)]
BatcherDep = Annotated[MicroBatcher[PredictJob], Depends(get_batcher)]
ScoreDep = Annotated[Score, Depends(get_score)]
AbTestsDep = Annotated[bool, Depends(get_ab_tests)]
