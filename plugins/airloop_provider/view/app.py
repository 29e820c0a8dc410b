"""The MLOps view: server-rendered pages mounted on the Airflow API server at ``/airloop/ui``
(``plugins/airloop_plugin.py``), shown inside the Airflow UI as the "MLOps" nav item and as a tab
on each pipeline's DAGs (iframes of the same origin).

Pages read through :mod:`airloop.tasks.overview` (the same read models as the JSON API) and sit
behind the plugin API's auth (the Airflow login's ``_token`` cookie or a Bearer JWT, authorised per
pipeline); errors are HTML pages with the right status (401 links to the login, 403, 404).
Actions are not handled here: the page's script triggers the lifecycle DAGs through Airflow's own
REST API (``POST /api/v2/dags/{dag_id}/dagRuns``), so each is an audited DAG run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from airloop_provider.api import auth
from airloop_provider.view.render import metric as metric_of
from airloop_provider.view.render import render

HERE = Path(__file__).resolve().parent
#: where the plugin mounts this app under the API server's base path
MOUNT = "/airloop/ui"


def _links(request: Request) -> dict[str, str]:
    """URL prefixes of this view, the plugin API and the Airflow UI, from the mount point (so a
    base path like ``/airflow`` is kept)."""
    root = request.scope.get("root_path", "").rstrip("/")
    airflow = root[: -len(MOUNT)] if root.endswith(MOUNT) else ""
    return {"ui": root, "api": f"{airflow}/airloop/api/v1", "airflow": airflow, "static": f"{root}/static"}


#: DAG kinds whose runs the view's actions trigger (POST on each is needed to see the forms)
ACTION_DAGS = ("promote", "rollback", "abtest", "train")


def create_view_app() -> FastAPI:
    """The view's FastAPI app (mounted by the plugin at ``/airloop/ui``)."""
    app = FastAPI(title="airloop MLOps view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def error_page(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        links = _links(request)
        login = f"{links['airflow']}/auth/login?next={quote(request.url.path)}" if exc.status_code == 401 else None
        html = render("error.html", links=links, status=exc.status_code, detail=str(exc.detail), login=login)
        return HTMLResponse(html, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, principal: auth.UserDep) -> HTMLResponse:
        """Every pipeline the user may read, as a model card."""
        from airloop.core import store
        from airloop.core.pipeline import load_all_pipelines
        from airloop.core.settings import get_settings
        from airloop.tasks import overview

        settings = get_settings()
        engine = store.get_engine(settings.monitoring_db_uri)
        configs, errors = load_all_pipelines(settings)
        cards = []
        for config in configs:
            if auth.can_read(principal, config):
                cards.append({"config": config, "card": overview.pipeline_card(config, settings, engine)})
        return HTMLResponse(render("index.html", links=_links(request), cards=cards, errors=errors))

    @app.get("/pipelines/{pipeline}", response_class=HTMLResponse)
    def pipeline_page(request: Request, ctx: auth.Reader) -> HTMLResponse:
        """One pipeline in full: card, drift and performance charts, ledger, runs, alerts, A/B, actions
        (the forms only for a user who may trigger the pipeline's lifecycle and training DAGs)."""
        page = pipeline_data(ctx.config, ctx.settings, ctx.engine)
        can_act = auth.allowed(ctx.principal, ctx.config, "POST", ACTION_DAGS)
        return HTMLResponse(render("pipeline.html", links=_links(request), config=ctx.config, can_act=can_act, **page))

    @app.get("/dags/{dag_id}")
    def dag_tab(request: Request, dag_id: str, principal: auth.UserDep) -> RedirectResponse:
        """The DAG tab: the card of the pipeline ``dag_id`` belongs to."""
        from airloop.core.pipeline import load_all_pipelines

        for config in load_all_pipelines()[0]:
            if dag_id.startswith(f"{config.qualified_name}__"):
                return RedirectResponse(f"{_links(request)['ui']}/pipelines/{config.name}", status_code=303)
        raise HTTPException(404, f"the DAG {dag_id!r} belongs to no airloop pipeline")

    return app


def pipeline_data(config, settings, engine) -> dict[str, Any]:
    """Everything the pipeline page shows, from the read models."""
    from airloop.tasks import overview

    from airloop_provider.view import charts

    card = overview.pipeline_card(config, settings, engine)
    drift = overview.drift_history(engine, config)
    runs = overview.monitoring_runs(engine, config, limit=400)
    drift_charts = [(name, charts.drift_chart(name, points)) for name, points in drift["features"].items()]
    return {
        "card": card,
        "versions": overview.versions(config, settings),
        "drift_charts": drift_charts,
        "performance_chart": performance_chart(config, runs),
        "runs": runs,
        "alerts": overview.alerts(engine, config, limit=100),
        "retrains": overview.retrain_requests(engine, config, limit=100),
        "abtests": overview.ab_tests(config, settings, engine),
        "ledger": overview.ledger_timeline(engine, config),
    }


def performance_chart(config, runs: list[dict[str, Any]]):
    """Per monitored interval, oldest first: the study metric on labelled traffic (live), the
    label-free estimate of it (when monitoring stores one for that metric) and the version's
    holdout figure; ``None`` when no interval has any of them."""
    from airloop_provider.view import charts

    metric = config.training.metric
    ordered = sorted(runs, key=lambda r: str(r.get("interval_start")))
    series = {
        f"live {metric}": [metric_of(r.get("performance"), metric) for r in ordered],
        f"estimated {metric}": [r.get("estimated_value") if r.get("estimated_metric") == metric else None
                                for r in ordered],
        f"holdout {metric}": [metric_of(r.get("reference_performance"), metric) for r in ordered],
    }
    series = {name: values for name, values in series.items() if any(v is not None for v in values)}
    if not series:
        return None
    return charts.line_chart(f"{metric}: live vs holdout", [r.get("interval_start") for r in ordered], series)

