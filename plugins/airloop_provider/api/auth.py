"""Who may call the plugin API: the Airflow login, authorised per pipeline by Airflow's auth manager.

* **People** use the same login as the Airflow UI: the UI's ``_token`` cookie, or a JWT from the
  API server's ``POST /auth/token`` sent as ``Authorization: Bearer <jwt>``. The user is resolved
  by the API server's own :func:`airflow.api_fastapi.core_api.security.get_user`, and the auth
  manager (:func:`airflow.api_fastapi.app.get_auth_manager`, since a mounted plugin app's
  ``app.state`` carries none) decides per pipeline: reading it needs GET on the runs of its
  training and monitoring DAGs, a promotion or rollback POST on the runs of its ``promote`` /
  ``rollback`` DAG.
* **Machines** may send ``Authorization: Bearer <AIRLOOP_ADMIN_TOKEN>`` (compared in constant time);
  it may read and act on every pipeline.

No or an invalid credential answers 401, a user without the permission 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airloop.core.security import token_matches

#: Actor name of a request made with the admin token (the ledger records it).
MACHINE = "admin-token"
#: DAG kinds (``config.dag_id(kind)``) whose runs a reader needs GET on.
READ_DAGS = ("train", "monitor")

_bearer = HTTPBearer(auto_error=False, description="An Airflow JWT (POST /auth/token) or the airloop admin token")


@dataclass(frozen=True)
class Principal:
    """The caller: an Airflow user, or a machine holding the admin token (``user`` None)."""

    name: str
    user: Any = None

    @property
    def machine(self) -> bool:
        return self.user is None


@dataclass(frozen=True)
class PipelineContext:
    """A pipeline the caller may use: its config, the settings, the monitoring store, the caller."""

    config: Any
    settings: Any
    engine: Any
    principal: Principal


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def require_user(request: Request,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Principal:
    """The authenticated caller: the admin token, else the Airflow user of the Bearer JWT or the
    UI's ``_token`` cookie (401 when neither is valid)."""
    from airloop.core.settings import get_settings

    token = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else None
    admin = get_settings().admin_token
    if token and admin and token_matches(token, admin):
        return Principal(MACHINE)
    try:
        from airflow.api_fastapi.core_api.security import get_user

        user = await get_user(request, None, credentials)
    except HTTPException as err:  # Airflow answers 403 for an invalid JWT: it is an authentication failure
        raise _unauthorized(f"Airflow login required: {err.detail}") from None
    except RuntimeError:  # no auth manager (the API served outside the Airflow API server)
        raise _unauthorized("invalid or missing bearer token (no Airflow login on this server)") from None
    return Principal(str(user.get_name()), user)


UserDep = Annotated[Principal, Depends(require_user)]


def _team(dag_id: str) -> str | None:
    from airflow.configuration import conf

    if not conf.getboolean("core", "multi_team", fallback=False):
        return None
    from airflow.models.dag import DagModel

    return DagModel.get_team_name(dag_id)


def allowed(principal: Principal, config: Any, method: str, kinds: tuple[str, ...] | list[str]) -> bool:
    """Whether ``principal`` may ``method`` the runs of the pipeline's ``kinds`` DAGs (all of them)."""
    if principal.machine:
        return True
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    requests = [{"method": method, "access_entity": DagAccessEntity.RUN,
                 "details": DagDetails(id=config.dag_id(kind), team_name=_team(config.dag_id(kind)))} for kind in kinds]
    return bool(get_auth_manager().batch_is_authorized_dag(requests, user=principal.user))


def can_read(principal: Principal, config: Any) -> bool:
    """GET on the runs of the pipeline's training and monitoring DAGs."""
    return allowed(principal, config, "GET", READ_DAGS)


def _context(principal: Principal, pipeline: str, method: str, kinds: tuple[str, ...]) -> PipelineContext:
    from airloop.core import store
    from airloop.core.settings import get_settings
    from airloop.tasks import overview

    settings = get_settings()
    try:
        config = overview.pipeline_config(pipeline, settings)
    except overview.NotFound as err:
        raise HTTPException(404, str(err)) from None
    if not allowed(principal, config, method, kinds):
        dags = ", ".join(config.dag_id(k) for k in kinds)
        raise HTTPException(403, f"{principal.name} may not {'read' if method == 'GET' else 'run'} pipeline "
                                 f"{config.name!r} ({method} on the runs of {dags})")
    return PipelineContext(config, settings, store.get_engine(settings.monitoring_db_uri), principal)


async def pipeline_reader(pipeline: str, principal: UserDep) -> PipelineContext:
    """Dependency of a read route with a ``{pipeline}`` path parameter: 404 for an unknown
    pipeline, 403 without GET on its training and monitoring DAG runs."""
    return await run_in_threadpool(_context, principal, pipeline, "GET", READ_DAGS)


def pipeline_writer(kind: str):
    """Dependency factory of a write route: POST on the runs of the pipeline's ``kind`` DAG
    (``promote``, ``rollback``, ...)."""

    async def writer(pipeline: str, principal: UserDep) -> PipelineContext:
        return await run_in_threadpool(_context, principal, pipeline, "POST", (kind,))

    writer.__name__ = f"pipeline_writer_{kind}"
    return writer


Reader = Annotated[PipelineContext, Depends(pipeline_reader)]
