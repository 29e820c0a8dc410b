"""Every port the local setup binds is a line of .env.example: Airflow reads the log-server and
health-check ports from their ``AIRFLOW__SECTION__KEY`` lines, ``AIRFLOW_PORT`` sets the API
server (and the execution API URL), the Celery workers' log servers start from the configured
port, and airflow.cfg holds no port that .env.example does not name."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys

import pytest

from airloop.core.settings import read_env_file
from airloop.ops import topology
from tests.conftest import ROOT

#: airflow.cfg keys set by an airloop variable rather than Airflow's own AIRFLOW__SECTION__KEY.
MAPPED = {("api", "port"): "AIRFLOW_PORT"}
#: Airflow options that bind a port in `airflow standalone` / `make up PROFILE=postgres`.
AIRFLOW_PORTS = {("logging", "worker_log_server_port"): "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                 ("logging", "trigger_log_server_port"): "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
                 ("scheduler", "scheduler_health_check_server_port"):
                     "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"}

_READ_CONF = """
import json, sys
from airflow.configuration import conf
keys = json.loads(sys.argv[1])
print(json.dumps({f"{s}.{k}": [conf.get(s, k, fallback=None), conf.get_default_value(s, k)] for s, k in keys}))
"""


def _example() -> dict[str, str]:
    return read_env_file(ROOT / ".env.example")


def _airflow_conf(env: dict[str, str], keys: list[tuple[str, str]]) -> dict[str, list]:
    """``{"section.key": [value, Airflow's default]}`` as Airflow itself reads them in ``env``."""
    out = subprocess.run([sys.executable, "-c", _READ_CONF, json.dumps(keys)], env=env, capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_airflow_reads_every_port_from_the_env_file_variables():
    example = _example()
    moved = {name: str(int(example[name]) + 10000) for name in [*AIRFLOW_PORTS.values(), "AIRFLOW_PORT"]}
    derived = ("AIRFLOW__API__PORT", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL")
    env = {k: v for k, v in os.environ.items() if k not in (*AIRFLOW_PORTS.values(), *derived)}
    env.update(moved)
    env.update(topology.airflow_port_env(env))
    keys = [*AIRFLOW_PORTS, ("api", "port"), ("core", "execution_api_server_url")]
    got = _airflow_conf(env, keys)
    for (section, key), name in AIRFLOW_PORTS.items():
        value, default = got[f"{section}.{key}"]
        assert value == moved[name], (section, key)
        assert default == example[name], f"{name}: .env.example's default differs from Airflow's ({default})"
    assert got["api.port"][0] == "18080"
    assert got["core.execution_api_server_url"][0] == "http://127.0.0.1:18080/execution/"
    assert example["AIRFLOW_PORT"] == got["api.port"][1] == _airflow_cfg()["api"]["port"] == "8080"


def _airflow_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "airflow.cfg")
    return cfg


def test_every_port_of_airflow_cfg_has_its_line_in_env_example():
    cfg, example = _airflow_cfg(), _example()
    found = [(section, key) for section in cfg.sections() for key in cfg[section] if key.endswith("port")]
    assert ("api", "port") in found
    missing = []
    for section, key in found:
        name = MAPPED.get((section, key), f"AIRFLOW__{section.upper()}__{key.upper()}")
        if name not in example:
            missing.append(f"[{section}] {key}: add {name}= to .env.example (or map it in MAPPED)")
        elif example[name] != cfg[section][key]:
            missing.append(f"[{section}] {key} = {cfg[section][key]} but .env.example has {name}={example[name]}")
    assert not missing, "\n".join(missing)
    for name in AIRFLOW_PORTS.values():
        assert name in example, name


def test_celery_workers_log_servers_start_from_the_configured_port(monkeypatch):
    def ports(components):
        return [int(c.env[topology.WORKER_LOG_SERVER_PORT_VAR]) for c in components if c.name.startswith("worker")]

    monkeypatch.delenv(topology.WORKER_LOG_SERVER_PORT_VAR, raising=False)
    assert ports(topology.airflow_components(8080, workers=2)) == [8793, 8794]
    monkeypatch.setenv(topology.WORKER_LOG_SERVER_PORT_VAR, "18793")
    assert ports(topology.airflow_components(18080, workers=3)) == [18793, 18794, 18795]
    assert ports(topology.airflow_components(18080, workers=2, log_server_port=20000)) == [20000, 20001]
    assert topology.worker_log_server_port({}) == topology.DEFAULT_WORKER_LOG_SERVER_PORT == 8793
    assert topology.worker_log_server_port({topology.WORKER_LOG_SERVER_PORT_VAR: ""}) == 8793
    api = next(c for c in topology.airflow_components(18080) if c.name == "api-server")
    assert api.argv[-2:] == ["--port", "18080"]


@pytest.mark.parametrize(("environ", "port"), [({}, "8080"), ({"AIRFLOW_PORT": ""}, "8080"),
                                               ({"AIRFLOW_PORT": "18080"}, "18080")])
def test_the_airflow_port_sets_the_api_and_execution_urls(environ, port):
    assert topology.airflow_port_env(environ) == {
        "AIRFLOW__API__PORT": port, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
