"""Setup helpers of the CLI: generated secrets are stable, unquoted and never in the repo."""

from __future__ import annotations

import subprocess

from airloop.cli import ensure_secrets, secrets_file
from airloop.config import load_settings


def test_secrets_generated_once_unquoted(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRLOOP_SERVING_PORT", "8123")
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    first = ensure_secrets(settings)
    text = secrets_file(settings).read_text()
    assert "'" not in text and '"' not in text  # make's include keeps quotes as part of values
    assert first["AIRFLOW_CONN_AIRLOOP_SERVING"] == f"http://:{first['AIRLOOP_ADMIN_TOKEN']}@127.0.0.1:8123"
    assert len(first["AIRLOOP_ADMIN_TOKEN"]) >= 32
    assert ensure_secrets(settings) == first  # stable across runs
    assert oct(secrets_file(settings).stat().st_mode)[-3:] == "600"


def test_secrets_and_state_are_git_ignored():
    out = subprocess.run(["git", "check-ignore", ".airloop/secrets.env", ".env", ".venv/x"], capture_output=True, text=True)
    assert out.stdout.split() == [".airloop/secrets.env", ".env", ".venv/x"]
