"""``POST /explain``: per-prediction explanations of posted records or logged predictions.

Behind the same tenant token as ``/predict`` (:class:`airloop.serving.auth.TenantGuard`); logged
predictions are looked up under the caller's tenant (``X-Tenant``, else the pipeline's) only.
The work (a version load, the explanation) runs in a worker thread; see
:mod:`airloop.serving.explanations`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from airloop.models.explain import ExplainError
from airloop.models.schema import RecordValidationError
from airloop.models.trust import ModelLoadError
from airloop.serving import protocol
from airloop.serving.deps import ManagerDep, SettingsDep
from airloop.serving.explanations import ExplainerCache, ExplainRequest, ExplainResponse, explain_request
from airloop.serving.openapi import TENANT_PARAMETER
from airloop.serving.responses import ErrorResponse, _json, error_responses
from airloop.serving.schema import request_tenant

log = logging.getLogger(__name__)

router = APIRouter()

_CACHE_LOCK = threading.Lock()

_ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 401, 403, 500),
    404: {"model": ErrorResponse, "description": "Unknown prediction ids (named) or model version."},
    409: {"model": ErrorResponse, "description": "The model cannot be explained (e.g. no background rows for its "
                                                 "method)."},
    413: {"model": ErrorResponse, "description": "More records or ids than /predict accepts."},
    422: {"model": ErrorResponse, "description": "Invalid body, records or class (the field is named)."},
    503: {"model": ErrorResponse, "description": "No model loaded, or the registry / monitoring store unavailable."},
}


def _cache(request: Request, manager: Any) -> ExplainerCache:
    """The app's :class:`ExplainerCache` (``app.state.explainers``, made on first use)."""
    state = request.app.state
    with _CACHE_LOCK:
        cache = getattr(state, "explainers", None)
        if cache is None or cache.manager is not manager:
            cache = state.explainers = ExplainerCache(manager)
    return cache


@router.post(protocol.EXPLAIN, response_model=ExplainResponse, responses=_ERRORS,
             openapi_extra={"parameters": [TENANT_PARAMETER]})
async def explain(request: Request, body: ExplainRequest, manager: ManagerDep, settings: SettingsDep) -> Any:
    """Explain ``{"records": [...]}`` or ``{"prediction_ids": [...]}`` (optional ``version``,
    ``top_k``, ``class``): per record the base value, the output and each input feature's
    contribution in the output's space (``base_value + sum(contributions) == output``)."""
    try:
        tenant = request_tenant(request, manager.config.tenant)
        return await run_in_threadpool(explain_request, _cache(request, manager), body, tenant,
                                       settings.monitoring_db_uri)
    except RecordValidationError as err:
        return _json({"detail": err.errors}, err.status_code)
    except ExplainError as err:
        return _json({"detail": [{"field": err.field, "message": str(err)}]}, err.status_code)
    except ModelLoadError as err:
        return _json({"detail": str(err)}, err.status_code)
    except Exception:
        log.exception("explanation failed (%s)", manager.model_name)
        return _json({"detail": "explanation failed"}, 500)
