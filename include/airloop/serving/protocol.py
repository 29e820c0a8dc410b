"""What the serving server and its client agree on: tenants, headers, routes."""

from __future__ import annotations

from airloop.core.pipeline import PipelineConfig

#: The HTTP header carrying the request key when ``key_field == "header"``.
KEY_HEADER_NAME = "X-Request-Key"


SMOKE_TENANT = "airloop-smoke"


def tenant_route(config: PipelineConfig) -> str:
    """The URL prefix of a pipeline in the serving process: ``/t/<tenant>/<pipeline>``."""
    return f"/t/{config.tenant}/{config.name}"
