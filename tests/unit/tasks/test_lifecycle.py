"""The lifecycle DAGs' task functions (include/airloop/tasks/lifecycle.py) on real components:
a SQLite MLflow registry with a real scikit-learn model, the monitoring store on SQLite and, for
the tasks that tell serving, the real serving app under uvicorn on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pytest

from airloop.core import store
from airloop.experiments import definition
from airloop.registry import ledger
from airloop.serving.app import create_app
from airloop.serving.client import DeployError, ServingEndpoint
from airloop.tasks import lifecycle as tasks
from tests.conftest import ServerThread, free_port
from tests.unit.experiments.test_evaluation import START, _frame, _insert_served
from tests.unit.registry.lifecycle_store import (  # noqa: F401 - fixtures
    LifecyclePipeline,
    lifecycle_store,
    make_lifecycle_store,
    pipe,
)
from tests.unit.registry.test_lifecycle import serve
from tests.unit.serving.test_app import TOKEN

UTC = timezone.utc


def run_context(run_id: str, **extra: str) -> dict[str, str]:
    return {"dag_id": "claims_fraud__lifecycle", "dag_run_id": run_id, **extra}


def unreachable() -> ServingEndpoint:
    """A serving endpoint nobody listens on: a task that should not call serving fails if it does."""
    return ServingEndpoint(f"http://127.0.0.1:{free_port()}", TOKEN)


# ---------------------------------------------------------------------------------- promote
def test_promote_task_is_idempotent_per_dag_run(pipe):
    v1 = pipe.add_version(0.80)
    settings = pipe.store.settings
    first = tasks.promote(pipe.config, settings, v1, "dev", actor="alice", reason="try it", force=False,
                          run_context=run_context("manual__1"))
    assert first["promoted"] and not first["replayed"] and pipe.alias("dev") == v1
    retried = tasks.promote(pipe.config, settings, v1, "dev", actor="alice", reason="try it", force=False,
                            run_context=run_context("manual__1"))
    assert retried["replayed"] and retried["promoted"]
    other_run = tasks.promote(pipe.config, settings, v1, "dev", actor="bob", reason="again", force=False,
                              run_context=run_context("manual__2"))
    assert other_run.get("noop") and not other_run["promoted"]
    (row,) = pipe.ledger()
    assert (row["idempotency_key"], row["run_id"], row["actor"]) == (
        f"{pipe.config.name}:dev:{v1}:manual__1", "manual__1", "alice")

    weak = pipe.add_version(0.50)
    refused = tasks.promote(pipe.config, settings, weak, "dev", actor="alice", reason="weak", force=False,
                            run_context=run_context("manual__3"))
    assert not refused["promoted"] and pipe.alias("dev") == v1  # the DAG fails the task on this result
    forced = tasks.promote(pipe.config, settings, weak, "dev", actor="alice", reason="weak", force=True,
                           run_context=run_context("manual__4"))
    assert forced["promoted"] and pipe.alias("dev") == weak


# --------------------------------------------------------------------------------- rollback
def test_rollback_task_without_an_endpoint_moves_the_aliases_only(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    settings = pipe.store.settings
    result = tasks.rollback_environment(pipe.config, settings, "prod", "previous", actor="ops", reason="bad",
                                        run_context=run_context("manual__rb1"))
    assert (result["from_version"], result["version"], result["serving"]) == (v2, v1, None)
    assert pipe.alias("champion") == v1
    row = ledger.find_ledger(pipe.store.engine, f"{pipe.config.name}:prod:rollback:manual__rb1")
    assert row["action"] == "rollback"
    again = tasks.rollback_environment(pipe.config, settings, "prod", "previous", actor="ops", reason="bad",
                                       run_context=run_context("manual__rb1"))
    assert again["replayed"] and again["version"] == v1 and pipe.alias("champion") == v1


def test_rollback_task_of_a_non_serving_environment_never_calls_serving(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    result = tasks.rollback_environment(pipe.config, pipe.store.settings, "staging", v1, actor="ops", reason="bad",
                                        run_context=run_context("manual__rb2"), endpoint=unreachable())
    assert (result["environment"], result["version"], result["serving"]) == ("staging", v1, None)
    assert (pipe.alias("staging"), pipe.alias("champion")) == (v1, v2)


def test_rollback_and_reload_of_the_serving_environment_needs_serving(pipe, monkeypatch):
    monkeypatch.setattr(tasks, "RELOAD_PAUSE_S", 0.01)  # serving stays down through every bounded retry
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    with pytest.raises(DeployError, match="unreachable for /reload"):
        tasks.rollback_environment(pipe.config, pipe.store.settings, "prod", "previous", actor="ops", reason="bad",
                                   run_context=run_context("manual__rb3"), endpoint=unreachable())
    # the move is recorded before serving is told: a retry of the task replays it and reloads again
    assert pipe.alias("champion") == v1
    assert ledger.find_ledger(pipe.store.engine, f"{pipe.config.name}:prod:rollback:manual__rb3") is not None


def test_apply_abtest_stop_needs_a_test_id(pipe):
    params = {"action": "stop", "test_id": None, "reason": ""}
    with pytest.raises(ValueError, match="stopping needs test_id"):
        tasks.apply_abtest(pipe.config, pipe.store.settings, params, datetime(2026, 3, 9, tzinfo=UTC), unreachable())


def test_ab_evaluations_without_running_tests_do_nothing(pipe):
    assert tasks.run_ab_evaluations(pipe.config, pipe.store.settings, START, START + timedelta(days=1),
                                    actor="abtest", endpoint=unreachable()) == []


# ------------------------------------------------------------------------ post-deploy guard
def _monitored(pipe: LifecyclePipeline, version: str, days: list[str]) -> None:
    rows = [{"tenant": "default", "pipeline": pipe.config.name, "model_version": version, "rows": 100,
             "interval_start": datetime.fromisoformat(d).replace(tzinfo=UTC),
             "interval_end": datetime.fromisoformat(d).replace(tzinfo=UTC) + timedelta(days=1)} for d in days]
    store.upsert(pipe.store.engine, store.monitoring_runs, rows)


def _summary(version: str, day: str, **metrics: float) -> dict:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return {"model_version": version, "tenant": "default", "interval_start": start.isoformat(),
            "interval_end": (start + timedelta(days=1)).isoformat(), **metrics}


def test_post_deploy_guard_rolls_a_new_champion_back_once(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    settings, config = pipe.store.settings, pipe.config
    guard = lambda summary: tasks.post_deploy_guard(config, settings, summary, actor="guard")  # noqa: E731
    assert guard({"skipped": "no champion", "model_version": v2})["action"] == "none"
    _monitored(pipe, v2, ["2026-03-08", "2026-03-09"])
    healthy = guard(_summary(v2, "2026-03-09", error_rate=0.01))
    assert healthy == {"action": "none", "reason": f"v{v2} within the guard's limits (2/3)"}
    # a summary of another version than the one promoted then (a backfill over older history)
    assert "has no promotion in the ledger" in guard(_summary(v1, "2026-03-09", error_rate=0.5))["reason"]

    broken = guard(_summary(v2, "2026-03-09", error_rate=0.2, latency_p95_ms=900.0))
    assert broken["action"] == "rollback" and broken["rolled_back"] and broken["serving"] is None
    assert broken["breaches"] == ["error_rate = 0.2 > 0.05", "latency_p95_ms = 900 > 250"]
    assert broken["reason"].startswith(f"post-deploy guard: v{v2} in its monitored interval 2 of 3 (2026-03-09)")
    assert (broken["from_version"], broken["version"]) == (v2, v1) and pipe.alias("champion") == v1
    row = ledger.find_ledger(pipe.store.engine, f"{config.name}:v{v2}:post-deploy-guard")
    assert (row["action"], row["actor"], row["data_interval_end"]) == ("rollback", "guard", "2026-03-10")
    # the next interval breaks the limits too: v2 is no longer the champion, nothing more happens
    after = guard(_summary(v2, "2026-03-09", error_rate=0.2))
    assert after["action"] == "none" and f"v{v2} is no longer the champion (v{v1} is)" in after["reason"]
    assert [r["action"] for r in pipe.ledger()].count("rollback") == 1


def test_post_deploy_guard_watches_only_the_first_intervals(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    _monitored(pipe, v2, [f"2026-03-{d:02d}" for d in range(8, 12)])
    late = tasks.post_deploy_guard(pipe.config, pipe.store.settings, _summary(v2, "2026-03-11", error_rate=0.9),
                                   actor="guard")
    assert late == {"action": "none", "reason": f"v{v2} is past its first 3 monitored intervals"}
    off = pipe.config.model_copy(update={"promotion": pipe.config.promotion.model_copy(
        update={"post_deploy_guard": pipe.config.promotion.post_deploy_guard.model_copy(update={"intervals": 0})})})
    assert tasks.post_deploy_guard(off, pipe.store.settings, _summary(v2, "2026-03-09", error_rate=0.9),
                                   actor="guard")["action"] == "none"
    assert pipe.alias("champion") == v2


# ---------------------------------------------------------------------- with real serving
@dataclass
class Served:
    pipe: LifecyclePipeline
    versions: tuple[str, str]
    url: str
    endpoint: ServingEndpoint

    def other(self, version: str) -> str:
        return next(v for v in self.versions if v != version)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """claims_fraud v1 and v2 (both through the whole path, v2 the champion) behind a real serving app."""
    lifecycle = make_lifecycle_store(tmp_path_factory.mktemp("served"))
    own = lifecycle.pipeline(renamed=False)
    v1, v2 = own.add_version(0.80), own.add_version(0.82)
    serve(own, v1, "2026-03-01")
    serve(own, v2, "2026-03-08")
    with ServerThread(create_app(lifecycle.settings), free_port()) as server:
        yield Served(own, (v1, v2), server.url, ServingEndpoint(server.url, TOKEN))


def _serving_version(served: Served) -> str:
    return str(httpx.get(f"{served.url}/model", headers=served.endpoint.headers(), timeout=30).json()["version"])


def test_rollback_task_reloads_serving_and_smoke_tests_it(served):
    pipe, settings = served.pipe, served.pipe.store.settings
    current = pipe.alias("champion")
    assert _serving_version(served) == current
    target = served.other(current)
    result = tasks.rollback_environment(pipe.config, settings, "prod", target, actor="ops", reason="bad",
                                        run_context=run_context("manual__served"), endpoint=served.endpoint)
    assert (result["from_version"], result["version"]) == (current, target)
    assert result["serving"] == {"version": target, "records": 3}  # the model's stored input example
    assert _serving_version(served) == target and pipe.alias("champion") == target
    # a retry (say the worker died after the move) replays the move and reloads again
    again = tasks.rollback_environment(pipe.config, settings, "prod", target, actor="ops", reason="bad",
                                       run_context=run_context("manual__served"), endpoint=served.endpoint)
    assert again["replayed"] and again["serving"] == {"version": target, "records": 3}


def test_apply_abtest_starts_and_stops_a_test_in_serving(served):
    pipe, settings = served.pipe, served.pipe.store.settings
    champion = pipe.alias("champion")
    challenger = served.other(champion)
    at = datetime(2026, 3, 20, 9, tzinfo=UTC)
    params = {"action": "start", "challenger_version": int(challenger), "mode": "ab", "traffic_pct": 20.0,
              "key_field": "request_id", "success_metric": None, "alpha": 0.05, "min_samples": 1000,
              "max_duration_days": 14, "tenant": "default", "test_id": None, "reason": ""}
    started = tasks.apply_abtest(pipe.config, settings, params, at, served.endpoint)
    test_id = f"claims_fraud.default.v{champion}-v{challenger}.20260320T090000"
    assert (started["test_id"], started["status"], started["success_metric"]) == (test_id, "running", "roc_auc")
    assert [t["test_id"] for t in started["serving"]["tests"]] == [test_id] and started["serving"]["errors"] == {}
    info = httpx.get(f"{served.url}/abtest", headers=served.endpoint.headers(), timeout=30).json()["tests"][0]
    assert info["challenger_model"]["version"] == challenger
    assert tasks.apply_abtest(pipe.config, settings, params, at, served.endpoint)["test_id"] == test_id  # re-run

    stopped = tasks.apply_abtest(pipe.config, settings, {"action": "stop", "test_id": test_id, "reason": "enough"},
                                 at + timedelta(days=1), served.endpoint)
    assert (stopped["status"], stopped["decision"], stopped["changed"]) == ("stopped", "stopped", True)
    assert stopped["serving"]["tests"] == [] and httpx.get(f"{served.url}/abtest", headers=served.endpoint.headers(), timeout=30).json()["tests"] == []
    assert pipe.alias("champion") == champion  # stopping keeps the champion


def test_ab_evaluation_promotes_a_significantly_better_challenger_and_reloads(served):
    pipe, settings = served.pipe, served.pipe.store.settings
    champion = pipe.alias("champion")
    challenger = served.other(champion)
    from airloop.experiments import evaluation

    test = evaluation.start_test(pipe.config, settings, START, champion_version=champion,
                                 challenger_version=challenger, traffic_pct=20, min_samples=600)
    engine = store.get_engine(settings.monitoring_db_uri)
    rng = np.random.default_rng(11)
    _insert_served(engine, _frame(rng, 700, 0.6, "eval-a"), "champion", champion, START + timedelta(hours=1))
    _insert_served(engine, _frame(rng, 700, 1.2, "eval-b"), "challenger", challenger, START + timedelta(hours=2))

    end = START + timedelta(days=2)
    (outcome,) = tasks.run_ab_evaluations(pipe.config, settings, START + timedelta(days=1), end, actor="abtest",
                                          run_context=run_context("scheduled__eval"), endpoint=served.endpoint)
    assert outcome["decision"] == "promote_challenger" and outcome["promote"], outcome
    assert outcome["promotion"]["promoted"] and outcome["promotion"]["previous"] == champion
    assert f"beats_champion: A/B test {test['test_id']}" in outcome["promotion"]["reason"]
    assert outcome["serving"] == {"version": challenger, "records": 3}
    assert outcome["refresh"]["tests"] == []  # the concluded test left serving
    assert pipe.alias("champion") == challenger and _serving_version(served) == challenger
    row = ledger.find_ledger(engine, f"{test['test_id']}:promotion")
    assert (row["action"], row["environment"], row["data_interval_end"]) == ("promote", "prod", end.date().isoformat())
    # the next scheduled run: no running test left, nothing happens
    assert definition.running_tests(engine, pipe.config.name) == []
    assert tasks.run_ab_evaluations(pipe.config, settings, end, end + timedelta(days=1), actor="abtest",
                                    endpoint=served.endpoint) == []


# ------------------------------------------------------------------- deploy: all or nothing
def _snapshot(tmp, day: str = "2026-01-05") -> dict:
    """A training snapshot on disk (one simulator day): the deploy's smoke-test rows."""
    import json
    from datetime import date

    from airloop.data.simulator import generate_day

    tmp.mkdir(parents=True, exist_ok=True)
    generate_day(date.fromisoformat(day)).to_parquet(tmp / f"day={day}.parquet", index=False)
    (tmp / "fingerprint.json").write_text(json.dumps({"hash": "test"}))
    return {"path": str(tmp), "as_of": "2026-03-01"}


