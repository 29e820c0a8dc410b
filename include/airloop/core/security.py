"""Bearer tokens: the one parser of ``Authorization: Bearer <token>`` and the admin-token check,
used by serving (tenant guard, admin routes) and by the plugin's lifecycle API."""

from __future__ import annotations

import secrets
from collections.abc import Callable


def bearer_token(authorization: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else ``None`` (other scheme, empty)."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def header_bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of raw ASGI ``headers`` (the first ``authorization`` header), else ``None``."""
    for key, value in headers:
        if key == b"authorization":
            return bearer_token(value)
    return None


def token_matches(token: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return token is not None and secrets.compare_digest(token.encode(), expected.encode())


def check_admin_token(authorization: str | None, admin_token: str | None) -> int | None:
    """``None`` if ``authorization`` carries the admin token, else the HTTP status to answer.

    403 when no admin token is configured (admin endpoints are never open), 401 when the header
    is missing or the token is wrong. The comparison takes constant time.
    """
    if not admin_token:
        return 403
    if not token_matches(bearer_token(authorization), admin_token):
        return 401
    return None


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


#: The one table of generated secrets: Airflow's Fernet key, JWT and API secrets, and the admin token
#: of serving and the lifecycle API (``make init`` writes them once; sandboxes draw fresh ones).
SECRET_GENERATORS: dict[str, Callable[[], str]] = {
    "AIRFLOW__CORE__FERNET_KEY": _fernet_key,
    "AIRFLOW__API_AUTH__JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "AIRFLOW__API__SECRET_KEY": lambda: secrets.token_urlsafe(48),
    "AIRLOOP_ADMIN_TOKEN": lambda: secrets.token_urlsafe(32),
}


def generate_secrets() -> dict[str, str]:
    """A fresh value for every entry of :data:`SECRET_GENERATORS`."""
    return {name: make() for name, make in SECRET_GENERATORS.items()}


def tenant_token() -> str:
    """A fresh serving token for one tenant."""
    return secrets.token_urlsafe(32)
