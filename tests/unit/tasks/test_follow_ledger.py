"""Serving follows the ledger: the monitoring DAG's check reloads a serving process that answers
with another version than the ledger's champion (after repairing the registry), and a deploy that
finds serving briefly down retries the reload instead of rolling the promotion back.

Real SQLite MLflow registry and monitoring store, the real serving app under uvicorn."""

from __future__ import annotations

import threading

import httpx
import pytest

from airloop.serving.app import create_app
from airloop.serving.client import DeployError, ServingEndpoint
from airloop.tasks import lifecycle as tasks
from tests.conftest import ServerThread, free_port
from tests.unit.registry import lifecycle_store as _store
from tests.unit.registry.test_lifecycle import serve
from tests.unit.serving.test_app import TOKEN
from tests.unit.tasks import test_lifecycle as _lifecycle
from tests.unit.tasks.test_lifecycle import run_context, unreachable

lifecycle_store, pipe, served = _store.lifecycle_store, _store.pipe, _lifecycle.served  # the fixtures


def _version(url: str) -> str:
    return str(httpx.get(f"{url}/model", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()["version"])


def test_serving_and_the_registry_follow_the_ledger(served):
    pipe, settings = served.pipe, served.pipe.store.settings
    champion = pipe.alias("champion")
    other = served.other(champion)
    assert tasks.follow_ledger(pipe.config, settings, served.endpoint, actor="monitor")["serving"] == \
        "follows the ledger"
    # a crash left the alias (and serving) on a version the ledger never put there
    pipe.store.client.set_registered_model_alias(pipe.name, "champion", other)
    httpx.post(f"{served.url}/reload", json={"version": int(other)}, headers=served.endpoint.headers(),
               timeout=60).raise_for_status()
    assert _version(served.url) == other

    result = tasks.follow_ledger(pipe.config, settings, served.endpoint, actor="monitor")
    assert (result["serving"], result["was"], result["served_version"]) == ("reloaded", other, champion)
    assert [r["environment"] for r in result["repairs"]] == ["prod"]
    assert pipe.alias("champion") == champion and _version(served.url) == champion
    again = tasks.follow_ledger(pipe.config, settings, served.endpoint, actor="monitor")
    assert again["repairs"] == [] and again["serving"] == "follows the ledger"


def test_following_the_ledger_with_serving_down_is_reported_not_raised(served):
    result = tasks.follow_ledger(served.pipe.config, served.pipe.store.settings, unreachable(), actor="monitor")
    assert result["serving"] == "unreachable"


def test_a_deploy_that_finds_serving_down_keeps_the_promotion(pipe, monkeypatch):
    monkeypatch.setattr(tasks, "RELOAD_PAUSE_S", 0.01)
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    promotion = serve(pipe, v2, "2026-03-08")
    with pytest.raises(DeployError, match="the promotion stands"):
        tasks.deploy(pipe.config, promotion, None, unreachable(), pipe.store.settings, actor="training",
                     run_context=run_context("scheduled__down"))
    assert pipe.alias("champion") == v2  # not rolled back
    assert [r["action"] for r in pipe.ledger() if r["environment"] == "prod"] == ["promote", "promote"]


def test_a_deploy_retries_the_reload_until_serving_is_back(served, monkeypatch):
    monkeypatch.setattr(tasks, "RELOAD_PAUSE_S", 0.5)
    pipe, settings = served.pipe, served.pipe.store.settings
    champion = pipe.alias("champion")
    port = free_port()
    stop, up = threading.Event(), threading.Event()

    def restart_later() -> None:  # serving comes back 1.5 s after the deploy starts
        stop.wait(1.5)
        with ServerThread(create_app(settings), port):
            up.set()
            stop.wait(120)

    thread = threading.Thread(target=restart_later, daemon=True)
    thread.start()
    try:
        result = tasks.deploy(pipe.config, {"promoted": True, "version": champion, "previous": served.other(champion)},
                              None, ServingEndpoint(f"http://127.0.0.1:{port}", TOKEN), settings, actor="training",
                              run_context=run_context("scheduled__restart"))
        assert up.is_set() and result["deployed"] and result["version"] == champion
        assert pipe.alias("champion") == champion
    finally:
        stop.set()
        thread.join(30)
