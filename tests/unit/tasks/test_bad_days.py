"""Bad days stop a training run before training, at the task level: the extract and validate
stages (include/airloop/tasks/training.py) on simulator files with one broken day each, next
to a real champion (real MLflow SQLite registry, aliases champion/dev/staging/prod, the real
serving app answering with it). Every case raises :class:`ValidationFailed` (the DAG maps it to
``AirflowFailException``: no retry), quarantines the day with its reason (copies kept, the
source untouched) and leaves the registry, the ledger and serving as they were.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from airloop.core import store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import Settings, load_settings
from airloop.data.features import features_and_target
from airloop.data.quarantine import quarantine_reason, quarantined_days
from airloop.data.simulator import generate_day, partition_path, write_history
from airloop.data.sources import read_partition
from airloop.models.artifact import log_sklearn_model
from airloop.registry import ledger
from airloop.registry.client import alias_version, get_client, register_version
from airloop.serving.app import create_app
from airloop.tasks import training as stages
from airloop.training.search import build_model

REPO_ROOT = Path(__file__).resolve().parents[3]
START = date(2026, 2, 1)
WINDOW = 7
AS_OF = START + timedelta(days=WINDOW)  # window 02-01 .. 02-07
BAD = date(2026, 2, 4)
ALIASES = ("champion", "dev", "staging", "prod")
CSV_DATES = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class World:
    tmp: Path
    shared: dict[str, str]
    serving: TestClient


def register_champion(settings: Settings, config: PipelineConfig, tmp: Path) -> str:
    """A real model (logistic regression on one simulator day) registered and aliased as the
    champion and every environment of the promotion path; returns its version."""
    write_history(settings.data_dir / config.source.path, start=START - timedelta(days=1), days=1,
                  pattern=config.source.partition)
    X, y = features_and_target(config, read_partition(config, START - timedelta(days=1), settings))
    model = build_model(config, "logistic_regression", {"C": 1.0}).fit(X, y)
    client = get_client(settings)
    experiment = client.create_experiment(config.experiment_name, artifact_location=str(tmp / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_sklearn_model(config, model, X, pip_requirements=["scikit-learn"])
    version = register_version(client, config.model_name, info.model_uri, run.info.run_id, f"{config.name}@seed", {})
    for alias in ALIASES:
        client.set_registered_model_alias(config.model_name, alias, version.version)
    return str(version.version)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("bad-days")
    shared = {"AIRLOOP_HOME": str(REPO_ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
              "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp / 'monitoring.db'}",
              "AIRLOOP_ADMIN_TOKEN": "bad-days-admin-token"}
    settings = load_settings({**shared, "AIRLOOP_STATE_DIR": str(tmp / "seed-state")})
    register_champion(settings, load_pipeline_config("claims_fraud", settings), tmp)
    with TestClient(create_app(settings, "claims_fraud", log_predictions=False),
                    headers={"Authorization": f"Bearer {shared['AIRLOOP_ADMIN_TOKEN']}"}) as serving:
        yield World(tmp, shared, serving)


@pytest.fixture()
def case(world: World, tmp_path: Path):
    """Fresh data and state for one case (the registry, ledger and serving are the module's)."""
    settings = load_settings({**world.shared, "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    config = load_pipeline_config("claims_fraud", settings)
    write_history(settings.data_dir / config.source.path, start=START, days=WINDOW, pattern=config.source.partition)
    return settings, config


def bad_file(settings: Settings, config: PipelineConfig, day: date = BAD) -> Path:
    return partition_path(settings.data_dir / config.source.path, config.source.partition, day)


def rewrite(settings: Settings, config: PipelineConfig, frame: pd.DataFrame, day: date = BAD) -> None:
    frame.to_csv(bad_file(settings, config, day), index=False, date_format=CSV_DATES)


def untouched(world: World, settings: Settings, config: PipelineConfig) -> dict:
    """What a bad day must not change: registry aliases and versions, runs, ledger, serving."""
    client = get_client(settings)
    experiment = client.get_experiment_by_name(config.experiment_name)
    return {
        "aliases": {a: str(alias_version(client, config.model_name, a).version) for a in ALIASES},
        "versions": sorted(str(v.version) for v in client.search_model_versions(f"name = '{config.model_name}'")),
        "runs": len(client.search_runs([experiment.experiment_id])),
        "ledger": ledger.ledger_rows(store.get_engine(settings.monitoring_db_uri), config.name),
        "served": world.serving.get("/model").json()["version"],
    }


def run_until_failure(settings: Settings, config: PipelineConfig) -> str:
    """extract then validate (as the DAG chains them); the ValidationFailed message."""
    with pytest.raises(stages.ValidationFailed) as failed:
        snapshot = stages.extract(config, AS_OF.isoformat(), settings, window=WINDOW)
        stages.validate(config, snapshot, settings)
    return str(failed.value)


def _single_class(settings, config):
    frame = generate_day(BAD)
    rewrite(settings, config, frame.assign(is_fraud=0))
    return ["expect_column_distinct_values_to_contain_set", "column 'is_fraud'", "missing class(es) 1"]


def _outside_the_day(settings, config):
    frame = generate_day(BAD)
    frame.loc[:9, "claim_ts"] = pd.to_datetime(frame.loc[:9, "claim_ts"], utc=True) + pd.Timedelta(days=30)
    rewrite(settings, config, frame)
    return ["expect_column_values_to_be_between", "column 'claim_ts'", "10 timestamps", "outside the partition's day"]


def _duplicated_rows(settings, config):
    frame = generate_day(BAD)
    rewrite(settings, config, pd.concat([frame, frame.iloc[:4]], ignore_index=True))
    return ["expect_compound_columns_to_be_unique", "8 rows", "whole-row duplicates", "claim_id C20260204-00000"]


def _not_utf8(settings, config):
    path = bad_file(settings, config)
    data = path.read_bytes()
    offset = data.index(b"north")
    path.write_bytes(data[:offset] + "n\u00f6rth".encode("latin-1") + data[offset + 5:])
    return ["airloop:file_is_readable", f"not valid UTF-8 at byte offset {offset + 1}", "byte 0xf6"]


def _empty(settings, config):
    bad_file(settings, config).write_bytes(b"")
    return ["airloop:file_is_readable", "empty file (0 bytes)"]


def _header_only(settings, config):
    path = bad_file(settings, config)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    return ["airloop:file_is_readable", "header only, 0 data rows"]


def _not_csv(settings, config):
    path = bad_file(settings, config)
    path.write_bytes(gzip.compress(path.read_bytes()))  # a gzipped export under a .csv name
    return ["airloop:file_is_readable", "not valid UTF-8 at byte offset 1"]


CASES = {"single_class": _single_class, "outside_the_day": _outside_the_day, "duplicated_rows": _duplicated_rows,
         "not_utf8": _not_utf8, "empty": _empty, "header_only": _header_only, "not_csv": _not_csv}
#: Cases the extract stops (the file cannot be read); the others reach validate.
UNREADABLE = {"not_utf8", "empty", "header_only", "not_csv"}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_day_stops_the_run_before_training_and_changes_nothing(world, case, name):
    settings, config = case
    expected = CASES[name](settings, config)
    source_bytes = bad_file(settings, config).read_bytes()
    before = untouched(world, settings, config)

    message = run_until_failure(settings, config)

    for fragment in [BAD.isoformat(), str(bad_file(settings, config)), *expected,
                     f"`airloop release claims_fraud {BAD.isoformat()}`"]:
        assert fragment in message, (fragment, message)
    assert message.rstrip().endswith("re-validate them all now)."), message  # ends with how to release
    assert quarantined_days(config, settings) == {BAD}
    reason = quarantine_reason(config, settings, BAD)
    assert reason["release"] == f"airloop release claims_fraud {BAD.isoformat()}"
    assert any(f["expectation"] == expected[0] for f in reason["failures"]), reason
    folder = settings.quarantine_dir / "claims_fraud" / BAD.isoformat()
    if name in UNREADABLE:
        assert (folder / "files" / "claims.csv").read_bytes() == source_bytes  # a byte-for-byte copy
        assert reason["kind"] == "unreadable"
    else:
        assert len(pd.read_parquet(folder / "data.parquet")) == reason["rows"] > 0
    assert bad_file(settings, config).read_bytes() == source_bytes  # the source is never touched
    if name in UNREADABLE:  # stopped by the extract: no snapshot was written
        assert not list(settings.snapshots_dir.rglob("fingerprint.json"))
    assert untouched(world, settings, config) == before

    # the next run of the interval skips the quarantined day and passes the gate
    snapshot = stages.extract(config, AS_OF.isoformat(), settings, window=WINDOW)
    assert snapshot["excluded_days"] == [BAD.isoformat()]
    assert stages.validate(config, snapshot, settings)["success"]


def test_a_rare_class_missing_from_a_small_day_is_normal(world, case):
    """~5 % fraud in 150 rows: a day without fraud comes about once in 2,200 days (0.95^150);
    below class_absence_p (1e-6) only from ~270 rows on: not a fault."""
    settings, config = case
    frame = generate_day(BAD)
    rewrite(settings, config, frame[frame.is_fraud == 0].head(150))
    snapshot = stages.extract(config, AS_OF.isoformat(), settings, window=WINDOW)
    summary = stages.validate(config, snapshot, settings)
    assert summary["success"], summary
    assert not quarantined_days(config, settings)


def test_a_window_of_one_class_stops_without_quarantining_a_day(world, case):
    settings, config = case
    before = untouched(world, settings, config)
    for offset in range(WINDOW):
        day = START + timedelta(days=offset)
        rewrite(settings, config, generate_day(day).assign(is_fraud=0), day)

    message = run_until_failure(settings, config)

    assert "fewer than 2 classes" in message and "'is_fraud'" in message, message
    assert "nothing quarantined" in message
    assert not quarantined_days(config, settings)
    assert untouched(world, settings, config) == before


def test_an_unreadable_day_found_again_on_revalidation_stays_quarantined(world, case):
    """A suite change re-validates quarantined days: a file still unreadable stays, with its copy."""
    settings, config = case
    _empty(settings, config)
    run_until_failure(settings, config)
    reason = settings.quarantine_dir / "claims_fraud" / BAD.isoformat() / "reason.json"
    record = json.loads(reason.read_text())
    reason.write_text(json.dumps({**record, "suite_fingerprint": "an-older-suite"}))

    snapshot = stages.extract(config, AS_OF.isoformat(), settings, window=WINDOW)

    assert snapshot["excluded_days"] == [BAD.isoformat()]
    assert quarantine_reason(config, settings, BAD)["suite_fingerprint"] == record["suite_fingerprint"]
