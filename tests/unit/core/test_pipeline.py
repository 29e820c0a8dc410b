"""Pipeline configuration and settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airloop.core.pipeline import load_pipeline_config, parse_pipeline_config
from airloop.core.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[3]


def raw_demo() -> dict:
    return yaml.safe_load((ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())


def test_demo_pipeline_loads(claims_config):
    assert claims_config.task == "binary_classification"
    assert len(claims_config.features) == 13
    assert set(claims_config.categorical_features) == {"incident_type", "region", "channel", "police_report"}
    assert len(claims_config.training.search_space) >= 3


def test_errors_name_the_file_and_field(tmp_path):
    raw = raw_demo()
    raw["training"]["n_trials"] = 0
    raw["features"]["region"] = {"type": "category", "values": []}
    raw["tpyo"] = 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "training.n_trials" in text
    assert "features.region" in text and "values" in text
    assert "tpyo" in text


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r.update(task="ranking"), "task"),
        (lambda r: r["training"].update(holdout_days=99), "holdout_days"),
        (lambda r: r.update(classes=[0, 1, 2]), "exactly two classes"),
        (lambda r: r["features"].update(is_fraud={"type": "int"}), "must not include"),
        (lambda r: r["features"]["claim_amount"].update(min=5, max=1), "greater than max"),
    ],
)
def test_semantic_mistakes_are_refused(mutate, needle):
    raw = raw_demo()
    mutate(raw)
    with pytest.raises(ConfigError, match=needle):
        parse_pipeline_config(raw, "x.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(bad)


def test_settings_resolve_relative_paths_and_defaults(tmp_path):
    s = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": "state"})
    assert s.state_dir == tmp_path / "state"
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow' / 'mlflow.db'}"
    assert s.monitoring_db_uri.startswith("sqlite:///") and s.optuna_storage.startswith("journal://")
    assert s.admin_token is None
    s2 = load_settings({"AIRLOOP_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                        "AIRLOOP_SERVING_URL": "http://serve:9000/"})
    assert s2.mlflow_tracking_uri == "http://mlflow:5000"
    assert s2.serving_url == "http://serve:9000"


def test_env_file_reader_agrees_with_python_dotenv(tmp_path):
    """Our small .env reader gives what python-dotenv gives on the committed .env.example and on
    the syntax variants it supports."""
    from pathlib import Path

    from dotenv import dotenv_values

    from airloop.core.settings import read_env_file

    example = Path(__file__).resolve().parents[3] / ".env.example"
    assert read_env_file(example) == {k: v or "" for k, v in dotenv_values(example).items()}
    sample = tmp_path / ".env"
    sample.write_text("# comment\n\nA=1\nexport B = two\nC='quoted # not a comment'\nD=\"x y\"\nE=v # trailing\nF=\n")
    assert read_env_file(sample) == {k: v or "" for k, v in dotenv_values(sample).items()}


# ----------------------------------------------------------------- task, metric, estimators, classes
def _regression(raw: dict) -> dict:
    raw.update(task="regression")
    raw.pop("classes")
    raw["training"]["metric"] = "neg_root_mean_squared_error"
    for binary_only in ("decision", "calibration"):  # the demo's decision threshold and calibration
        raw["training"].pop(binary_only, None)
    raw["promotion"]["thresholds"] = {"rmse": 100.0}  # gates name metrics of the task
    for env in raw["promotion"].get("environments", []):
        env.pop("thresholds", None)
    raw["training"]["search_space"] = {"ridge": {"alpha": {"type": "float", "low": 0.1, "high": 10.0}},
                                       "random_forest": {"n_estimators": {"type": "int", "low": 10, "high": 50}}}
    return raw


def test_a_consistent_regression_pipeline_loads():
    config = parse_pipeline_config(_regression(raw_demo()), "x.yaml")
    assert config.task_kind == "regression" and config.training.metric == "neg_root_mean_squared_error"


@pytest.mark.parametrize(
    "mutate, needles",
    [
        # the reported case: task regression with a classification metric and classifier-only estimators
        (lambda r: (r.update(task="regression"), r.pop("classes")),
         ["training: metric 'roc_auc' is a binary classification metric", "a regression pipeline needs one of",
          "neg_root_mean_squared_error", "'logistic_regression' cannot do regression"]),
        (lambda r: _regression(r)["training"].update(metric="rmse"),
         ["training.metric", "'rmse' is not a scikit-learn scorer name: use 'neg_root_mean_squared_error'"]),
        (lambda r: _regression(r)["training"].update(metric="accuracy"),
         ["metric 'accuracy' is a classification metric"]),
        (lambda r: _regression(r).update(classes=[0, 1]), ["'classes' is only for classification"]),
        (lambda r: r["training"].update(metric="neg_root_mean_squared_error"),
         ["is a regression metric; a binary_classification pipeline needs one of"]),
        (lambda r: r["training"].update(metric="roc_aux"), ["unknown metric 'roc_aux' — did you mean 'roc_auc'?"]),
        (lambda r: r.update(task="multiclass_classification", classes=["a", "b", "c"]),
         ["'roc_auc' is a binary classification metric (multi-class: 'roc_auc_ovr')"]),
        (lambda r: (r.update(classes=["no", "yes"]), r["training"].update(metric="f1")),
         ["scores the label 1 (scikit-learn's pos_label), but the classes are ['no', 'yes']"]),
        (lambda r: r.update(classes=[1, 1]), ["classes must be distinct"]),
        (lambda r: r["training"]["search_space"].update(random_forrest={}),
         ["training.search_space", "unknown estimator family 'random_forrest' — did you mean 'random_forest'?"]),
    ],
    ids=["regression-with-classifier-config", "rmse-alias", "regression-classification-metric",
         "regression-with-classes", "classification-regression-metric", "metric-typo", "multiclass-roc-auc",
         "pos-label-metric-string-classes", "duplicate-classes", "family-typo"],
)
def test_task_metric_estimators_and_classes_must_agree(mutate, needles):
    raw = raw_demo()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_pipeline_config(raw, "x.yaml")
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_the_default_metric_is_named_as_the_default():
    raw = _regression(raw_demo())
    del raw["training"]["metric"]
    with pytest.raises(ConfigError, match=r"metric 'roc_auc' \(the default\) is a binary classification metric"):
        parse_pipeline_config(raw, "x.yaml")


def test_metric_and_estimator_names_are_real_and_defined_once():
    """Every supported metric is a scikit-learn scorer of its task, every estimator import path
    resolves, and training uses core's table (one definition)."""
    from sklearn.metrics import get_scorer_names

    from airloop.core import metrics, pipeline
    from airloop.training import search

    assert metrics.STUDY_METRICS <= set(get_scorer_names())
    assert set(metrics.METRIC_ALIASES.values()) <= metrics.STUDY_METRICS
    assert not set(metrics.METRIC_ALIASES) & metrics.STUDY_METRICS
    assert search.ESTIMATORS is pipeline.ESTIMATORS
    for family, kinds in pipeline.ESTIMATORS.items():
        assert set(kinds) <= {"classification", "regression"}, family
        for path in kinds.values():
            module, _, name = path.partition(":")
            assert hasattr(__import__(module, fromlist=[name]), name), path
    assert metrics.metrics_for_task("binary_classification", [0, 1]) >= {"roc_auc", "f1", "neg_log_loss"}
    assert "f1" not in metrics.metrics_for_task("binary_classification", ["no", "yes"])
    assert "roc_auc" not in metrics.metrics_for_task("multiclass_classification", ["a", "b", "c"])


def test_each_metric_works_for_its_task():
    """The task rules match what scikit-learn does: each allowed scorer scores a fitted model."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import get_scorer

    from airloop.core.metrics import metrics_for_task

    rng = np.random.default_rng(0)
    X = rng.random((60, 3))
    cases = {("binary_classification", (0, 1)): np.array([0, 1] * 30),
             ("binary_classification", ("no", "yes")): np.array(["no", "yes"] * 30),
             ("multiclass_classification", ("a", "b", "c")): np.array(["a", "b", "c"] * 20),
             ("regression", None): rng.random(60) + 0.1}
    for (task, classes), y in cases.items():
        model = (Ridge() if task == "regression" else LogisticRegression()).fit(X, y)
        for metric in sorted(metrics_for_task(task, list(classes) if classes else None)):
            assert np.isfinite(get_scorer(metric)(model, X, y)), (task, classes, metric)
