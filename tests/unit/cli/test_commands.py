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
    # one serving token per tenant of the pipeline files (globex), "default" included: writes are closed by default
    tenants = dict(item.split("=", 1) for item in first["AIRLOOP_TENANT_TOKENS"].split(","))
    assert set(tenants) == {"default", "globex"} and all(len(t) >= 32 for t in tenants.values())
    assert len(set(tenants.values())) == 2 and first["AIRLOOP_ADMIN_TOKEN"] not in tenants.values()


def test_secrets_from_the_environment_win(tmp_path, monkeypatch):
    """In containers the secrets come from the environment: the file must not invent others."""
    monkeypatch.setenv("AIRLOOP_ADMIN_TOKEN", "from-the-environment-0123456789abcdef")
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    assert ensure_secrets(settings)["AIRLOOP_ADMIN_TOKEN"] == "from-the-environment-0123456789abcdef"


def test_secrets_and_state_are_git_ignored():
    out = subprocess.run(["git", "check-ignore", ".airloop/secrets.env", ".env", ".venv/x"], capture_output=True, text=True)
    assert out.stdout.split() == [".airloop/secrets.env", ".env", ".venv/x"]


def test_the_token_command_prints_the_tenants_own_token(tmp_path, monkeypatch, capsys):
    """`make -s token` (the README's curl lines): the default tenant's token, the admin's with
    --admin, exit 1 naming the tenants that have one for an unknown tenant."""
    import argparse

    from airloop.cli.commands import cmd_token
    from airloop.core.settings import get_settings

    for name in ("AIRLOOP_ADMIN_TOKEN", "AIRLOOP_TENANT_TOKENS", "AIRFLOW_CONN_AIRLOOP_SERVING"):
        monkeypatch.setenv(name, "")  # recorded, so what ensure_secrets sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("AIRLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("AIRLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AIRLOOP_PIPELINES_DIR", str(Path(__file__).resolve().parents[3] / "include" / "pipelines"))
    get_settings.cache_clear()
    try:
        assert cmd_token(argparse.Namespace(tenant="default", admin=False)) == 0
        default = capsys.readouterr().out.strip()
        assert cmd_token(argparse.Namespace(tenant="default", admin=True)) == 0
        admin = capsys.readouterr().out.strip()
        assert cmd_token(argparse.Namespace(tenant="nobody", admin=False)) == 1
        assert "default, globex" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    values = ensure_secrets(load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")}))
    assert f"default={default}" in values["AIRLOOP_TENANT_TOKENS"].split(",")
    assert admin == values["AIRLOOP_ADMIN_TOKEN"] != default


def test_start_serving_refuses_a_port_another_process_holds(tmp_path, monkeypatch, capsys):
    """A serving left running by another checkout would answer /health in our place (with its
    own tokens and models): start-serving stops with the port named instead of starting a
    process that cannot bind and then reporting the other one's health as its own."""
    import argparse
    import socket

    from airloop.cli.commands import cmd_start_serving
    from airloop.core.settings import get_settings

    for name in ("AIRLOOP_ADMIN_TOKEN", "AIRLOOP_TENANT_TOKENS", "AIRFLOW_CONN_AIRLOOP_SERVING"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setenv("AIRLOOP_SERVING_PORT", str(port))
        monkeypatch.setenv("AIRLOOP_SERVING_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AIRLOOP_HOME", str(tmp_path))
        monkeypatch.setenv("AIRLOOP_STATE_DIR", str(tmp_path / "state"))
        get_settings.cache_clear()
        try:
            assert cmd_start_serving(argparse.Namespace()) == 1
        finally:
            get_settings.cache_clear()
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "AIRLOOP_SERVING_PORT" in err
    assert not (tmp_path / "state" / "serving.pid").exists() and not list((tmp_path / "state").glob("**/serving.pid"))
