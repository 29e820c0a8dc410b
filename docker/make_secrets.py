"""Create (or complete) the secrets env file of the Docker Compose topology.

    python3 docker/make_secrets.py .airloop/compose.env
    docker compose -f docker/docker-compose.yaml --env-file .airloop/compose.env up -d

Standard library only, so it runs with any Python 3 on the host. Values already in the file are
kept (re-running never rotates a secret behind a running deployment's back); missing ones are
generated. The file is written owner-only (0600). Keep it out of git: ``.airloop/`` is ignored.
Every value is URL-safe, so the PostgreSQL password can sit in the connection URLs as is.

``AIRLOOP_TENANT_TOKENS`` (``tenant=token,...``, read by serving) gets one token per named tenant
of the pipeline files (``tenant:`` in ``include/pipelines/*.yaml``; the ``default`` tenant stays
open): re-run the script after adding a tenant. It may be empty, when no pipeline names a tenant.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

#: The secrets ``docker-compose.yaml`` requires (``${VAR:?...}``), each with its generator.
GENERATORS: dict[str, Callable[[], str]] = {
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),
    # a Fernet key: url-safe base64 of 32 random bytes
    "AIRFLOW__CORE__FERNET_KEY": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "AIRFLOW__API_AUTH__JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "AIRFLOW__API__SECRET_KEY": lambda: secrets.token_urlsafe(48),
    "AIRLOOP_ADMIN_TOKEN": lambda: secrets.token_urlsafe(32),
    "AIRLOOP_AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(12),
}
TENANT_TOKENS = "AIRLOOP_TENANT_TOKENS"
#: Every secret the file writes.
SECRET_NAMES = (*GENERATORS, TENANT_TOKENS)
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "include" / "pipelines"


def named_tenants(pipelines_dir: Path = PIPELINES_DIR) -> list[str]:
    """Tenants of the pipeline files (their top-level ``tenant:``; ``default`` for a file without
    one): every one gets a serving token, since serving's write routes are closed by default."""
    tenants = set()
    for path in sorted(pipelines_dir.glob("*.yaml")):
        match = re.search(r"^tenant:\s*[\"']?([\w.-]+)", path.read_text(), flags=re.M)
        tenants.add(match.group(1) if match else "default")
    return sorted(tenants)


def tenant_tokens(existing: str, tenants: list[str]) -> str:
    """``existing`` (``tenant=token,...``) plus a token for each tenant it lacks."""
    tokens = dict(item.split("=", 1) for item in existing.split(",") if "=" in item)
    for tenant in tenants:
        tokens.setdefault(tenant, secrets.token_urlsafe(32))
    return ",".join(f"{tenant}={token}" for tenant, token in sorted(tokens.items()))


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file (comments and blank lines skipped, quotes stripped)."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip().strip("'\"")
    return values


def complete_secrets(existing: dict[str, str], tenants: list[str] | None = None) -> dict[str, str]:
    """``existing`` plus a generated value for every secret it lacks (or has empty), and a token
    for every tenant in ``tenants`` (default: :func:`named_tenants`)."""
    values = dict(existing)
    for key, generate in GENERATORS.items():
        if not values.get(key):
            values[key] = generate()
    values[TENANT_TOKENS] = tenant_tokens(values.get(TENANT_TOKENS, ""), named_tenants() if tenants is None else tenants)
    return values


def write_secrets(path: Path) -> list[str]:
    """Create or complete the secrets file at ``path``; return the names generated now."""
    existing = read_env_file(path)
    values = complete_secrets(existing)
    body = "# airloop docker compose secrets (docker/make_secrets.py); never commit this file\n"
    body += "".join(f"{key}={value}\n" for key, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(body)
    return [key for key in values if existing.get(key) != values[key]]


def main(argv: list[str]) -> int:
    """Entry point: one argument, the env file to create or complete."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    generated = write_secrets(path)
    print(f"{path}: generated {', '.join(generated) if generated else 'nothing (all secrets present)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
