"""The ``event_ts`` window of ``POST /predict`` (:mod:`airloop.serving.window`): its edges, the
replay interval a replay declares with the admin token, and the 422 that names record and field
while nothing of the request is logged — against the real app and a real registered champion."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from airloop.core import store
from airloop.models.schema import RecordValidationError
from airloop.serving.app import create_app
from airloop.serving.window import EventWindow, check_event_ts, replay_interval
from tests.unit.serving.test_app import AUTH, TENANT_AUTH, _records, _settings, _table, registry  # noqa: F401

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
WINDOW = EventWindow(max_age_s=7 * 86400, max_ahead_s=300)
HEADER = "X-Airloop-Replay-Interval"


def _errors(event_ts, replay=None, window=WINDOW):
    with pytest.raises(RecordValidationError) as raised:
        check_event_ts(event_ts, NOW, window, replay)
    assert raised.value.status_code == 422
    return raised.value.errors


# ---------------------------------------------------------------------------- the window
def test_the_window_edges_are_inclusive():
    oldest, latest = NOW - timedelta(days=7), NOW + timedelta(minutes=5)
    check_event_ts([oldest, NOW, latest], NOW, WINDOW)  # on the edges: accepted
    check_event_ts(None, NOW, WINDOW)  # no event_ts: the server's time
    errors = _errors([NOW, oldest - timedelta(microseconds=1), latest + timedelta(microseconds=1)])
    assert [(e["record"], e["field"]) for e in errors] == [(1, "event_ts"), (2, "event_ts")]
    assert "AIRLOOP_EVENT_TS_MAX_AGE_S" in errors[0]["message"] and oldest.isoformat() in errors[0]["message"]


def test_year_9999_and_the_epoch_are_refused():
    errors = _errors([datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc), datetime(1970, 1, 1, tzinfo=timezone.utc)])
    assert [e["record"] for e in errors] == [0, 1]


def test_the_window_comes_from_the_environment():
    window = EventWindow.from_env({"AIRLOOP_EVENT_TS_MAX_AGE_S": "60", "AIRLOOP_EVENT_TS_MAX_AHEAD_S": "0"})
    assert window == EventWindow(60.0, 0.0)
    assert EventWindow.from_env({}) == EventWindow(7 * 86400.0, 300.0)
    check_event_ts([NOW - timedelta(seconds=60)], NOW, window)
    assert _errors([NOW + timedelta(seconds=1)], window=window)[0]["record"] == 0
    huge = EventWindow(1e15, 1e15)  # no bound rather than an overflow
    check_event_ts([datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, tzinfo=timezone.utc)], NOW, huge)


# ---------------------------------------------------------------------------- replays
def test_a_replay_interval_replaces_the_window():
    interval = replay_interval("2026-01-07T00:00:00Z/2026-01-08T00:00:00Z", admin=True)
    assert interval == (datetime(2026, 1, 7, tzinfo=timezone.utc), datetime(2026, 1, 8, tzinfo=timezone.utc))
    check_event_ts([interval[0], interval[1] - timedelta(microseconds=1)], NOW, WINDOW, interval)
    errors = _errors([interval[0], interval[1], NOW], interval)  # end exclusive; now is not in it either
    assert [e["record"] for e in errors] == [1, 2] and HEADER in errors[0]["message"]
    assert replay_interval(None, admin=False) is None and replay_interval("  ", admin=False) is None
    naive = replay_interval("2026-01-07T00:00:00/2026-01-07T01:00:00", admin=True)
    assert naive[0].tzinfo is timezone.utc  # naive = UTC


def test_a_replay_interval_needs_the_admin_token_and_a_valid_value():
    with pytest.raises(RecordValidationError) as raised:
        replay_interval("2026-01-07T00:00:00Z/2026-01-08T00:00:00Z", admin=False)
    assert raised.value.status_code == 403
    assert raised.value.errors[0]["field"] == HEADER and "admin token" in raised.value.errors[0]["message"]
    for bad in ("2026-01-07", "x/y", "2026-01-08T00:00:00Z/2026-01-07T00:00:00Z", "2026-01-07/2026-01-07",
                "9999-12-31T23:59:59-23:59/9999-12-31T23:59:59+00:00"):
        with pytest.raises(RecordValidationError) as raised:
            replay_interval(bad, admin=True)
        assert raised.value.status_code == 422 and raised.value.errors[0]["field"] == HEADER, bad


# ---------------------------------------------------------------------------- the route
def test_predict_refuses_event_ts_outside_the_window_and_logs_nothing(tmp_path: Path, registry) -> None:  # noqa: F811
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, registry.uri, AIRLOOP_MONITORING_DB_URI=uri)
    records = _records(registry.test_frame.head(3))
    now = datetime.now(timezone.utc)
    old = (now - timedelta(days=30)).isoformat()
    body = {"records": records, "request_ids": ["w0", "w1", "w2"],
            "event_ts": [now.isoformat(), "9999-12-31T00:00:00Z", old]}
    with TestClient(create_app(settings), headers=TENANT_AUTH) as client:
        refused = client.post("/predict", json=body)
        assert refused.status_code == 422, refused.text
        assert [(e["record"], e["field"]) for e in refused.json()["detail"]] == [(1, "event_ts"), (2, "event_ts")]
        # a replay interval from a tenant's token: 403 naming the header, whatever the records
        header = {HEADER: f"{(now - timedelta(days=31)).isoformat()}/{(now + timedelta(minutes=1)).isoformat()}"}
        denied = client.post("/predict", json={**body, "event_ts": [old] * 3}, headers=header)
        assert denied.status_code == 403 and denied.json()["detail"][0]["field"] == HEADER
        # within the window: answered and logged
        inside = {**body, "request_ids": ["in0", "in1", "in2"], "event_ts": [now.isoformat()] * 3}
        assert client.post("/predict", json=inside).status_code == 200
        # the admin's replay of an old day
        replayed = client.post("/predict", json={**body, "request_ids": ["r0", "r1", "r2"], "event_ts": [old] * 3},
                               headers={**AUTH, **header})
        assert replayed.status_code == 200, replayed.text
        outside = client.post("/predict", json={**body, "request_ids": ["x0", "x1", "x2"]}, headers={**AUTH, **header})
        assert outside.status_code == 422 and [e["record"] for e in outside.json()["detail"]] == [1]  # now is inside
        assert client.app.state.prediction_logger.flush(30)
    rows = _table(uri, store.predictions)
    assert sorted(rows) == ["in0", "in1", "in2", "r0", "r1", "r2"]  # nothing of the refused requests
