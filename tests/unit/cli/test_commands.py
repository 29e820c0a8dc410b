"""Setup helpers of the CLI: generated secrets are stable, unquoted and never in the repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

from airloop.cli.commands import ensure_secrets, secrets_file
from airloop.core.settings import load_settings


def test_secrets_generated_once_unquoted(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRLOOP_SERVING_PORT", "8123")
    for name in ("AIRLOOP_ADMIN_TOKEN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
                 "AIRFLOW__API__SECRET_KEY", "AIRLOOP_TENANT_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "AIRLOOP_PIPELINES_DIR": str(Path(__file__).resolve().parents[3] / "include" / "pipelines")})
    first = ensure_secrets(settings)
    text = secrets_file(settings).read_text()
    assert "'" not in text and '"' not in text  # make's include keeps quotes as part of values
    assert first["AIRFLOW_CONN_AIRLOOP_SERVING"] == f"http://:{first['AIRLOOP_ADMIN_TOKEN']}@127.0.0.1:8123"
    assert len(first["AIRLOOP_ADMIN_TOKEN"]) >= 32
    assert ensure_secrets(settings) == first  # stable across runs
    assert oct(secrets_file(settings).stat().st_mode)[-3:] == "600"
    # one serving token per named tenant of the pipeline files (globex), none for "default"
    tenants = dict(item.split("=", 1) for item in first["AIRLOOP_TENANT_TOKENS"].split(","))
    assert set(tenants) == {"globex"} and len(tenants["globex"]) >= 32


def test_secrets_from_the_environment_win(tmp_path, monkeypatch):
    """In containers the secrets come from the environment: the file must not invent others."""
    monkeypatch.setenv("AIRLOOP_ADMIN_TOKEN", "from-the-environment-0123456789abcdef")
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    assert ensure_secrets(settings)["AIRLOOP_ADMIN_TOKEN"] == "from-the-environment-0123456789abcdef"


def test_secrets_and_state_are_git_ignored():
    out = subprocess.run(["git", "check-ignore", ".airloop/secrets.env", ".env", ".venv/x"], capture_output=True, text=True)
    assert out.stdout.split() == [".airloop/secrets.env", ".env", ".venv/x"]
