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
    raw["features"]["region"] = {"type": "category"}
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
