"""JSON responses of the serving API (errors included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

if TYPE_CHECKING:
    from airloop.serving.manager import ModelManager


def _json(content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
          background: BackgroundTask | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=dict(headers) if headers else None,
                        background=background)


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
