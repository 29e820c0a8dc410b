"""Library errors as HTTP answers: not found 404, a bad argument 422, a refused lifecycle move 409."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict


def call(fn, *args, lifecycle_status: int = 409, **kwargs) -> Any:
    """Run ``fn``; :class:`~airloop.tasks.overview.NotFound` → 404, ``ValueError`` → 422,
    :class:`~airloop.registry.audit.LifecycleError` → ``lifecycle_status`` (reads: a missing
    version, 404; moves: a real conflict, 409)."""
    from airloop.registry.audit import LifecycleError
    from airloop.tasks.overview import NotFound

    try:
        return fn(*args, **kwargs)
    except NotFound as err:
        raise HTTPException(404, str(err)) from None
    except LifecycleError as err:
        raise HTTPException(lifecycle_status, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def environment_or_404(config: Any, environment: str, status: int = 404) -> str:
    """``environment`` if the pipeline has it, else ``status`` (404 in a path; 422 for a body or
    query field) naming the ones it has."""
    names = [env.name for env in config.promotion.path()]
    if environment not in names:
        raise HTTPException(status, f"environment: pipeline {config.name} has no environment {environment!r} "
                                    f"(it has {names})")
    return environment


class ErrorBody(BaseModel):
    """An error answer: ``detail`` says why (a sentence), or lists FastAPI's field errors (``loc``, ``msg``)."""

    model_config = ConfigDict(extra="allow")

    detail: str | list[dict[str, Any]]


#: The error answers every route of the API may give (declared in its OpenAPI document).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A body that is not JSON."},
    401: {"model": ErrorBody, "description": "Not signed in (no or a bad Airflow token, no admin token)."},
    403: {"model": ErrorBody, "description": "Signed in, but not allowed for this pipeline or action."},
    404: {"model": ErrorBody, "description": "No such pipeline, version, report or row."},
    422: {"model": ErrorBody, "description": "An invalid parameter or body (the field is named)."},
}
