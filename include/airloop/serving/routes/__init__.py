"""HTTP routes of the serving API, one :class:`fastapi.APIRouter` per resource.

Routes only translate HTTP: they parse the request, call the handlers of
:mod:`airloop.serving.handlers` (and :mod:`airloop.serving.predict`), map exceptions to status codes
and build the response. The app's state reaches them through the dependencies of
:mod:`airloop.serving.deps`; :func:`airloop.serving.app.create_app` includes :data:`ROUTERS`.
"""

from __future__ import annotations

from fastapi import APIRouter

from airloop.serving.routes import abtest, admin, explain, feedback, metrics, model, predict

#: Every router of the serving app, in the order ``create_app`` includes them.
ROUTERS: tuple[APIRouter, ...] = (
    predict.router, feedback.router, model.router, admin.router, abtest.router, metrics.router, explain.router,
)
