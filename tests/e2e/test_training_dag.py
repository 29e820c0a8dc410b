"""End to end: the real training DAG (``dag.test``) on simulator data, real SQLite MLflow store,
real GX suite, a real serving process over HTTP.

1. A clean interval trains, registers, promotes and deploys: ``champion`` exists and serving
   answers with that version.
2. A window holding the bad-data day stops at validation: nothing trained, the day quarantined,
   champion and serving untouched, no ledger entry.
3. Re-running the good interval changes nothing: same version, same ledger.
"""

from __future__ import annotations

from datetime import date

import httpx
import pytest

from tests.e2e.conftest import run_dag, task_states
from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

GOOD_AS_OF = "2026-03-01"
BAD_AS_OF = "2026-03-12"  # window holds the scripted bad-data day 2026-03-10
FAST = {"window_days": 28, "n_trials": 4, "timeout_s": 300}


def run(dag, as_of: str):
    return run_dag(dag, as_of, FAST)


@pytest.fixture(scope="module", autouse=True)
def history(settings, claims_config):
    """Seventy days of simulator data (2026-01-01 .. 2026-03-11)."""
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    return write_history(resolve_source_path(claims_config, settings), start=date(2026, 1, 1), days=71,
                         pattern=claims_config.source.partition)


def ledger(settings):
    from airloop.core import store
    from airloop.registry import ledger as store_ledger

    return store_ledger.ledger_rows(store.get_engine(settings.monitoring_db_uri), "claims_fraud")


