"""The registered model speaks MLflow: its signature declares the source's types, so
``mlflow.pyfunc.load_model("models:/<name>@champion").predict(rows)`` works on the source's own
rows as pandas reads them (ints stay int64), and answers what serving answers.

A real model is trained on simulator files read back through the pipeline's source, logged the
way training logs it (:func:`airloop.models.artifact.log_sklearn_model`), registered through
:func:`airloop.registry.client.register_version` in a SQLite MLflow store and aliased champion.
(``mlflow models serve`` on the same model: ``tests/e2e/test_mlflow_interop.py``.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException

from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import Settings
from airloop.data.features import features_and_target
from airloop.data.simulator import write_history
from airloop.data.sources import read_days
from airloop.models.artifact import log_sklearn_model
from airloop.models.schema import RecordSchema, request_records, signature_frame, signature_inputs
from airloop.registry.client import get_client, register_version
from airloop.serving.app import create_app
from airloop.training.search import build_model
from tests.unit.serving.test_app import AUTH, _settings

DAYS = [date(2026, 1, 5) + timedelta(days=i) for i in range(4)]
BAD_DAY = date(2026, 3, 10)  # the simulator's broken export: nulls in claim_amount / police_report


@dataclass
class Champion:
    settings: Settings
    config: PipelineConfig
    raw: pd.DataFrame  # the source's rows as read (int64 ints, NaN for missing values)
    uri: str


def register_champion(tmp: Path, config_name: str = "claims_fraud") -> Champion:
    """Simulator files -> the pipeline's source -> a fitted model logged like training logs it,
    registered for one interval and made champion."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = _settings(tmp, uri, AIRLOOP_DATA_DIR=str(tmp / "data"),
                         AIRLOOP_MLFLOW_ARTIFACT_ROOT=str(tmp / "artifacts"))
    config = load_pipeline_config(config_name, settings)
    write_history(settings.data_dir / config.source.path, start=DAYS[0], days=len(DAYS))
    write_history(settings.data_dir / config.source.path, start=BAD_DAY, days=1)
    frames = read_days(config, [*DAYS, BAD_DAY], settings)
    train = pd.concat([frames[d] for d in DAYS], ignore_index=True)
    X, y = features_and_target(config, train)
    model = build_model(config, "logistic_regression", {"C": 1.0}).fit(X, y)

    client = get_client(settings)  # also points the fluent API at the store
    experiment = client.create_experiment(config.experiment_name, artifact_location=str(tmp / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_sklearn_model(config, model, X, pip_requirements=["scikit-learn"])
    version = register_version(client, config.model_name, info.model_uri, run.info.run_id,
                               f"{config.name}@2026-01-09", {"airloop.pipeline": config.name})
    client.set_registered_model_alias(config.model_name, "champion", version.version)
    raw = pd.concat([frames[DAYS[-1]], frames[BAD_DAY]], ignore_index=True)
    return Champion(settings, config, raw, uri)


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> Champion:
    return register_champion(tmp_path_factory.mktemp("signature"))


@pytest.fixture
def tracking(champion):
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = champion.uri
    mlflow.set_tracking_uri(champion.uri)
    yield
    mlflow.set_tracking_uri(previous)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def test_the_signature_declares_the_source_types(claims_config):
    types = {c.name: (c.type.name, c.required) for c in signature_inputs(claims_config).inputs}
    assert types == {
        "claim_amount": ("double", False), "customer_age": ("long", True), "policy_tenure_days": ("long", True),
        "vehicle_age_years": ("long", True), "prior_claims": ("long", True), "days_to_report": ("long", True),
        "witness_count": ("long", True), "deductible": ("double", True), "premium_monthly": ("double", True),
        "incident_type": ("string", True), "region": ("string", True), "channel": ("string", True),
        "police_report": ("string", False),
    }
    features = {**claims_config.model_dump()["features"],
                "flag": {"type": "bool"}, "maybe_count": {"type": "int", "max_null_fraction": 0.1}}
    other = claims_config.model_copy(update={"features": {
        k: type(claims_config.features["customer_age"]).model_validate(v) for k, v in features.items()}})
    types = {c.name: (c.type.name, c.required) for c in signature_inputs(other).inputs}
    # a nullable int column reads as float64 (NaN) on days with a null: declared double
    assert types["flag"] == ("boolean", True) and types["maybe_count"] == ("double", False)


def test_the_logged_signature_and_input_example_are_typed_like_the_source(champion, tracking):
    info = mlflow.models.get_model_info(f"models:/{champion.config.model_name}@champion")
    declared = {c.name: c.type.name for c in info.signature.inputs.inputs}
    assert declared["customer_age"] == "long" and declared["claim_amount"] == "double"
    local = mlflow.artifacts.download_artifacts(f"models:/{champion.config.model_name}@champion")
    stored = pd.read_json(Path(local, "input_example.json"), orient="split")
    assert stored["customer_age"].dtype == np.int64 and stored["witness_count"].dtype == np.int64
    # what serving smoke-tests with validates against the request schema as it is
    example = mlflow.models.Model.load(Path(local, "MLmodel")).load_input_example(local)
    assert len(RecordSchema(info.signature.inputs).validate(request_records(info.signature.inputs, example))) == 5


def test_pyfunc_predicts_the_raw_source_rows_like_serving(champion, tracking):
    config, raw = champion.config, champion.raw
    assert raw["customer_age"].dtype == np.int64 and raw["claim_amount"].isna().any()
    assert raw["police_report"].isna().any()
    model = mlflow.pyfunc.load_model(f"models:/{config.model_name}@champion")
    scores = np.asarray(model.predict(raw))  # the source's rows: extra columns, int64, NaN
    assert scores.shape == (len(raw), 2)

    with TestClient(create_app(champion.settings, config.name, log_predictions=False)) as client:
        answer = client.post("/predict", headers=AUTH,
                             json={"records": request_records(signature_inputs(config), raw)})
    assert answer.status_code == 200, answer.text[:500]
    served = np.array([p["probabilities"]["1"] for p in answer.json()["predictions"]])
    np.testing.assert_allclose(scores[:, 1], served, rtol=0, atol=1e-12)


def test_a_nullable_int_column_needs_signature_frame_for_pyfunc(champion, tracking):
    """MLflow's enforcement refuses int64 for a double column (int -> double only up to 4-byte
    ints) and float64 for a long one: a pipeline's nullable int column is declared double, and a
    pyfunc caller whose day has no null passes the rows through ``signature_frame``."""
    from mlflow.models.utils import _enforce_mlflow_datatype
    from mlflow.types import DataType

    ints = pd.Series([1, 2, 3], dtype="int64")
    with pytest.raises(MlflowException, match="Can not safely convert int64 to float64"):
        _enforce_mlflow_datatype("c", ints, DataType.double)
    with pytest.raises(MlflowException, match="float64 to int64"):
        _enforce_mlflow_datatype("c", pd.Series([1.0, np.nan]), DataType.long)
    assert _enforce_mlflow_datatype("c", ints.astype("int32"), DataType.double).dtype == np.float64

    inputs = signature_inputs(champion.config)
    as_double = type(inputs)([type(c)("double" if c.name == "customer_age" else c.type, c.name, required=c.required)
                              for c in inputs.inputs])
    typed = signature_frame(as_double, champion.raw)
    assert typed["customer_age"].dtype == np.float64 and typed["witness_count"].dtype == np.int64
    assert list(typed.columns) == list(champion.config.features)  # the signature's columns only
    assert typed["police_report"].map(type).isin([str, type(None)]).all()
    # JSON for serving: integral values of a long column stay integers even next to a null
    with_null = champion.raw.head(3).astype({"witness_count": "float64"})
    with_null.loc[0, "witness_count"] = np.nan
    records = request_records(inputs, with_null)
    assert records[0]["witness_count"] is None and isinstance(records[1]["witness_count"], int)
