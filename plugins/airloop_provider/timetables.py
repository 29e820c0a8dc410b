"""Timetables whose *schedule* ends on a day without ending the DAG.

A pipeline file's ``schedule.end_date`` (the demo history ends on 2026-05-31) must stop the
scheduler from creating runs past it — but as a DAG ``end_date`` it also makes Airflow create no
task instances for any run whose logical date is later, so a run triggered from the UI with the
form's defaults (logical date: now) is a silent, green no-op. These timetables stop the schedule
(scheduled runs and backfills) at ``end`` and leave manual runs alone: those get their data from
the run's fields or the newest data (``airloop.tasks.runs``).

Registered by the airloop plugin (``plugins/airloop_plugin.py``), as Airflow requires of custom
timetables: the scheduler and the DAG processor deserialize them by import path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.timetables.trigger import CronTriggerTimetable


class _EndsOn:
    """Mixin: no scheduled run is due after ``end`` (``run_after`` > ``end``)."""

    _end: datetime | None

    def next_dagrun_info(self, *, last_automated_data_interval, restriction):
        info = super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                        restriction=restriction)
        if info is not None and self._end is not None and info.run_after > self._end:
            return None
        return info

    def _end_fields(self) -> dict[str, Any]:
        return {"end": self._end.isoformat() if self._end is not None else None}

    @staticmethod
    def _decode_end(data: dict[str, Any]) -> datetime | None:
        from airloop.core.timeutil import to_utc

        return to_utc(data["end"]) if data.get("end") else None

    @property
    def summary(self) -> str:
        base = super().summary
        return f"{base} until {self._end:%Y-%m-%d}" if self._end is not None else base


class ScheduleUntilCronTrigger(_EndsOn, CronTriggerTimetable):
    """``CronTriggerTimetable`` (runs at each cron tick, zero-width interval) ending on ``end``."""

    def __init__(self, cron: str, *, timezone: Any = "UTC", end: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(cron, timezone=timezone, **kwargs)
        self._end = end
        self.description = f"{self.description} until {end:%Y-%m-%d}" if end is not None else self.description

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ScheduleUntilCronTrigger:
        base = CronTriggerTimetable.deserialize(data)
        return cls(data["expression"], timezone=base._timezone, interval=base._interval,
                   run_immediately=base._run_immediately, end=cls._decode_end(data))

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), **self._end_fields()}


class ScheduleUntilCronDataInterval(_EndsOn, CronDataIntervalTimetable):
    """``CronDataIntervalTimetable`` (each run covers one cron period) ending on ``end``."""

    def __init__(self, cron: str, timezone: Any = "UTC", *, end: datetime | None = None) -> None:
        super().__init__(cron, timezone)
        self._end = end
        self.description = f"{self.description} until {end:%Y-%m-%d}" if end is not None else self.description

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ScheduleUntilCronDataInterval:
        base = CronDataIntervalTimetable.deserialize(data)
        return cls(data["expression"], base._timezone, end=cls._decode_end(data))

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), **self._end_fields()}


TIMETABLES = [ScheduleUntilCronTrigger, ScheduleUntilCronDataInterval]
