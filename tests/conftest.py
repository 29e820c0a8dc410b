"""Test session setup: every run gets its own state folder, Airflow DB and stores.

The environment is set here, at import time, before anything imports Airflow or airloop, so
that no test touches the developer's ``.airloop`` folder: Airflow metadata, MLflow, the
monitoring store, Optuna and the demo data all live in a fresh temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from airloop.ops.sandbox import drop_user_secrets, free_port, isolated_environ  # noqa: F401 - imports no Airflow: the environment is set first

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="airloop-test-"))
STATE = _SESSION_DIR / "state"

#: The test session's own serving tokens (serving's routes are closed by default): the admin
#: token and one per tenant; never the user's (:func:`drop_user_secrets`).
ADMIN_TOKEN = "test-admin-token"
TENANT_TOKENS = {"default": "test-default-token", "globex": "test-globex-token", "acme": "test-acme-token"}

drop_user_secrets()  # `make test` after `make demo` exports the person's own tokens: the tests never use them
os.environ.update(isolated_environ(ROOT, _SESSION_DIR, secret_values={
    "AIRLOOP_ADMIN_TOKEN": ADMIN_TOKEN,
    "AIRLOOP_TENANT_TOKENS": ",".join(f"{tenant}={token}" for tenant, token in TENANT_TOKENS.items()),
    "AIRFLOW__CORE__FERNET_KEY": "x7B3QbhXlrIWmZUQ0y8y5bY6Fq1TB0Z3tPj1xRkZb0c=",
    "AIRFLOW__API_AUTH__JWT_SECRET": "airloop-test-jwt-secret-not-for-production",
    "AIRFLOW__API__SECRET_KEY": "airloop-test-api-secret-not-for-production",
}))
(STATE / "mlflow").mkdir(parents=True, exist_ok=True)


def serving_headers(tenant: str | None = None, token: str | None = None, replay=None, **extra: str) -> dict[str, str]:
    """Headers of a request to serving with the session's tokens: the admin token (accepted on
    every route), or ``tenant``'s own token (:data:`TENANT_TOKENS`), or an explicit ``token``;
    ``replay``: ``(start, end)`` datetimes or dates sent as ``X-Airloop-Replay-Interval`` (the
    historical event times of a replay; admin token only); ``extra`` headers added
    (``X_Tenant="acme"`` becomes ``X-Tenant: acme``)."""
    chosen = token or (TENANT_TOKENS[tenant] if tenant is not None else ADMIN_TOKEN)
    headers = {"Authorization": f"Bearer {chosen}", **{k.replace("_", "-"): v for k, v in extra.items()}}
    if replay is not None:
        headers["X-Airloop-Replay-Interval"] = "/".join(t.isoformat() for t in replay)
    return headers


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's state folder unless asked to keep it (AIRLOOP_KEEP_TEST_STATE=1)."""
    if os.environ.get("AIRLOOP_KEEP_TEST_STATE") != "1":
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def settings():
    """Settings of the test session (fresh state folder)."""
    from airloop.core.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def claims_config(settings):
    """The demo pipeline's configuration."""
    from airloop.core.pipeline import load_pipeline_config

    return load_pipeline_config("claims_fraud", settings)


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata database for this session (SQLite in the session folder)."""
    result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                            env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


class ServerThread:
    """A real uvicorn server for an ASGI app, in a background thread of the test process."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 120  # startup waits up to 30 s for the champion; a loaded machine is slower
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 120 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
