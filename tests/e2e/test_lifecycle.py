"""End to end: the model lifecycle on real Airflow (``dag.test``), a real MLflow store, real
serving over HTTP, the monitoring store on SQLite and on the real PostgreSQL server.

Two training runs give versions 1 and 2. Then, as a user does from the UI forms: promote with
``<pipeline>__promote``, roll back with ``<pipeline>__rollback`` — while a client keeps sending
requests (zero errors allowed); the path is enforced; two concurrent promotions (two processes)
have exactly one winner; the audit / lineage / compare API answers; the post-deploy guard rolls
a breaking champion back.
"""

from __future__ import annotations

import multiprocessing
import threading
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest

from tests.e2e.conftest import load_dag, run_dag, task_states
from tests.e2e.racer import promote_when_released
from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

FIRST_AS_OF, SECOND_AS_OF = "2026-02-22", "2026-03-08"
FAST = {"window_days": 28, "n_trials": 4, "timeout_s": 300}


@pytest.fixture(scope="module")
def versions(settings, claims_config, serving, airflow_db):
    """Simulator history, then two training runs: ``(v1, v2)``."""
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history
    from airloop.registry import client as registry

    write_history(resolve_source_path(claims_config, settings), start=date(2026, 1, 1), days=68,
                  pattern=claims_config.source.partition)
    dag = load_dag("airloop_training.py", "claims_fraud__train")
    out = []
    for as_of in (FIRST_AS_OF, SECOND_AS_OF):
        dag_run = run_dag(dag, as_of, FAST)
        assert str(dag_run.state) == "success", task_states(dag_run)
        out.append(str(registry.find_version(registry.get_client(settings), "claims_fraud",
                                             f"claims_fraud@{as_of}").version))
    return tuple(out)


def aliases(settings) -> dict[str, str | None]:
    from airloop.core.pipeline import load_pipeline_config
    from airloop.registry import audit as lifecycle
    from airloop.registry import client as registry

    return lifecycle.current_versions(registry.get_client(settings), load_pipeline_config("claims_fraud", settings))


def ledger(settings, **filters):
    from airloop.core import store
    from airloop.registry import ledger as store_ledger

    rows = store_ledger.ledger_rows(store.get_engine(settings.monitoring_db_uri), "claims_fraud")
    return [r for r in rows if all(r[k] == v for k, v in filters.items())]


def trigger(dag, conf: dict):
    """A manual run of a form DAG (own logical date, so runs never collide)."""
    return dag.test(logical_date=datetime.now(timezone.utc), run_conf=conf)


class Traffic:
    """A client sending single-record requests back to back while the test moves versions."""

    def __init__(self, url: str, records: list[dict]) -> None:
        self.url, self.records = url, records
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers=serving_headers()) as client:
            i = 0
            while not self._stop.is_set():
                response = client.post(f"{self.url}/predict", json=self.records[i % len(self.records)])
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append(str(response.json()["model"]["version"]))
                i += 1

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_training_walks_the_promotion_path(versions, settings):
    v1, v2 = versions
    first = [(r["environment"], r["action"]) for r in ledger(settings, to_version=v1)]
    assert first[:3] == [("dev", "promote"), ("staging", "promote"), ("prod", "promote")]
    steps = {r["environment"]: r for r in ledger(settings, to_version=v2)}
    assert steps["dev"]["action"] == "promote"  # dev gates: roc_auc >= 0.60
    for row in steps.values():
        checks = {c["name"] for c in row["metrics"]["checks"]}
        assert {"threshold:roc_auc", "latency", "min_training_rows"} <= checks
        assert ("path" in checks) == (row["environment"] != "dev")
    assert ("beats_champion" in {c["name"] for c in steps["prod"]["metrics"]["checks"]}) if "prod" in steps else True