def test_good_interval_trains_promotes_and_deploys(training_dag, serving, settings, claims_config):
    from airloop.registry import client as registry

    assert httpx.get(f"{serving.url}/ready").status_code == 503  # nothing to serve yet
    dag_run = run(training_dag, GOOD_AS_OF)
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states["train_trials[0]"] == states["train_trials[1]"] == "success"

    client = registry.get_client(settings)
    champion = registry.alias_version(client, "claims_fraud", "champion")
    assert champion is not None
    version = str(champion.version)
    tags = champion.tags
    assert tags["airloop.data_interval"] == f"2026-02-01/{GOOD_AS_OF}"
    assert len(tags["airloop.data_fingerprint"]) == 64
    assert tags["airloop.validation"] == "passed"
    assert tags["airloop.study"] == f"claims_fraud__{GOOD_AS_OF}"
    assert tags["airloop.dag_run_id"] == dag_run.run_id
    assert tags["airloop.code_version"]
    # every trial tracked as a child run of the training run
    trials = client.search_runs([client.get_run(champion.run_id).info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{champion.run_id}'")
    assert len(trials) >= FAST["n_trials"]
    # the model is stored in the safe skops format
    from mlflow.models import get_model_info

    assert get_model_info(f"models:/claims_fraud/{version}").flavors["sklearn"]["serialization_format"] == "skops"

    info = httpx.get(f"{serving.url}/model", headers=serving_headers()).json()
    assert str(info["version"]) == version
    record = {"claim_amount": 8000.0, "customer_age": 40, "policy_tenure_days": 300, "vehicle_age_years": 4,
              "prior_claims": 2, "days_to_report": 30, "witness_count": 0, "deductible": 500.0,
              "premium_monthly": 90.0, "incident_type": "theft", "region": "north", "channel": "online",
              "police_report": "no"}
    answer = httpx.post(f"{serving.url}/predict", json=record, headers=serving_headers())
    assert answer.status_code == 200, answer.text
    assert str(answer.json()["model"]["version"]) == version
    assert 0.0 <= answer.json()["predictions"][0]["probabilities"]["1"] <= 1.0

    # the promotion path: dev -> staging -> prod, one ledger row each; prod's moves are the champion's
    rows = ledger(settings)
    assert [(r["action"], r["environment"], r["alias"], r["to_version"]) for r in rows] == [
        ("promote", "dev", "dev", version), ("promote", "staging", "staging", version),
        ("promote", "prod", "champion", version)]
    assert {a: str(registry.alias_version(client, "claims_fraud", a).version) for a in ("dev", "staging", "prod")} == {
        "dev": version, "staging": version, "prod": version}


def test_bad_data_day_stops_at_validation(training_dag, serving, settings, claims_config):
    from airloop.data.quarantine import quarantined_days
    from airloop.registry import client as registry

    client = registry.get_client(settings)
    champion_before = str(registry.alias_version(client, "claims_fraud", "champion").version)
    versions_before = len(client.search_model_versions("name = 'claims_fraud'"))
    ledger_before = ledger(settings)

    dag_run = run(training_dag, BAD_AS_OF)
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed", states
    assert states["validate"] == "failed"
    assert all(states[t] in ("upstream_failed", "None") for t in ("prepare_study", "evaluate", "register", "promote", "deploy"))

    assert date(2026, 3, 10) in quarantined_days(claims_config, settings)
    reason = (settings.quarantine_dir / "claims_fraud" / "2026-03-10" / "reason.json").read_text()
    assert "claim_amount" in reason
    result = settings.validation_dir / "claims_fraud" / BAD_AS_OF / "result.json"
    assert result.is_file()
    # the source partition is kept untouched
    assert (settings.data_dir / "claims_fraud" / "dt=2026-03-10" / "claims.csv").is_file()

    assert str(registry.alias_version(client, "claims_fraud", "champion").version) == champion_before
    assert len(client.search_model_versions("name = 'claims_fraud'")) == versions_before
    assert ledger(settings) == ledger_before
    assert str(httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"]) == champion_before


def test_rerun_of_an_interval_changes_nothing(training_dag, serving, settings):
    from airloop.registry import client as registry

    client = registry.get_client(settings)
    versions_before = sorted(str(v.version) for v in client.search_model_versions("name = 'claims_fraud'"))
    ledger_before = ledger(settings)
    dag_run = run(training_dag, GOOD_AS_OF)
    assert str(dag_run.state) == "success", task_states(dag_run)
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'claims_fraud'")) == versions_before
    assert ledger(settings) == ledger_before



def test_failed_deploy_rolls_back_to_the_previous_champion(training_dag, serving, settings, claims_config, tmp_path):
    """A promoted version that serving cannot load: the alias, the ledger and serving end on the
    previous champion, and the failure is raised."""
    import shutil

    from airloop.data.snapshot import extract_window
    from airloop.registry import client as registry
    from airloop.registry import lifecycle
    from airloop.serving.client import DeployError, ServingEndpoint
    from airloop.tasks import lifecycle as stages

    client = registry.get_client(settings)
    good = str(registry.alias_version(client, "claims_fraud", "champion").version)
    source = client.get_model_version_download_uri("claims_fraud", good)
    broken_dir = tmp_path / "broken-model"
    shutil.copytree(source.removeprefix("file://"), broken_dir)
    (broken_dir / "model.skops").write_bytes(b"not a skops archive")
    broken = str(client.create_model_version("claims_fraud", str(broken_dir)).version)
    # promoted the way a training run promotes (ledger row, then aliases: the reconciler's truth),
    # with the good version's evaluation as its evidence and the gates overridden
    good_metrics = dict(lifecycle.version_record(client, claims_config, good)["metrics"])
    promotion = lifecycle.promote_version(
        claims_config, settings, broken, claims_config.promotion.serving_environment.name, actor="test", force=True,
        evidence={"metrics": good_metrics, "champion": {"version": good, "metrics": good_metrics}},
        run_context={"dag_id": "t", "dag_run_id": "rollback-test", "as_of": GOOD_AS_OF})
    assert promotion["promoted"] and str(registry.alias_version(client, "claims_fraud", "champion").version) == broken

    snapshot = extract_window(claims_config, date.fromisoformat(GOOD_AS_OF), settings, window=28).to_dict()
    endpoint = ServingEndpoint(serving.url, settings.admin_token)
    with pytest.raises(DeployError, match=f"rolled back to v{good}"):
        stages.deploy(claims_config, promotion, snapshot, endpoint, settings, actor="test",
                      run_context={"dag_id": "t", "dag_run_id": "rollback-test", "as_of": GOOD_AS_OF})

    assert str(registry.alias_version(client, "claims_fraud", "champion").version) == good
    last = ledger(settings)[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == ("rollback", broken, good)
    assert str(httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"]) == good
    assert httpx.post(f"{serving.url}/predict", json={"records": stages.smoke_records(claims_config, snapshot, 3)},
                      headers=serving_headers()).status_code == 200
