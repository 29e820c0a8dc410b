"""The plugin's FastAPI apps are built on first use, and the plugins folder loads only the plugin.

Every Airflow process, each task process included, loads the plugins; only the API server uses
their apps. These tests load the plugins as a task process does (the Task SDK's plugins manager,
in a fresh interpreter) and check what that costs: no FastAPI app built, no provider file imported
as a top-level module of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import ROOT

_FACTORY_CALLS: list[int] = []


def make_app() -> FastAPI:
    _FACTORY_CALLS.append(1)
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"pong": True}

    return app


def test_lazy_app_builds_once_on_first_use_and_serves_like_the_app():
    from airloop_provider.lazyapp import LazyApp

    _FACTORY_CALLS.clear()
    lazy = LazyApp(f"{__name__}:make_app")
    assert not lazy.built and not _FACTORY_CALLS
    threads = [threading.Thread(target=lambda: lazy.app) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lazy.built and len(_FACTORY_CALLS) == 1  # eight first uses, one build
    assert "/ping" in {route.path for route in lazy.routes}  # attributes come from the real app
    with TestClient(lazy) as client:
        assert client.get("/ping").json() == {"pong": True}
    assert len(_FACTORY_CALLS) == 1


def test_lazy_app_refuses_a_factory_without_a_function():
    import pytest

    from airloop_provider.lazyapp import LazyApp

    with pytest.raises(ValueError, match="module:function"):
        LazyApp("airloop_provider.api")


PROBE = """
import json, sys
import airflow.sdk.plugins_manager as pm
plugins, errors = pm._get_plugins()
apps = [a["app"] for p in plugins for a in p.fastapi_apps]
print(json.dumps({
    "plugins": sorted(p.name for p in plugins), "errors": errors,
    "built": [a.built for a in apps],
    "fastapi_routing": "fastapi.routing" in sys.modules,
    "provider_files_as_modules": sorted(m for m in ("lifecycle", "monitoring", "models", "app", "hooks", "context",
                                                     "notifiers", "operators", "pipelines") if m in sys.modules),
}))
"""


def test_a_task_process_loads_the_plugin_without_building_its_apps():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["plugins"] == ["airloop"] and not got["errors"]
    assert got["built"] == [False, False]
    assert not got["fastapi_routing"]  # no router imported for a task
    assert got["provider_files_as_modules"] == []  # plugins/.airflowignore keeps airloop_provider a package
