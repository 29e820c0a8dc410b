"""A pipeline file added after serving started is served without a restart: the gateway (what
``airloop serve`` runs) under uvicorn, a real MLflow store with real models. Before its file
exists, requests for the pipeline get a 404 that names it; once it exists, ``POST <tenant
route>/reload`` with the admin token (what deploy calls) mounts it, loads its champion and from
then on it answers like a pipeline mounted at startup (its own tenant token, its own rows). A
champion that cannot be loaded is refused with serving's reason; the pipeline stays known."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from airloop.core.pipeline import load_pipeline_config, parse_pipeline_config
from airloop.core.settings import Settings, load_settings
from airloop.data.simulator import generate_day
from airloop.serving.gateway import create_gateway
from tests.conftest import ServerThread, free_port
from tests.unit.serving.test_app import REPO_ROOT, _log_version, _preprocessor

ADMIN = "late-admin-token-81c3"
TOKENS = {"acme": "acme-token-0b2e", "globex": "globex-token-6f4d"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Late:
    settings: Settings
    url: str
    pipelines: Path
    raw: dict
    record: dict

    def write(self, name: str, tenant: str) -> None:
        (self.pipelines / f"{name}.yaml").write_text(yaml.safe_dump(self.raw | {"name": name, "tenant": tenant}))


def _register(client: MlflowClient, uri: str, tmp: Path, config, frame, *, broken: bool = False) -> None:
    X, y = frame[list(config.features)], frame[config.target]
    model = Pipeline([("pre", _preprocessor(config)), ("model", LogisticRegression(max_iter=300))]).fit(X, y)
    experiment = client.create_experiment(config.experiment_name,
                                          artifact_location=str(tmp / "artifacts" / config.name))
    client.create_registered_model(config.model_name)
    if broken:  # a registered version whose artifact folder does not exist
        version = client.create_model_version(config.model_name, source=str(tmp / "artifacts" / "gone"))
    else:
        version = _log_version(client, uri, experiment, model, X, registered_name=config.model_name)
    client.set_registered_model_alias(config.model_name, "champion", version.version)


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("late")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    (pipelines / "acme_claims.yaml").write_text(yaml.safe_dump(raw | {"name": "acme_claims", "tenant": "acme"}))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = load_settings({
        "AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"), "MLFLOW_TRACKING_URI": uri,
        "AIRLOOP_PIPELINES_DIR": str(pipelines), "AIRLOOP_PIPELINE": "acme_claims", "AIRLOOP_ADMIN_TOKEN": ADMIN,
        "AIRLOOP_TENANT_TOKENS": ",".join(f"{t}={v}" for t, v in TOKENS.items()),
    })
    client = MlflowClient(tracking_uri=uri)
    frame = generate_day(date(2026, 1, 5))
    _register(client, uri, tmp, load_pipeline_config("acme_claims", settings), frame)
    # registered (trained elsewhere) before serving knows their pipeline files
    for name, broken in (("late_claims", False), ("broken_claims", True)):
        config = parse_pipeline_config(raw | {"name": name, "tenant": "globex"})
        _register(client, uri, tmp, config, frame, broken=broken)
    record = frame[list(load_pipeline_config("acme_claims", settings).features)].head(1).to_dict("records")[0]
    record = {k: (None if v != v else v) for k, v in record.items()}
    with ServerThread(create_gateway(settings), free_port()) as server:
        yield Late(settings, server.url, pipelines, raw, record)


def test_an_unknown_pipeline_gets_a_404_naming_it(late):
    # (it reaches the default pipeline's app, whose tenant guard runs first: the admin token passes it)
    answer = httpx.post(f"{late.url}/t/globex/late_claims/predict", json=late.record, headers=_auth(ADMIN), timeout=30)
    assert answer.status_code == 404 and "serving has no pipeline globex/late_claims" in answer.json()["detail"]
    reload = httpx.post(f"{late.url}/t/globex/late_claims/reload", json={}, headers=_auth(ADMIN), timeout=30)
    assert reload.status_code == 404, reload.text
    assert reload.json()["outcome"] == "unknown_pipeline"
    assert "no file late_claims.yaml in" in reload.json()["detail"]
    # reload needs the admin token, for a pipeline serving does not know too
    denied = httpx.post(f"{late.url}/t/globex/late_claims/reload", json={}, headers=_auth(TOKENS["acme"]), timeout=30)
    assert denied.status_code == 401


def test_a_pipeline_file_added_after_start_is_served_after_a_reload(late):
    late.write("late_claims", "globex")
    reload = httpx.post(f"{late.url}/t/globex/late_claims/reload", json={}, headers=_auth(ADMIN), timeout=120)
    assert reload.status_code == 200, reload.text
    assert reload.json()["model"]["name"] == "globex__late_claims" and reload.json()["model"]["version"] == "1"
    route = f"{late.url}/t/globex/late_claims"
    assert httpx.get(f"{route}/ready", timeout=30).status_code == 200
    own = httpx.post(f"{route}/predict", json=late.record, headers=_auth(TOKENS["globex"]), timeout=30)
    assert own.status_code == 200 and own.json()["model"]["name"] == "globex__late_claims"
    # its tenant's rules, like a pipeline mounted at startup
    other = httpx.post(f"{route}/predict", json=late.record, headers=_auth(TOKENS["acme"]), timeout=30)
    assert other.status_code == 403
    assert httpx.post(f"{route}/predict", json=late.record, timeout=30).status_code == 401
    # a second reload goes to the mounted app itself; the others are untouched
    again = httpx.post(f"{route}/reload", json={}, headers=_auth(ADMIN), timeout=120)
    assert again.status_code == 200 and again.json()["previous_version"] == "1"
    acme = httpx.get(f"{late.url}/t/acme/acme_claims/model", headers=_auth(TOKENS["acme"]), timeout=30)
    assert acme.status_code == 200 and acme.json()["name"] == "acme__acme_claims"


def test_a_new_pipeline_whose_champion_cannot_load_is_refused_with_the_reason(late):
    late.write("broken_claims", "globex")
    reload = httpx.post(f"{late.url}/t/globex/broken_claims/reload", json={}, headers=_auth(ADMIN), timeout=120)
    assert reload.status_code in (404, 409), reload.text  # the artifact folder does not exist
    body = reload.json()
    assert body["serving"] is None and "version 1" in body["detail"], body
    # the pipeline is known now (not ready); another pipeline's file naming another tenant is not
    assert httpx.get(f"{late.url}/t/globex/broken_claims/ready", timeout=30).status_code == 503
    late.write("misfiled_claims", "acme")
    wrong = httpx.post(f"{late.url}/t/globex/misfiled_claims/reload", json={}, headers=_auth(ADMIN), timeout=30)
    assert wrong.status_code == 404 and "defines acme/misfiled_claims" in wrong.json()["detail"]
