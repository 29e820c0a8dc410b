"""FastAPI dependencies of the serving routes: the per-app state that ``create_app`` puts on
``app.state`` (one app per pipeline, so nothing here is process-global).

Each dependency is an ``async def`` so FastAPI calls it on the event loop (a plain ``def`` would
cost a worker-thread hop per request); the ``Annotated`` aliases are what routes declare.
``POST /predict`` takes its whole state as one :class:`PredictContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from airloop.serving.window import EventWindow


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


async def get_ab_tests(request: Request) -> bool:
    """Whether A/B and shadow tests are enabled in this app (``app.state.ab_tests``)."""
    return request.app.state.ab_tests


@dataclass(frozen=True, slots=True)
class PredictContext:
    """What ``POST /predict`` reads from ``app.state``, as one dependency: the hot path pays one
    dependency solve instead of six (each costs some 5-10 us of event-loop time per request)."""

    manager: ModelManager
    batcher: MicroBatcher[PredictJob]
    metrics: ServingMetrics
    prediction_logger: PredictionLogger | None
    shadow_logger: PredictionLogger | None
    score: Score
    #: the ``event_ts`` window (:mod:`airloop.serving.window`)
    event_window: EventWindow


async def get_predict_context(request: Request) -> PredictContext:
    """The ``/predict`` state of the app (read from ``app.state`` on every request)."""
    state = request.app.state
    return PredictContext(state.manager, state.batcher, state.metrics, state.prediction_logger, state.shadow_logger,
                          state.score, state.event_window)


ManagerDep = Annotated[ModelManager, Depends(get_manager)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ConfigDep = Annotated[PipelineConfig, Depends(get_config)]
PredictionLogDep = Annotated[PredictionLogger | None, Depends(get_prediction_logger)]
AbTestsDep = Annotated[bool, Depends(get_ab_tests)]
PredictContextDep = Annotated[PredictContext, Depends(get_predict_context)]
