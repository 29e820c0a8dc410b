"""The airloop plugin API, mounted on the Airflow API server at ``/airloop`` (see
``plugins/airloop_plugin.py``): pipelines and their champions, versions with metrics, lineage and
links, drift history, monitoring runs, alerts, retrain requests, A/B tests, the ledger, reports and
validation results, and promotion and rollback, under ``/airloop/api/v1``.

Every route is behind the Airflow login, authorised per pipeline by Airflow's auth manager, or the
admin token for machine clients (:mod:`airloop_provider.api.auth`); only the documentation,
``/airloop/docs`` and ``/airloop/openapi.json``, is open. Handlers are plain functions (FastAPI runs
them in a worker thread) over :mod:`airloop.tasks.overview` and :mod:`airloop.registry`; nothing
heavy is imported until a request comes.
"""

from __future__ import annotations

from fastapi import FastAPI

from airloop_provider.api.auth import PipelineContext, Principal, Reader, UserDep, pipeline_reader, pipeline_writer, require_user

#: the API's prefix inside the mounted app (``airloop.tasks.overview.API_PREFIX``)
API_PREFIX = "/api/v1"

__all__ = ["API_PREFIX", "PipelineContext", "Principal", "Reader", "UserDep", "create_api_app", "pipeline_reader",
           "pipeline_writer", "require_user"]


def create_api_app() -> FastAPI:
    """The FastAPI sub-application (mounted by the plugin, or served on its own in tests)."""
    from airloop.serving.docs import mount_offline_docs

    from airloop_provider.api import lifecycle, monitoring, pipelines
    from airloop_provider.api.errors import ERROR_RESPONSES

    app = FastAPI(title="airloop lifecycle API", docs_url=None, redoc_url=None,
                  description="The airloop MLOps loop over HTTP. Sign in as for the Airflow UI (its `_token` "
                              "cookie, or `Authorization: Bearer <jwt>` from the API server's `POST /auth/token`); "
                              "machine clients may send `Authorization: Bearer <AIRLOOP_ADMIN_TOKEN>`.")
    for module in (pipelines, monitoring, lifecycle):
        app.include_router(module.router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    # /docs (Swagger UI from swagger_ui_bundle, no CDN) and /openapi.json: open, read-only
    mount_offline_docs(app)
    return app