def _deploy(pipe: LifecyclePipeline, promotion: dict, endpoint: ServingEndpoint, snapshot: dict | None, run: str):
    return tasks.deploy(pipe.config, promotion, snapshot, endpoint, pipe.store.settings, actor="training",
                        run_context=run_context(run, as_of="2026-03-08"))


def test_a_first_deploy_to_serving_that_does_not_know_the_pipeline_is_withdrawn(pipe, served, tmp_path):
    """The pipeline's file is not in serving's pipelines folder: serving answers 404 naming it;
    the first champion's aliases are removed and the ledger says why (serving had no model)."""
    v1 = pipe.add_version(0.80)
    promotion = serve(pipe, v1, "2026-03-08")
    assert (promotion["previous"], pipe.alias("champion"), pipe.alias("prod")) == (None, v1, v1)
    with pytest.raises(DeployError) as failed:
        _deploy(pipe, promotion, served.endpoint, _snapshot(tmp_path), "scheduled__first")
    message = str(failed.value)
    assert f"deploy of {pipe.name} v{v1} (pipeline {pipe.config.name})" in message
    assert f"serving has no pipeline default/{pipe.config.name}: no file {pipe.config.name}.yaml" in message
    assert "HTTP 404" in message and "aliases were removed" in message
    assert (pipe.alias("champion"), pipe.alias("prod"), pipe.alias("staging")) == (None, None, v1)
    key = tasks.deploy_rollback_key(pipe.config, v1, {"dag_run_id": "scheduled__first"})
    row = ledger.find_ledger(pipe.store.engine, key)
    assert (row["action"], row["environment"], row["from_version"], row["to_version"]) == ("rollback", "prod", v1, None)
    assert "serving has no pipeline" in row["reason"]
    assert pipe.tag(v1, "airloop.rolled_back.prod").startswith("deploy of")
    # a retry of the task fails with the recorded reason and changes nothing
    with pytest.raises(DeployError, match="an earlier try of this deploy failed and was rolled back"):
        _deploy(pipe, promotion, served.endpoint, _snapshot(tmp_path), "scheduled__first")
    assert [r["action"] for r in pipe.ledger()].count("rollback") == 1


