"""JSON responses of the serving API (errors included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

if TYPE_CHECKING:
    from airloop.serving.manager import ModelManager


class FieldError(BaseModel):
    """One reason a request was refused: the record or item it concerns (None: the whole body)
    and the field. FastAPI's own checks (``/explain``'s body) name the field with ``loc``/``msg``."""

    model_config = ConfigDict(extra="allow")

    record: int | None = Field(None, description="Index of the record in the request")
    item: int | None = Field(None, description="Index of the feedback item in the request")
    field: str | None = Field(None, description="The field, header or feature (None: the whole body)")
    message: str | None = None
    loc: list[str | int] | None = None
    msg: str | None = None


class ErrorResponse(BaseModel):
    """A refused request: ``detail`` lists field errors, or says why in one sentence."""

    model_config = ConfigDict(extra="allow")

    detail: list[FieldError] | str
    outcome: str | None = Field(None, description="Admin routes: what became of the request")
    status: str | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error ``codes`` (all :class:`ErrorResponse` bodies)."""
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


#: What each error status of the serving API means.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "A malformed request: a Content-Length that is not a number, or (POST /explain) a body that is not JSON.",
    401: "A bearer token is required (the tenant's, or the admin token).",
    403: "The token is not valid here, the X-Tenant is another tenant, or no admin token is configured.",
    404: "Not found (the field or id is named).",
    409: "A conflict with the serving state (e.g. A/B tests disabled, a test that could not be loaded).",
    413: "The body is larger than AIRLOOP_SERVING_MAX_BODY_BYTES, or has more records than AIRLOOP_SERVING_MAX_RECORDS.",
    422: "The body, a record or a header is invalid: each error names the record and the field.",
    500: "The model failed on valid records (counted as a model error).",
    502: "The registry refused or failed the request.",
    503: "No model is loaded, or the registry / monitoring store is unavailable (retry later).",
}


def _json(content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
          background: BackgroundTask | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=dict(headers) if headers else None,
                        background=background)


def _plain_value(value: Any) -> Any:
    """msgspec's hook for what it does not encode itself: numpy scalars as their Python values."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


#: msgspec's JSON encoder: compact UTF-8 like Starlette's ``JSONResponse``, ~8x faster on a
#: 100-record answer. It writes NaN as ``null``: content must hold finite floats only (the
#: predictor refuses non-finite outputs, :class:`airloop.serving.runtime.NonFiniteOutput`).
_encode = msgspec.json.Encoder(enc_hook=_plain_value).encode


def fast_json(content: Any, status_code: int = 200, background: BackgroundTask | None = None) -> Response:
    """A JSON response of ``content`` (finite floats only) by msgspec: ``/predict``'s answers."""
    return Response(_encode(content), status_code=status_code, media_type="application/json", background=background)


def not_ready(manager: ModelManager) -> JSONResponse:
    """503: no model is loaded (the manager's last load error, if any, says why)."""
    reason = manager.last_error or f"no model loaded for {manager.model_name}"
    return _json({"status": "not ready", "detail": reason}, 503)


def field_errors(err: ValidationError | ValueError) -> list[dict[str, Any]]:
    """``[{"field", "message"}]`` of a body that failed validation (``field`` None for the whole body)."""
    if isinstance(err, ValidationError):
        errors = err.errors(include_url=False)
    else:
        errors = [{"loc": (), "msg": str(err)}]
    return [{"field": ".".join(map(str, e["loc"])) or None, "message": e["msg"]} for e in errors]


class FeedbackAnswer(BaseModel):
    """``POST /feedback``'s answer."""

    model_config = ConfigDict(extra="allow")

    written: int = Field(description="New labels written to ground_truth")
    unchanged: int = Field(0, description="Labels sent again, equal to the stored ones (nothing changed)")
    corrected: int = Field(0, description="Different labels applied as corrections (?correct=true, admin)")


class ModelInfo(BaseModel):
    """A loaded version as ``GET /model`` describes it."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    alias: str | None = None


class ReloadAnswer(BaseModel):
    """``POST /reload``'s answer: the version now served and the one it replaced."""

    model_config = ConfigDict(extra="allow")

    model: ModelInfo
    previous_version: str | None = None


class RefreshAnswer(BaseModel):
    """``POST /abtest/refresh``'s answer: the tests now routed and, by test id, those that failed to load."""

    model_config = ConfigDict(extra="allow")

    tests: list[dict[str, Any]]
    errors: dict[str, str]
