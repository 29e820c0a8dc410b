"""airloop_provider.context: lineage of the current run read from a task context (fake contexts)."""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from types import SimpleNamespace

import pytest

from airloop_provider.context import as_of_day, run_actor, run_context, training_window


def _dag_run(**overrides):
    fields = {"dag_id": "claims_fraud__train", "run_id": "scheduled__2024-03-01", "run_type": "scheduled",
              "conf": {}, "triggering_user_name": None, "run_after": datetime(2024, 3, 2, 6, tzinfo=timezone.utc)}
    return SimpleNamespace(**(fields | overrides))


def _event(**extra):
    return SimpleNamespace(extra=extra)


def test_run_actor_is_the_triggering_user():
    assert run_actor({"dag_run": _dag_run(triggering_user_name="alice", run_type="manual")}) == "user:alice"


def test_run_actor_falls_back_to_the_run_type():
    assert run_actor({"dag_run": _dag_run()}) == "airflow:scheduled"
    assert run_actor({"dag_run": _dag_run(run_type="backfill")}) == "airflow:backfill"
    assert run_actor({"dag_run": SimpleNamespace(run_type="asset_triggered")}) == "airflow:asset_triggered"


@pytest.fixture
def pipeline(settings):
    from airloop.core.pipeline import load_pipeline_config

    return load_pipeline_config("claims_fraud", settings)


def test_as_of_day_prefers_the_form_value(pipeline, settings):
    context = {"params": {"as_of": "2024-02-10T12:00:00+00:00"}, "dag_run": _dag_run(),
               "triggering_asset_events": {"retrain": [_event(as_of="2024-02-20")]},
               "data_interval_end": datetime(2024, 3, 1, tzinfo=timezone.utc)}
    assert as_of_day(context, pipeline, settings) == "2024-02-10"
    assert as_of_day(context | {"params": {"as_of": date(2024, 2, 11)}}, pipeline, settings) == "2024-02-11"


def test_as_of_day_takes_the_newest_retrain_request(pipeline, settings):
    events = {"airloop://claims_fraud/retrain-requests": [_event(as_of="2024-02-18", reason="drift"),
                                                           _event(as_of="2024-02-20", reason="auc drop"),
                                                           _event()]}
    context = {"params": {"as_of": None}, "dag_run": _dag_run(), "triggering_asset_events": events,
               "data_interval_end": datetime(2024, 3, 1, tzinfo=timezone.utc)}
    assert as_of_day(context, pipeline, settings) == "2024-02-20"


def test_training_window_of_a_drop_retrain_is_the_requests_recent_window(pipeline):
    events = {"airloop://claims_fraud/retrain-requests": [_event(as_of="2024-02-18", window_days=None),
                                                           _event(as_of="2024-02-20", window_days=14)]}
    default = {"window_days": pipeline.training.window_days}
    asset_run = _dag_run(run_type="asset_triggered")
    assert training_window({"params": default, "dag_run": asset_run, "triggering_asset_events": events},
                           pipeline) == 14
    # a request without a window (a drift rule that opted in) trains on the form's window
    older = {"r": [_event(as_of="2024-02-18")]}
    assert training_window({"params": default, "dag_run": asset_run, "triggering_asset_events": older},
                           pipeline) == pipeline.training.window_days
    # a person's form wins over the request
    manual = {"params": {"window_days": 30}, "dag_run": _dag_run(run_type="manual"), "triggering_asset_events": events}
    assert training_window(manual, pipeline) == 30


def test_as_of_day_falls_back_to_the_interval_end_then_run_after(pipeline, settings):
    end = datetime(2024, 3, 1, 23, 59, tzinfo=timezone.utc)
    assert as_of_day({"params": {}, "dag_run": _dag_run(), "data_interval_end": end}, pipeline, settings) == "2024-03-01"
    # a run without a data interval: its run_after, never the wall clock
    assert as_of_day({"params": {}, "dag_run": _dag_run(), "data_interval_end": None}, pipeline, settings) == "2024-03-02"


def test_a_manual_run_past_the_data_trains_as_of_the_day_after_the_newest_data(tmp_path, caplog):
    """The UI form's defaults (logical date now, months after the data): the newest data decides."""
    import logging

    from airloop.core.pipeline import load_pipeline_config, resolve_source_path
    from airloop.core.settings import load_settings
    from airloop.data.simulator import write_history
    from airloop.tasks.runs import NoDataForRun

    settings = load_settings({**os.environ, "AIRLOOP_DATA_DIR": str(tmp_path / "data")})
    config = load_pipeline_config("claims_fraud", settings)
    manual = {"params": {"as_of": None}, "dag_run": _dag_run(run_type="manual"),
              "data_interval_end": datetime(2026, 12, 2, 9, 30, tzinfo=timezone.utc)}
    with pytest.raises(NoDataForRun, match="no data before 2026-12-02.*as_of"):
        as_of_day(manual, config, settings)
    write_history(resolve_source_path(config, settings), start=date(2026, 1, 1), days=20,
                  pattern=config.source.partition)
    with caplog.at_level(logging.INFO):
        assert as_of_day(manual, config, settings) == "2026-01-21"
    assert "newest data is of 2026-01-20" in caplog.text
    # a manual run inside the data keeps its interval; a scheduled run is never moved
    assert as_of_day(manual | {"data_interval_end": datetime(2026, 1, 10, tzinfo=timezone.utc)},
                     config, settings) == "2026-01-10"
    scheduled = manual | {"dag_run": _dag_run(run_type="scheduled")}
    assert as_of_day(scheduled, config, settings) == "2026-12-02"


def test_run_context_records_the_lineage_fields():
    context = {"dag_run": _dag_run(conf={"reason": "manual retrain"})}
    assert run_context(context, "2024-03-01") == {
        "dag_id": "claims_fraud__train", "dag_run_id": "scheduled__2024-03-01", "run_type": "scheduled",
        "as_of": "2024-03-01", "trigger_reason": "manual retrain",
    }


def test_run_context_reason_from_the_retrain_request_and_empty_defaults():
    events = {"retrain": [_event(as_of="2024-02-20", reason="psi 0.4 > 0.2")]}
    lineage = run_context({"dag_run": _dag_run(conf=None), "triggering_asset_events": events}, None)
    assert lineage["trigger_reason"] == "psi 0.4 > 0.2"
    assert lineage["as_of"] == ""
    assert run_context({"dag_run": _dag_run()}, None)["trigger_reason"] == ""


def test_run_context_stringifies_the_run_type():
    class RunType:  # an enum member in Airflow
        def __str__(self):
            return "manual"

    assert run_context({"dag_run": _dag_run(run_type=RunType())}, "2024-01-01")["run_type"] == "manual"


def test_operators_module_uses_the_same_helpers():
    from airloop_provider import context, operators

    assert operators.run_actor is context.run_actor
    assert operators.run_context is context.run_context
