"""Secrets reach only the processes that need them (core.settings.SECRET_VARS): serving gets its
tokens and none of Airflow's keys, the MLflow UI gets none; the Makefile exports none of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airloop.cli.processes import _start
from airloop.core.security import SECRET_GENERATORS
from airloop.core.settings import SECRET_VARS, process_environ

ROOT = Path(__file__).resolve().parents[3]
SECRETS = {name: f"secret-{i}" for i, name in enumerate(SECRET_VARS)}


def test_every_generated_secret_is_in_the_table():
    assert set(SECRET_GENERATORS) | {"AIRLOOP_TENANT_TOKENS", "AIRFLOW_CONN_AIRLOOP_SERVING"} == set(SECRET_VARS)


def test_each_role_gets_only_its_secrets():
    env = {"PATH": "/bin", "AIRLOOP_HOME": "/x", **SECRETS}
    assert set(process_environ("mlflow", env)) == {"PATH", "AIRLOOP_HOME"}
    assert set(process_environ("serving", env)) - {"PATH", "AIRLOOP_HOME"} == {"AIRLOOP_ADMIN_TOKEN",
                                                                              "AIRLOOP_TENANT_TOKENS"}
    assert process_environ("airflow", env) == env


def test_a_started_process_sees_only_its_secrets(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    dump = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    for role, expected in (("mlflow", set()), ("serving", {"AIRLOOP_ADMIN_TOKEN", "AIRLOOP_TENANT_TOKENS"})):
        _start(role, dump, tmp_path, tmp_path).wait(timeout=60)
        seen = json.loads((tmp_path / f"{role}.log").read_text())
        assert set(seen) & set(SECRETS) == expected, role


def test_make_exports_no_secret(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    out = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(ROOT), "--no-print-directory",
                          f"STATE={state}", "help"], capture_output=True, text=True, check=True)
    assert "secret-" not in out.stdout
    printed = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "--no-print-directory", f"STATE={state}", "-f", "-", "show"],
        input=f"include {ROOT}/Makefile\nshow:\n\t@env\n", capture_output=True, text=True, check=True)
    assert not set(SECRETS.values()) & {line.partition("=")[2] for line in printed.stdout.splitlines()}