def test_promote_and_rollback_forms_with_zero_errors_under_traffic(versions, settings, claims_config, serving):
    from airloop.tasks import lifecycle

    v1, v2 = versions
    promote_dag = load_dag("airloop_lifecycle.py", "claims_fraud__promote")
    rollback_dag = load_dag("airloop_lifecycle.py", "claims_fraud__rollback")
    records = lifecycle.smoke_inputs(claims_config, settings, v1)
    with Traffic(serving.url, records) as traffic:
        if aliases(settings)["prod"] == v2:  # v2 won prod on its own: step back first
            run = trigger(rollback_dag, {"environment": "prod", "reason": "start from v1"})
            assert str(run.state) == "success", task_states(run)
        assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == v1
        if aliases(settings)["staging"] != v2:
            run = trigger(promote_dag, {"version": int(v2), "environment": "staging",
                                                      "reason": "staging review", "force": True})
            assert str(run.state) == "success", task_states(run)
            assert task_states(run)["deploy"] == "skipped"  # staging is not served here
        run = trigger(promote_dag, {"version": int(v2), "environment": "prod",
                                                  "reason": "release 2", "force": True})
        assert str(run.state) == "success", task_states(run)
        assert task_states(run)["deploy"] == "success"
        assert aliases(settings)["prod"] == v2
        assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == v2
        promoted = ledger(settings, environment="prod", to_version=v2)[-1]
        assert promoted["action"] == "promote" and promoted["actor"].startswith(("user:", "airflow:"))
        assert promoted["reason"].startswith("release 2")

        run = trigger(rollback_dag, {"environment": "prod", "target": "previous",
                                                   "reason": "error spike after release 2"})
        assert str(run.state) == "success", task_states(run)
        assert aliases(settings)["prod"] == v1
        assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == v1
    last = ledger(settings, environment="prod")[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == ("rollback", v2, v1)
    assert last["reason"] == "error spike after release 2"
    errors = [s for s in traffic.statuses if s != 200]
    assert len(traffic.statuses) > 50 and errors == [], f"{len(errors)} errors in {len(traffic.statuses)} requests"
    assert {v1, v2} <= set(traffic.versions)  # both versions answered during the test
    print(f"traffic during promote + rollback: {len(traffic.statuses)} requests, {len(errors)} errors")


def test_the_path_is_enforced(versions, settings, claims_config):
    from airloop.registry import client as registry
    from airloop.registry import lifecycle

    _, v2 = versions
    client = registry.get_client(settings)
    source = client.get_model_version("claims_fraud", v2)
    v3 = str(client.create_model_version("claims_fraud", source.source, run_id=source.run_id, tags=source.tags).version)
    before = aliases(settings)
    result = lifecycle.promote_version(claims_config, settings, v3, "staging", actor="test", reason="skip dev")
    assert not result["promoted"]
    assert {c["name"]: c["passed"] for c in result["checks"]}["path"] is False
    assert "never in dev" in result["reason"]
    assert aliases(settings) == before
    assert ledger(settings, to_version=v3)[-1]["action"] == "refuse"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_promotions_have_exactly_one_winner(versions, settings, claims_config, backend):
    """Two processes promote two copies of the same model into an environment that requires
    beating its incumbent: the lock makes one go first, the other then faces it and loses."""
    from airloop.core import store
    from airloop.core.pipeline import EnvironmentConfig
    from airloop.registry import client as registry
    from airloop.registry import ledger as store_ledger
    from tests.pg import fresh_database

    _, v2 = versions
    env = f"race_{backend[:2]}"
    promotion = claims_config.promotion.model_copy(update={"environments": [
        EnvironmentConfig(name="dev", thresholds={"roc_auc": 0.6}, latency_budget_ms=200),
        EnvironmentConfig(name=env, thresholds={"roc_auc": 0.6}, latency_budget_ms=200, min_improvement=1e-6),
        EnvironmentConfig(name="prod", serving=True)]})
    config = claims_config.model_copy(update={"promotion": promotion})
    client = registry.get_client(settings)
    source = client.get_model_version("claims_fraud", v2)
    copies = [str(client.create_model_version("claims_fraud", source.source, run_id=source.run_id,
                                              tags=source.tags).version) for _ in range(2)]

    def run(race_settings):
        from airloop.registry import lifecycle

        for version in copies:
            assert lifecycle.promote_version(config, race_settings, version, "dev", actor="test", reason="dev")["promoted"]
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=promote_when_released, args=(config, race_settings, v, env, barrier, results)) for v in copies]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=300) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        winners = [o for o in outcomes if o[1]]
        assert len(winners) == 1, outcomes
        winner = winners[0][0]
        loser = next(o for o in outcomes if not o[1])
        assert loser[2] == winner  # the loser was judged against the winner, not the old (empty) slot
        assert str(registry.alias_version(client, "claims_fraud", env).version) == winner
        rows = [r for r in store_ledger.ledger_rows(store.get_engine(race_settings.monitoring_db_uri), "claims_fraud")
                if r["environment"] == env]
        assert sorted(r["action"] for r in rows) == ["promote", "refuse"]
        assert next(r for r in rows if r["action"] == "promote")["to_version"] == winner

    if backend == "sqlite":
        run(settings)
    else:
        with fresh_database() as uri:
            run(settings.model_copy(update={"monitoring_db_uri": uri}))


