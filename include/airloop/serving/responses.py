"""JSON responses of the serving API (errors included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask


def _json(content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
          background: BackgroundTask | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=dict(headers) if headers else None,
                        background=background)
