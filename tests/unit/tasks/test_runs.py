"""Which data a run works on (include/airloop/tasks/runs.py): a manual run from the UI form with
its defaults (logical date now, after the data) does real work on the newest data or says why
not; scheduled runs and backfills keep their own interval. Real files and a real SQLite store."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from airloop.core import store
from airloop.core.pipeline import load_pipeline_config, resolve_source_path
from airloop.core.settings import load_settings
from airloop.core.timeutil import day_bounds
from airloop.data.simulator import write_history
from airloop.data.sources import newest_day
from airloop.tasks.runs import NoDataForRun, monitoring_interval, training_as_of

UTC = timezone.utc
NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)  # what the form's logical date would be


@pytest.fixture
def local(tmp_path, settings):
    local = load_settings({"AIRLOOP_HOME": str(settings.root), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                           "AIRLOOP_DATA_DIR": str(tmp_path / "data"),
                           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return local, load_pipeline_config("claims_fraud", local)


def test_newest_day_reads_the_partition_names(local):
    settings, config = local
    assert newest_day(config, settings, before=date(2026, 12, 2)) is None
    write_history(resolve_source_path(config, settings), start=date(2026, 1, 1), days=10,
                  pattern=config.source.partition)
    assert newest_day(config, settings, before=date(2026, 12, 2)) == date(2026, 1, 10)
    assert newest_day(config, settings, before=date(2026, 1, 5)) == date(2026, 1, 4)
    assert newest_day(config, settings, before=date(2026, 1, 1)) is None


def test_training_as_of(local):
    settings, config = local
    write_history(resolve_source_path(config, settings), start=date(2026, 1, 1), days=10,
                  pattern=config.source.partition)
    common = {"chosen": None, "requested": None, "interval_end": NOW}
    assert training_as_of(config, settings, **common, manual=True)[0] == "2026-01-11"
    assert training_as_of(config, settings, **common, manual=False)[0] == "2026-12-02"  # scheduled: never moved
    assert training_as_of(config, settings, **common | {"chosen": "2026-01-05"}, manual=True)[0] == "2026-01-05"
    assert training_as_of(config, settings, **common | {"requested": "2026-01-07"}, manual=True)[0] == "2026-01-07"
    inside = training_as_of(config, settings, chosen=None, requested=None,
                            interval_end=datetime(2026, 1, 8, tzinfo=UTC), manual=True)
    assert inside == ("2026-01-08", "the end of the run's data interval")


def _log_prediction(engine, config, ts: datetime, request_id: str) -> None:
    store.upsert(engine, store.predictions, [{
        "request_id": request_id, "ts": ts, "tenant": config.tenant, "pipeline": config.name,
        "model_name": config.model_name, "model_version": "1", "variant": "champion", "features": "{}",
        "prediction": "0", "score": 0.1, "latency_ms": 1.0, "status": "ok", "error": None}])


def test_monitoring_interval(local):
    settings, config = local
    engine = store.get_engine(settings.monitoring_db_uri)
    interval = {"interval_start": datetime(2026, 12, 1, tzinfo=UTC), "interval_end": datetime(2026, 12, 2, tzinfo=UTC)}
    with pytest.raises(NoDataForRun, match="no predictions logged.*day field"):  # nothing served yet
        monitoring_interval(config, settings, chosen_day=None, **interval, manual=True)
    _log_prediction(engine, config, datetime(2026, 4, 20, 13, tzinfo=UTC), "c-1")
    moved = monitoring_interval(config, settings, chosen_day=None, **interval, manual=True)
    assert (moved.start, moved.end) == day_bounds(date(2026, 4, 20))
    assert "the newest is of 2026-04-20" in moved.note
    kept = monitoring_interval(config, settings, chosen_day=None, **interval, manual=False)
    assert (kept.start, kept.end) == (interval["interval_start"], interval["interval_end"])
    chosen = monitoring_interval(config, settings, chosen_day="2026-04-18", **interval, manual=True)
    assert (chosen.start, chosen.end) == day_bounds(date(2026, 4, 18))
    # an empty day inside the traffic's history is an outage to report, not moved
    outage = {"interval_start": datetime(2026, 4, 19, tzinfo=UTC), "interval_end": datetime(2026, 4, 20, tzinfo=UTC)}
    kept = monitoring_interval(config, settings, chosen_day=None, **outage, manual=True)
    assert (kept.start, kept.end) == (outage["interval_start"], outage["interval_end"])
    # a manual run whose own interval has traffic keeps it
    _log_prediction(engine, config, datetime(2026, 12, 1, 8, tzinfo=UTC), "c-2")
    own = monitoring_interval(config, settings, chosen_day=None, **interval, manual=True)
    assert (own.start, own.end) == (interval["interval_start"], interval["interval_end"])