def test_audit_lineage_compare_and_rollback_api(versions, settings, serving):
    from fastapi.testclient import TestClient

    from airloop.registry import client as registry
    from airloop_provider.api import create_api_app

    v1, v2 = versions
    api = TestClient(create_api_app())
    assert api.get("/api/v1/pipelines/claims_fraud/ledger").status_code == 401
    auth = {"Authorization": f"Bearer {settings.admin_token}"}
    base = "/api/v1/pipelines/claims_fraud"

    envs = api.get(f"{base}/environments", headers=auth).json()["environments"]
    assert [(e["name"], e["serving"]) for e in envs] == [("dev", False), ("staging", False), ("prod", True)]
    prod_moves = ledger(settings, environment="prod")
    promote_v2 = next(r for r in reversed(prod_moves) if r["action"] == "promote" and r["to_version"] == v2)
    at = promote_v2["recorded_at"].replace(tzinfo=timezone.utc) + timedelta(milliseconds=1)
    answer = api.get(f"{base}/environments/prod/at", params={"time": at.isoformat()}, headers=auth).json()
    assert (answer["version"], answer["action"], answer["ledger_id"]) == (v2, "promote", promote_v2["id"])
    assert answer["reason"].startswith("release 2") and answer["actor"]
    now = api.get(f"{base}/environments/prod/at", params={"time": datetime.now(timezone.utc).isoformat()},
                  headers=auth).json()
    assert now["version"] == v1 and now["action"] == "rollback"

    lineage = api.get(f"{base}/versions/{v2}/lineage", headers=auth).json()
    assert lineage["data_interval"] == f"2026-02-08/{SECOND_AS_OF}"
    assert len(lineage["data_fingerprint"]) == 64 and lineage["validation"] == "passed"
    assert lineage["study"] == f"claims_fraud__{SECOND_AS_OF}" and lineage["best_trial"] is not None
    assert lineage["code_version"] and lineage["replaced_champion"] == v1
    assert lineage["train_rows"] > 1000 and "roc_auc" in lineage["metrics"]
    assert {r["action"] for r in lineage["ledger"]} >= {"promote", "rollback"}

    comparison = api.get(f"{base}/compare", params={"a": v1, "b": v2}, headers=auth).json()
    assert comparison["metrics"]["roc_auc"]["delta"] == pytest.approx(
        comparison["metrics"]["roc_auc"]["b"] - comparison["metrics"]["roc_auc"]["a"])
    assert comparison["data"]["data_interval"]["a"] != comparison["data"]["data_interval"]["b"]
    client = registry.get_client(settings)
    run_id = client.get_model_version("claims_fraud", v2).run_id
    logged = {a.path for a in client.list_artifacts(run_id, "comparisons")}
    assert {f"comparisons/v{v1}_vs_v{v2}.md", f"comparisons/v{v1}_vs_v{v2}.json"} <= logged

    assert api.post(f"{base}/rollback", json={"environment": "prod", "reason": "x"}, headers=auth).status_code == 422
    assert api.post(f"{base}/rollback", json={"environment": "nowhere", "reason": "bad env"},
                    headers=auth).status_code == 422
    promoted = api.post(f"{base}/promote", json={"version": int(v2), "environment": "prod", "force": True,
                                                 "reason": "re-release 2", "requested_by": "ops"}, headers=auth)
    assert promoted.status_code == 200, promoted.text
    assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == v2
    back = api.post(f"{base}/rollback", json={"environment": "prod", "reason": "api rollback",
                                              "requested_by": "ops"}, headers=auth)
    assert back.status_code == 200, back.text
    assert back.json()["version"] == v1 and back.json()["serving"]["version"] == v1
    assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == v1
    assert ledger(settings, environment="prod")[-1]["actor"] == "api:ops"


def test_post_deploy_guard_rolls_back_a_breaking_champion(versions, settings, claims_config, serving):
    from airloop.registry import lifecycle
    from airloop.serving.client import ServingEndpoint
    from airloop.tasks import lifecycle

    v1, v2 = versions
    endpoint = ServingEndpoint(serving.url, settings.admin_token)
    result = lifecycle.promote_version(claims_config, settings, v2, "prod", actor="test", reason="guarded release",
                                       force=True)
    assert result["promoted"]
    lifecycle.reload_serving(claims_config, settings, endpoint, v2)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    summary = {"tenant": "default", "pipeline": "claims_fraud", "model_version": v2,
               "interval_start": today.isoformat(), "interval_end": (today + timedelta(days=1)).isoformat(),
               "error_rate": 0.0, "latency_p95_ms": 3.0, "performance_drop": 0.01}
    quiet = lifecycle.post_deploy_guard(claims_config, settings, summary, actor="guard")
    assert quiet["action"] == "none" and "within the guard's limits" in quiet["reason"]
    # an older version's breach (a backfill over history) never touches today's champion
    old = lifecycle.post_deploy_guard(claims_config, settings, summary | {"model_version": v1, "error_rate": 0.5},
                                      actor="guard")
    assert old["action"] == "none" and aliases(settings)["prod"] == v2

    broken = lifecycle.post_deploy_guard(claims_config, settings, summary | {"error_rate": 0.2},
                                         actor="airflow:scheduled", endpoint=endpoint)
    assert broken["action"] == "rollback" and "error_rate = 0.2 > 0.05" in broken["reason"]
    assert aliases(settings)["prod"] == v1
    assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == v1
    again = lifecycle.post_deploy_guard(claims_config, settings, summary | {"error_rate": 0.2},
                                        actor="airflow:scheduled", endpoint=endpoint)
    assert again["action"] == "none"  # v2 is no longer the champion: nothing more to do
    rows = ledger(settings, environment="prod", action="rollback", from_version=v2)
    assert rows[-1]["reason"].startswith("post-deploy guard")


