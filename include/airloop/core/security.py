"""Bearer-token parsing and the admin-token check (serving and the plugin API)."""

from __future__ import annotations

import secrets


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def check_admin_token(authorization: str | None, admin_token: str | None) -> int | None:
    """``None`` if ``authorization`` carries the admin token, else the HTTP status to answer.

    403 when no admin token is configured (admin endpoints are never open), 401 when the header
    is missing or the token is wrong. The comparison takes constant time.
    """
    if not admin_token:
        return 403
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return 401
    if not secrets.compare_digest(token.strip().encode(), admin_token.encode()):
        return 401
    return None
