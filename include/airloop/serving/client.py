"""Deploy: tell the serving process to hot-reload an alias, smoke-test it, roll back on failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airloop.serving import protocol
from airloop.serving.protocol import SMOKE_TENANT, tenant_route


class DeployError(RuntimeError):
    """The serving process did not end up healthy on the expected version."""


class ServingUnreachable(DeployError):
    """Serving did not answer at all (down or restarting): nothing was refused, retry later."""


@dataclass(frozen=True)
class ServingEndpoint:
    """Base URL of a serving process and the bearer token its requests send (the admin token,
    from a connection or the env, or a tenant's token)."""

    url: str
    token: str | None

    def headers(self) -> dict[str, str]:
        """Admin authorisation header (``/reload``; also accepted by every tenant's routes)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def for_pipeline(self, config: Any) -> "ServingEndpoint":
        """The pipeline's own routes in the serving process: ``<url>/t/<tenant>/<pipeline>``."""

        route = tenant_route(config)
        return self if self.url.endswith(route) else ServingEndpoint(f"{self.url.rstrip('/')}{route}", self.token)


def reload_alias(endpoint: ServingEndpoint, alias: str, timeout: float = 120.0) -> dict[str, Any]:
    """Ask serving to load ``alias`` beside the current model and swap; raise on refusal."""
    import httpx

    try:
        response = httpx.post(f"{endpoint.url}{protocol.RELOAD}", json={"alias": alias}, headers=endpoint.headers(), timeout=timeout)
    except httpx.HTTPError as err:
        raise ServingUnreachable(f"serving at {endpoint.url} unreachable for {protocol.RELOAD}: {err}") from err
    if response.status_code != 200:
        raise DeployError(f"serving at {endpoint.url} refused /reload of {alias!r}: "
                          f"HTTP {response.status_code} {response.text[:500]}")
    return response.json()


def served_version(endpoint: ServingEndpoint, timeout: float = 10.0) -> str | None:
    """The version serving answers with now (``GET /ready``; ``None``: no model loaded yet).
    Raises :class:`ServingUnreachable` when serving does not answer."""
    import httpx

    try:
        response = httpx.get(f"{endpoint.url}{protocol.READY}", headers=endpoint.headers(), timeout=timeout)
    except httpx.HTTPError as err:
        raise ServingUnreachable(f"serving at {endpoint.url} unreachable for {protocol.READY}: {err}") from err
    if response.status_code != 200:
        return None
    return str((response.json().get("model") or {}).get("version") or "") or None


def refresh_abtest(endpoint: ServingEndpoint, timeout: float = 120.0) -> dict[str, Any]:
    """Ask serving to re-read the running A/B and shadow tests (after one was started, concluded
    or stopped) and load their challengers; return ``{"tests": [...], "errors": {}}``.

    Raises :class:`DeployError` when serving is unreachable or refuses (a challenger that cannot
    be loaded answers 409 with the test's error; the champion keeps serving either way).
    """
    import httpx

    try:
        response = httpx.post(f"{endpoint.url}{protocol.ABTEST_REFRESH}", headers=endpoint.headers(), timeout=timeout)
    except httpx.HTTPError as err:
        raise DeployError(f"serving at {endpoint.url} unreachable for {protocol.ABTEST_REFRESH}: {err}") from err
    if response.status_code != 200:
        raise DeployError(f"serving refused /abtest/refresh: HTTP {response.status_code} {response.text[:500]}")
    return response.json()


def smoke_test(endpoint: ServingEndpoint, expected_version: str, records: list[dict[str, Any]], timeout: float = 30.0) -> dict[str, Any]:
    """Check serving reports ``expected_version``, is ready, and predicts ``records`` correctly."""
    import httpx

    try:
        info = httpx.get(f"{endpoint.url}{protocol.MODEL}", timeout=timeout, headers=endpoint.headers())
        ready = httpx.get(f"{endpoint.url}{protocol.READY}", timeout=timeout)
        # Own tenant: smoke traffic is logged but never mixed into the monitored traffic.
        pred = httpx.post(f"{endpoint.url}{protocol.PREDICT}", json={"records": records}, timeout=timeout,
                          headers={protocol.TENANT_HEADER: SMOKE_TENANT, **endpoint.headers()})
    except httpx.HTTPError as err:
        raise DeployError(f"smoke test: serving at {endpoint.url} unreachable: {err}") from err
    if ready.status_code != 200:
        raise DeployError(f"smoke test: /ready answered {ready.status_code}: {ready.text[:300]}")
    version = str(info.json().get("version")) if info.status_code == 200 else None
    if version != str(expected_version):
        raise DeployError(f"smoke test: serving reports version {version}, expected {expected_version}")
    if pred.status_code != 200:
        raise DeployError(f"smoke test: /predict answered {pred.status_code}: {pred.text[:500]}")
    predictions = pred.json().get("predictions", [])
    if len(predictions) != len(records) or any(p.get("prediction") is None for p in predictions):
        raise DeployError(f"smoke test: {len(records)} records gave {len(predictions)} usable predictions")
    return {"version": version, "records": len(records)}


def predict(endpoint: ServingEndpoint, records: list[dict[str, Any]], *, request_ids: list[str] | None = None,
            event_ts: list[str] | None = None, tenant: str | None = None, http: Any = None,
            timeout: float = 120.0, replay_interval: tuple[Any, Any] | None = None) -> tuple[int, Any]:
    """``POST /predict`` of a batch of ``records`` (with their request ids and ISO event times):
    ``(status code, answer)``, the answer parsed from JSON (else its text). ``http``: an
    ``httpx.Client`` to reuse between calls. ``replay_interval``: ``(start, end)`` datetimes of a
    replay of historical traffic (``X-Airloop-Replay-Interval``; serving accepts it with the
    admin token only). Raises ``httpx.HTTPError`` when serving is unreachable.
    """
    import httpx

    body: dict[str, Any] = {"records": records}
    if request_ids is not None:
        body["request_ids"] = request_ids
    if event_ts is not None:
        body["event_ts"] = event_ts
    headers = {**endpoint.headers(), **({protocol.TENANT_HEADER: tenant} if tenant else {})}
    if replay_interval is not None:
        headers[protocol.REPLAY_INTERVAL_HEADER] = "/".join(ts.isoformat() for ts in replay_interval)
    post = http.post if http is not None else httpx.post
    response = post(f"{endpoint.url}{protocol.PREDICT}", json=body, headers=headers, timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text
