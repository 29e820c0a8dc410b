"""Business time: every timestamp is a plain tz-aware UTC datetime, whatever Airflow hands over."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pendulum
import pytest

from airloop.core.timeutil import day_bounds, day_start, interval_of, to_utc

UTC = timezone.utc


@pytest.mark.parametrize("value", [
    datetime(2026, 4, 14, tzinfo=UTC),
    datetime(2026, 4, 14),                                   # naive: taken as UTC
    datetime(2026, 4, 14, 2, tzinfo=timezone(timedelta(hours=2))),
    "2026-04-14T00:00:00Z",
    "2026-04-14T02:00:00+02:00",
    pendulum.datetime(2026, 4, 14, tz="UTC"),                # what Airflow's task context carries
    pendulum.datetime(2026, 4, 14, 2, tz="Europe/Paris"),
])
def test_to_utc_is_a_plain_utc_datetime(value):
    out = to_utc(value)
    assert out == datetime(2026, 4, 14, tzinfo=UTC)
    assert out.__class__ is datetime and out.tzinfo is UTC
    assert (out - timedelta(days=3)).tzinfo is UTC  # pendulum would drop it here


def test_to_utc_refuses_what_is_not_a_time():
    with pytest.raises(TypeError):
        to_utc(date(2026, 4, 14))


def test_day_bounds_and_interval():
    assert day_start(date(2026, 4, 14)) == datetime(2026, 4, 14, tzinfo=UTC)
    assert day_bounds(date(2026, 4, 14)) == (datetime(2026, 4, 14, tzinfo=UTC), datetime(2026, 4, 15, tzinfo=UTC))
    start, end = interval_of(pendulum.datetime(2026, 4, 14, tz="UTC"), pendulum.datetime(2026, 4, 15, tz="UTC"))
    assert min(start, end - timedelta(days=28)) == datetime(2026, 3, 18, tzinfo=UTC)
