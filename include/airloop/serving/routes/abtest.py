"""``GET /abtest``: the active A/B and shadow tests."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from airloop.serving import protocol
from airloop.serving.deps import AbTestsDep, ManagerDep
from airloop.serving.handlers import abtest_status
from airloop.serving.responses import _json, error_responses

router = APIRouter()


@router.get(protocol.ABTEST, responses=error_responses(401, 403))
async def abtest_info(manager: ManagerDep, ab_tests: AbTestsDep) -> Response:
    """The active A/B and shadow tests (one per tenant) and the champion serving beside them."""
    return _json(abtest_status(manager, ab_tests))