def test_a_deploy_to_serving_that_does_not_know_the_pipeline_restores_the_previous_champion(pipe, served, tmp_path):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    promotion = serve(pipe, v2, "2026-03-08")
    with pytest.raises(DeployError, match=f"champion was rolled back to v{v1}") as failed:
        _deploy(pipe, promotion, served.endpoint, _snapshot(tmp_path), "scheduled__second")
    assert "serving has no pipeline" in str(failed.value)
    assert (pipe.alias("champion"), pipe.alias("prod")) == (v1, v1)
    rows = [r for r in pipe.ledger() if r["action"] == "rollback"]
    assert [(r["from_version"], r["to_version"]) for r in rows] == [(v2, v1)]


def test_a_deploy_whose_version_serving_cannot_load_leaves_alias_ledger_and_serving_as_they_were(served, tmp_path):
    """A registered version whose artifact is gone: serving refuses the reload (the previous model
    keeps serving), the champion goes back, one rollback row; nothing else moves."""
    from mlflow.entities import Metric

    pipe = served.pipe
    before = pipe.alias("champion")
    assert _serving_version(served) == before
    client = pipe.store.client
    run = client.create_run(pipe.experiment_id, tags={"airloop.kind": "training"})
    client.log_batch(run.info.run_id, metrics=[Metric("holdout_roc_auc", 0.9, 0, 0),
                                               Metric("train_rows", 6000.0, 0, 0)])
    broken = str(client.create_model_version(pipe.name, source=str(tmp_path / "gone"), run_id=run.info.run_id).version)
    promotion = serve(pipe, broken, "2026-03-15")
    assert promotion["previous"] == before and pipe.alias("champion") == broken
    rows_before = len(pipe.ledger())
    with pytest.raises(DeployError) as failed:
        _deploy(pipe, promotion, served.endpoint, _snapshot(tmp_path / "snap"), "scheduled__broken")
    message = str(failed.value)
    assert f"deploy of claims_fraud v{broken} (pipeline claims_fraud)" in message
    assert f"serving at {served.url}/t/default/claims_fraud refused /reload of 'champion': HTTP 409" in message, message
    assert f"cannot download version {broken}" in message, message
    assert message.endswith(f"the champion was rolled back to v{before}")
    assert (pipe.alias("champion"), pipe.alias("prod")) == (before, before)
    assert _serving_version(served) == before  # serving never swapped
    new_rows = pipe.ledger()[rows_before:]
    assert [(r["action"], r["from_version"], r["to_version"]) for r in new_rows] == [("rollback", broken, before)]
