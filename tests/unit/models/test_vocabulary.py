"""Open vocabularies: a category feature without ``values`` learns its vocabulary from the
training window, capped at ``max_categories`` (the most frequent values; the rest share one
"infrequent" bucket), and the vocabulary travels with the model version in its fitted encoder.

A pipeline file like the demo's but with ``region`` and ``incident_type`` undeclared and a
high-cardinality ``repair_shop`` (60 shops, ``max_categories: 10``) trains; two versions are
logged the way training logs them and registered in a SQLite MLflow store: v1 with an uncapped
one-hot encoder (every training value), v2 with :func:`airloop.data.features.category_transformers`
(the capped encoder the study's ``build_model`` uses). Serving reads each version's vocabulary and flags (or, with ``serving.out_of_domain:
reject``, refuses) what is outside it; monitoring counts the flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from airloop.core import store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config, parse_pipeline_config
from airloop.core.settings import ConfigError, Settings
from airloop.data.features import category_transformers, features_and_target
from airloop.data.simulator import generate_day
from airloop.data.validation import build_suite
from airloop.models.artifact import log_sklearn_model, read_model_version
from airloop.models.schema import learned_vocabulary, request_records, signature_inputs
from airloop.monitoring.quality import out_of_domain_shares
from airloop.monitoring.traffic import load_interval
from airloop.registry.client import get_client, register_version
from airloop.serving.app import create_app
from airloop.training.search import build_model
from tests.unit.serving.test_app import AUTH, REPO_ROOT, TENANT_AUTH, _settings

NAME = "claims_open"
SHOPS = [f"shop_{i:02d}" for i in range(60)]


def open_raw() -> dict:
    """The demo pipeline with two undeclared categories and a 60-value one capped at 10."""
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    raw["name"] = NAME
    for column in ("region", "incident_type"):
        raw["features"][column] = {"type": "category"}
    raw["features"]["repair_shop"] = {"type": "category", "max_categories": 10}
    return raw


def with_shops(frame: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """A ``repair_shop`` column: 60 shops, a few frequent, many rare (Zipf-like)."""
    p = 1.0 / np.arange(1, len(SHOPS) + 1)
    return frame.assign(repair_shop=np.random.default_rng(seed).choice(SHOPS, size=len(frame), p=p / p.sum()))


@dataclass
class Registered:
    settings: Settings
    config: PipelineConfig
    train: pd.DataFrame
    X: pd.DataFrame
    pipelines: Path


def write_pipeline(pipelines: Path, **serving) -> None:
    raw = open_raw() | ({"serving": serving} if serving else {})
    (pipelines / f"{NAME}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    tmp = tmp_path_factory.mktemp("vocabulary")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    write_pipeline(pipelines)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = _settings(tmp, uri, AIRLOOP_PIPELINES_DIR=str(pipelines), AIRLOOP_PIPELINE=NAME,
                         AIRLOOP_MLFLOW_ARTIFACT_ROOT=str(tmp / "artifacts"))
    config = load_pipeline_config(NAME, settings)
    train = with_shops(pd.concat([generate_day(date(2026, 1, 5) + timedelta(days=i)) for i in range(3)],
                                 ignore_index=True))
    X, y = features_and_target(config, train)
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    uncapped = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                         ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    study_model = Pipeline([("pre", ColumnTransformer([("num", numeric, config.numeric_features),
                                                       ("cat", uncapped, config.categorical_features)])),
                            ("model", LogisticRegression(max_iter=1000))]).fit(X, y)
    # the study's own models use the capped encoder
    assert "cat_10" in [name for name, *_ in build_model(config, "logistic_regression", {"C": 1.0}).named_steps["pre"].transformers]
    capped = Pipeline([("pre", ColumnTransformer([("num", numeric, config.numeric_features),
                                                  *category_transformers(config)])),
                       ("model", LogisticRegression(max_iter=1000))]).fit(X, y)
    client = get_client(settings)
    experiment = client.create_experiment(config.experiment_name, artifact_location=str(tmp / "artifacts"))
    for i, model in enumerate((study_model, capped), start=1):
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_sklearn_model(config, model, X, pip_requirements=["scikit-learn"])
        version = register_version(client, config.model_name, info.model_uri, run.info.run_id, f"{NAME}@v{i}",
                                   {"airloop.pipeline": NAME})
        assert str(version.version) == str(i)
    client.set_registered_model_alias(config.model_name, "champion", "1")
    return Registered(settings, config, train, X, pipelines)


# ------------------------------------------------------------------------------ the pipeline file
def test_a_category_without_values_is_learned_and_the_suite_expects_no_value_set():
    config = parse_pipeline_config(open_raw())
    assert config.features["region"].learned and not config.features["channel"].learned
    assert config.features["region"].category_cap == 200 and config.features["repair_shop"].category_cap == 10
    suite = build_suite(config)
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    for column in ("region", "incident_type", "repair_shop"):  # null and type checks stay
        assert ("expect_column_values_to_be_in_type_list", column) in kinds
        assert ("expect_column_values_to_not_be_null", column) in kinds
        assert ("expect_column_values_to_be_in_set", column) not in kinds
    assert ("expect_column_values_to_be_in_set", "channel") in kinds  # declared: still required
    # the shipped suites do not change (every demo category declares its values)
    assert build_suite(load_pipeline_config("claims_fraud")) == json.loads(
        (REPO_ROOT / "include" / "gx" / "claims_fraud.suite.json").read_text())
    # a config round-trips (model_dump -> validate), max_categories only on categories
    assert type(config).model_validate(config.model_dump(mode="json")) == config
    with pytest.raises(ConfigError, match="max_categories' is only for category columns"):
        parse_pipeline_config(open_raw() | {"features": {**open_raw()["features"],
                                                         "deductible": {"type": "float", "max_categories": 3}}})
    with pytest.raises(ConfigError, match="'values' is empty"):
        parse_pipeline_config(open_raw() | {"features": {**open_raw()["features"],
                                                         "region": {"type": "category", "values": []}}})


def test_the_capped_encoder_keeps_the_most_frequent_values(registered):
    config, X = registered.config, registered.X
    entries = category_transformers(config)
    assert [(name, cols) for name, _, cols in entries] == [("cat", ["incident_type", "region", "channel",
                                                                     "police_report"]), ("cat_10", ["repair_shop"])]
    model = Pipeline([("pre", ColumnTransformer(entries))]).fit(X)
    vocabulary = learned_vocabulary(model, ["region", "repair_shop"])
    assert set(vocabulary["region"]) == set(X["region"].dropna())  # 5 regions <= 200: all of them
    counts = X["repair_shop"].value_counts()
    assert len(vocabulary["repair_shop"]) == 10 and counts.size == 60
    kept = counts[vocabulary["repair_shop"]]
    assert kept.min() >= counts.drop(vocabulary["repair_shop"]).max()  # the 10 most frequent
    # 10 shop columns + one "infrequent" column, shared by rare shops and shops never seen
    shops = model.named_steps["pre"].named_transformers_["cat_10"]
    names = list(shops.get_feature_names_out())
    assert len(names) == 11 and names[-1] == "repair_shop_infrequent_sklearn"
    encoded = shops.transform(pd.DataFrame({"repair_shop": ["never_seen", counts.index[-1], counts.index[0]]}))
    assert encoded[:, -1].tolist() == [1.0, 1.0, 0.0] and encoded.sum(axis=1).tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------ stored with the version
def test_the_vocabulary_is_stored_with_the_version(registered):
    config, X = registered.config, registered.X
    client = get_client(registered.settings)
    _, schema, _ = read_model_version(client, registered.settings, config.model_name, "1")  # pipeline file found
    domain = schema.domain
    assert domain is not None and domain.learned == {"region", "incident_type", "repair_shop"}
    assert domain.categories["region"] == set(X["region"].dropna())
    assert domain.categories["incident_type"] == set(X["incident_type"].dropna())
    assert domain.categories["channel"] == set(config.features["channel"].values)  # declared: the file's
    assert domain.ranges["customer_age"] == (18, 100)
    _, capped, _ = read_model_version(client, registered.settings, config.model_name, "2", config=config)
    counts = X["repair_shop"].value_counts()
    shops = capped.domain.categories["repair_shop"]
    assert len(shops) == 10 and counts[list(shops)].min() >= counts.drop(list(shops)).max()
    # without a pipeline to read it with, a version has no domain (nothing is flagged)
    other = registered.settings.model_copy(update={"pipelines_dir": registered.pipelines / "none"})
    assert read_model_version(client, other, config.model_name, "1")[1].domain is None


# ------------------------------------------------------------------------------ serving, monitoring
def _rows(settings: Settings) -> dict[str, str | None]:
    engine = store.get_engine(settings.monitoring_db_uri)
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(store.predictions.c.request_id, store.predictions.c.out_of_domain)
                                 .where(store.predictions.c.pipeline == NAME)).all())


def test_serving_flags_an_unseen_category_and_monitoring_counts_it(registered):
    settings, config = registered.settings, registered.config
    records = request_records(signature_inputs(config), registered.train[list(config.features)].head(4))
    rare = registered.X["repair_shop"].value_counts().index[-1]  # seen in training, outside the capped top 10
    records[1]["region"] = "atlantis"
    records[2]["repair_shop"] = rare
    records[3]["customer_age"] = 150
    started = datetime.now(timezone.utc)
    app = create_app(settings)
    with TestClient(app, headers=TENANT_AUTH) as http:
        answer = http.post("/predict", json={"records": records, "request_ids": ["c0", "c1", "c2", "c3"]})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 4  # flagged, still answered (flag is the default)
        assert http.post("/reload", json={"version": "2"}, headers=AUTH).status_code == 200
        again = http.post("/predict", json={"records": records[1:3], "request_ids": ["v2-1", "v2-2"]})
        assert again.status_code == 200, again.text
        assert app.state.prediction_logger.flush(timeout=60)
    stored = _rows(settings)
    assert stored["c0"] is None and json.loads(stored["c1"]) == ["region"]
    assert stored["c2"] is None  # v1 (an uncapped encoder) knows every shop of its window
    assert json.loads(stored["c3"]) == ["customer_age"]
    # v2 learned only the 10 most frequent shops: the rare one is outside its vocabulary
    assert json.loads(stored["v2-1"]) == ["region"] and json.loads(stored["v2-2"]) == ["repair_shop"]

    engine = store.get_engine(settings.monitoring_db_uri)
    frame, _ = load_interval(engine, config, "default", started - timedelta(minutes=1),
                             datetime.now(timezone.utc) + timedelta(minutes=1))
    shares = out_of_domain_shares(config, frame[frame["status"] == "ok"])
    assert shares["out_of_domain_share"] == pytest.approx(4 / 6)  # c1, c3, v2-1, v2-2
    assert shares["unseen_category_share"] == pytest.approx(3 / 6)  # c1, v2-1, v2-2
    assert shares["out_of_domain_features"] == pytest.approx({"customer_age": 1 / 6, "region": 2 / 6,
                                                              "repair_shop": 1 / 6})


def test_reject_refuses_with_a_422_naming_record_feature_value_and_vocabulary(registered):
    settings, config = registered.settings, registered.config
    write_pipeline(registered.pipelines, out_of_domain="reject")
    try:
        records = request_records(signature_inputs(config), registered.train[list(config.features)].head(2))
        with TestClient(create_app(settings), headers=TENANT_AUTH) as http:
            assert http.post("/predict", json={"records": records}).status_code == 200
            answer = http.post("/predict", json={"records": [records[0], records[1] | {"region": "atlantis"}]})
            single = http.post("/predict", json=records[0] | {"witness_count": 51})
    finally:
        write_pipeline(registered.pipelines)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    regions = sorted(set(registered.X["region"].dropna()))
    assert error == {"record": 1, "field": "region", "type": "out_of_domain", "value": "atlantis",
                     "allowed": {"values": regions, "count": len(regions), "learned": True},
                     "message": error["message"]}
    assert "'atlantis' is not among the vocabulary this model version learned" in error["message"]
    assert single.status_code == 422
    assert single.json()["detail"][0] | {"message": None} == {
        "record": 0, "field": "witness_count", "type": "out_of_domain", "value": 51,
        "allowed": {"min": 0, "max": 50}, "message": None}