def test_ab_test_from_the_forms_routes_logs_and_concludes(versions, settings, claims_config, serving):
    """Start a 50/50 A/B test with the form DAG, send labelled traffic through serving, run the
    scheduled evaluation DAG for today's interval: the test is concluded and serving stops routing."""
    import time

    import pandas as pd
    import sqlalchemy as sa

    from airloop.core import store
    from airloop.data.simulator import generate_day
    from airloop.experiments import definition, routing
    from airloop.registry import client as registry

    v1, v2 = versions
    assert aliases(settings)["prod"] == v1
    start_dag = load_dag("airloop_lifecycle.py", "claims_fraud__abtest")
    evaluate_dag = load_dag("airloop_lifecycle.py", "claims_fraud__abtest_evaluate")
    run = trigger(start_dag, {"action": "start", "challenger_version": int(v2), "traffic_pct": 50.0,
                              "success_metric": "log_loss", "min_samples": 400, "max_duration_days": 7})
    assert str(run.state) == "success", task_states(run)
    started = httpx.get(f"{serving.url}/abtest", headers=serving_headers()).json()["tests"]
    assert len(started) == 1 and started[0]["challenger_version"] == v2

    frame = pd.concat([generate_day(date(2026, 3, d)) for d in (1, 2, 3)], ignore_index=True)
    records = [{k: (None if v != v else v) for k, v in row.items()} for row in
               frame[list(claims_config.features)].to_dict(orient="records")]
    ids = [f"ab-{i}" for i in range(len(records))]
    seen: dict[str, set] = {"champion": set(), "challenger": set()}
    variant_of: dict[str, str] = {}
    with httpx.Client(timeout=30, headers=serving_headers()) as client:
        for i in range(0, len(records), 100):
            answer = client.post(f"{serving.url}/predict",
                                 json={"records": records[i:i + 100], "request_ids": ids[i:i + 100]})
            assert answer.status_code == 200, answer.text
            for rid, item in zip(ids[i:i + 100], answer.json()["predictions"]):
                seen[item["variant"]].add(item["model_version"])
                variant_of[rid] = item["variant"]
        again = client.post(f"{serving.url}/predict", json={"records": records[:50], "request_ids": ids[:50]}).json()
        assert [p["variant"] for p in again["predictions"]] == [variant_of[rid] for rid in ids[:50]]  # sticky
        labels = [{"request_id": rid, "label": int(y)} for rid, y in zip(ids, frame[claims_config.target])]
        for i in range(0, len(labels), 500):
            assert client.post(f"{serving.url}/feedback", json={"items": labels[i:i + 500]}).status_code == 200
    assert seen == {"champion": {v1}, "challenger": {v2}}
    share = sum(routing.assign_variant(rid, started[0]["test_id"], 50.0) == "challenger" for rid in ids) / len(ids)
    assert 0.45 < share < 0.55
    engine = store.get_engine(settings.monitoring_db_uri)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the prediction log is written off the request path
        with engine.connect() as conn:
            logged = conn.execute(sa.select(sa.func.count()).select_from(store.predictions).where(
                store.predictions.c.request_id.like("ab-%"))).scalar_one()
        if logged >= len(ids):
            break
        time.sleep(0.5)
    assert logged >= len(ids)

    tomorrow = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    run = evaluate_dag.test(logical_date=tomorrow)  # the interval [today, tomorrow)
    assert str(run.state) == "success", task_states(run)
    test = definition.get_test(engine, started[0]["test_id"])
    assert test.status == "concluded" and test.decision in ("promote_challenger", "keep_champion")
    result = test.result
    assert result["champion"]["labelled_rows"] >= 400 and result["challenger"]["labelled_rows"] >= 400
    low, high = result["comparison"]["ci_low"], result["comparison"]["ci_high"]
    assert low <= result["comparison"]["difference"] <= high
    expected = v2 if test.decision == "promote_challenger" else v1
    assert str(registry.alias_version(registry.get_client(settings), "claims_fraud", "champion").version) == expected
    assert httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"] == expected
    assert httpx.get(f"{serving.url}/abtest", headers=serving_headers()).json()["tests"] == []
    print(f"A/B test {test.test_id}: {test.decision}; {result['reason']}")
