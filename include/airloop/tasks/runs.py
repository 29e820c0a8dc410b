"""Which data a DAG run works on: its data interval, the form's fields, or — for a manual run
whose interval holds no data yet — the newest complete day the data has.

A run triggered from the Airflow UI with the form's defaults gets the trigger time as its
logical date, usually past the end of the data (the demo history ends in May 2026; a user's own
source ends at the last complete day). Such a run must still do real work or say why not, so
for **manual** runs without an explicit day the interval is moved back to the newest day that
has data, and the task log says so. Scheduled runs and backfills always keep their own interval:
a scheduled run past the data fails visibly (freshness) instead of quietly training on old data.
The newest day is read from the data (file names, ``max(timestamp)``, the prediction log),
never from the wall clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import day_bounds, to_utc
from airloop.data.sources import describe_source, newest_day

log = logging.getLogger(__name__)


class NoDataForRun(RuntimeError):
    """A manual run found no data to work on: the message says what to change (not retried)."""


@dataclass(frozen=True)
class RunInterval:
    """The interval a run works on, and why (shown in the task log)."""

    start: datetime
    end: datetime
    note: str

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "note": self.note}


def training_as_of(config: PipelineConfig, settings: Settings, *, chosen: str | None, requested: str | None,
                   interval_end: datetime, manual: bool) -> tuple[str, str]:
    """(as-of day, why) of a training run: the form's ``as_of``, else the retrain request's, else
    the data interval end — moved back to the day after the newest data for a manual run."""
    if chosen:
        return str(chosen)[:10], "the as_of field of the run"
    if requested:
        return requested, "the retrain request that triggered the run"
    end = to_utc(interval_end).date()
    if not manual:
        return end.isoformat(), "the end of the run's data interval"
    newest = newest_day(config, settings, before=end)
    if newest is None:
        raise NoDataForRun(
            f"{config.name}: no data before {end} in {describe_source(config, settings)}: nothing to train on. "
            "Write the data first (the demo: `make demo`), or trigger with the as_of field set to a day "
            "after the data you have.")
    as_of = min(end, newest + timedelta(days=1))
    if as_of == end:
        return as_of.isoformat(), "the end of the run's data interval"
    return as_of.isoformat(), (f"manual run without as_of: its interval ends {end}, the newest data is of {newest}, "
                               f"so it trains as of {as_of} (set as_of to choose another day)")


def newest_traffic_day(config: PipelineConfig, settings: Settings) -> date | None:
    """The newest day with predictions logged for ``config`` (its tenant)."""
    table = store.predictions
    engine = store.get_engine(settings.monitoring_db_uri)
    query = sa.select(sa.func.max(table.c.ts)).where(table.c.pipeline == config.name, table.c.tenant == config.tenant)
    with engine.connect() as conn:
        newest = conn.execute(query).scalar()
    return to_utc(newest).date() if newest is not None else None


def monitoring_interval(config: PipelineConfig, settings: Settings, *, chosen_day: str | None,
                        interval_start: datetime, interval_end: datetime, manual: bool) -> RunInterval:
    """The interval a monitoring run covers: the form's ``day``, else the data interval — for a
    manual run whose interval has no served traffic, the newest day that has some."""
    if chosen_day:
        start, end = day_bounds(date.fromisoformat(str(chosen_day)[:10]))
        return RunInterval(start, end, "the day field of the run")
    start, end = to_utc(interval_start), to_utc(interval_end)
    if not manual:
        return RunInterval(start, end, "the run's data interval")
    # only an interval past all served traffic moves: an empty day inside the traffic's history is
    # an outage that monitoring must report (volume), not a reason to look at another day
    newest = newest_traffic_day(config, settings)
    if newest is not None and newest >= start.date():
        return RunInterval(start, end, "the run's data interval")
    if newest is None:
        raise NoDataForRun(
            f"{config.name}: no predictions logged for tenant {config.tenant!r} yet: nothing "
            "to monitor. Serve traffic first (`make demo`, or `airloop replay`), or trigger with the day field set "
            "to a day that has traffic.")
    start, end = day_bounds(newest)
    return RunInterval(start, end, (f"manual run without day: its interval [{interval_start:%Y-%m-%d}, "
                                    f"{interval_end:%Y-%m-%d}) is past the served traffic, the newest is of {newest}, "
                                    "so it monitors that day (set day to choose another)"))
