"""bin/airloop-env: sourced in a clean shell (only PATH and HOME), from any folder, it gives the
project's environment — the checkout as AIRFLOW_HOME/AIRLOOP_HOME, its venv first on PATH, the
settings file, a profile and the generated secrets, taken literally — so that `airloop` and the
Airflow CLI work there. The settings file is a tmp copy of .env.example (AIRLOOP_ENV_FILE) whose
state folder and Airflow paths are in tmp: the person's own .env, state and secrets are never read."""

from __future__ import annotations

import json
import subprocess

import pytest

from airloop.core.settings import read_env_file
from tests.conftest import ROOT

SCRIPT = ROOT / "bin" / "airloop-env"
FAKE_TOKEN = "shell-env-test-token-6e2a"


@pytest.fixture
def clean_env(tmp_path):
    """(env of a clean shell, the settings file it sources, the state folder)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "secrets.env").write_text(f"AIRLOOP_ADMIN_TOKEN={FAKE_TOKEN}\n")
    settings = tmp_path / "settings.env"
    settings.write_text((ROOT / ".env.example").read_text() + "\n".join([
        "", f"AIRLOOP_STATE_DIR={state}",
        f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///{tmp_path / 'airflow.db'}",
        f"AIRFLOW__LOGGING__BASE_LOG_FOLDER={tmp_path / 'logs'}",
        "AIRLOOP_SHELL_TEST='quoted $(echo run) `echo run` # kept'", ""]))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "AIRLOOP_ENV_FILE": str(settings)}
    return env, settings, state


def _bash(script: str, env: dict[str, str], cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd or ROOT.parent, capture_output=True, text=True,
                          timeout=timeout)


def test_a_clean_shell_gets_the_projects_environment(clean_env):
    env, _, _ = clean_env
    script = (f'. "{SCRIPT}" && cd dags && airloop --help > /dev/null'
              ' && python -c "import os; print(os.environ[\\"AIRFLOW_HOME\\"])"'
              ' && command -v python airflow && airflow config get-value core dags_folder')
    out = _bash(script, env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == str(ROOT)
    assert lines[1:3] == [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / ".venv" / "bin" / "airflow")]
    assert lines[-1] == str(ROOT / "dags")
    assert FAKE_TOKEN not in out.stdout + out.stderr


def test_it_exports_the_files_literally_like_the_python_reader(clean_env):
    env, settings, _ = clean_env
    dump = "python -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    out = _bash(f'cd /tmp && . "{SCRIPT}" && {dump}', env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    expected = read_env_file(settings)
    assert {k: got.get(k) for k in expected} == expected
    assert expected["AIRLOOP_SHELL_TEST"] == "quoted $(echo run) `echo run` # kept"  # nothing run
    assert got["AIRLOOP_ADMIN_TOKEN"] == FAKE_TOKEN  # the state folder's secrets.env
    assert got["AIRFLOW_HOME"] == got["AIRLOOP_HOME"] == str(ROOT) and got["PYTHONUNBUFFERED"] == "1"
    assert got["PATH"].split(":")[0] == str(ROOT / ".venv" / "bin")
    assert got["AIRFLOW__API__PORT"] == expected["AIRFLOW_PORT"]
    assert got["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{expected['AIRFLOW_PORT']}/execution/"


def test_profile_order_resourcing_and_mistakes(clean_env, tmp_path):
    env, settings, _ = clean_env
    # a profile's values win over the settings file (the Makefile's order); sourcing twice keeps one PATH entry
    out = _bash(f'. "{SCRIPT}" && . "{SCRIPT}" && echo "$AIRFLOW__CORE__EXECUTOR|$AIRLOOP_MONITORING_CONN_ID|$PATH"',
                {**env, "PROFILE": "postgres"})
    assert out.returncode == 0, out.stderr
    executor, conn_id, path = out.stdout.strip().split("|")
    assert (executor, conn_id) == ("CeleryExecutor", "airloop_monitoring")
    assert path.split(":").count(str(ROOT / ".venv" / "bin")) == 1
    # a later edit of the settings file shows after sourcing again (the files win, as in make)
    out = _bash(f'. "{SCRIPT}" && echo "$AIRFLOW_PORT" && echo AIRFLOW_PORT=18080 >> "{settings}"'
                f' && . "{SCRIPT}" && echo "$AIRFLOW_PORT $AIRFLOW__API__PORT"', env)
    assert out.stdout.split("\n")[:2] == ["8080", "18080 18080"], out.stderr
    # mistakes: a missing profile, running instead of sourcing
    out = _bash(f'. "{SCRIPT}" || echo "refused"', {**env, "PROFILE": "nope"})
    assert "no profiles/nope.env" in out.stderr and out.stdout.strip() == "refused"
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "source it" in out.stderr
