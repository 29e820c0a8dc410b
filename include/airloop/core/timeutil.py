"""UTC conversion and day bounds: the one definition of business time.

Every timestamp airloop stores or compares is tz-aware UTC; a day is ``[00:00 UTC, next 00:00 UTC)``.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any


def to_utc(value: Any) -> datetime:
    """A datetime (or ISO string, ``Z`` accepted) as a plain tz-aware UTC :class:`datetime`; naive
    values are taken as UTC. Subclasses (Airflow's pendulum ``DateTime``) come back as a plain
    ``datetime``: pendulum's arithmetic drops a ``timezone.utc`` tzinfo (``d - timedelta(...)``
    turns naive), so nothing downstream may keep one."""
    if value.__class__ is datetime and value.tzinfo is timezone.utc:  # the usual case, as serving stamps rows
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a datetime: {value!r}")
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if value.__class__ is not datetime:
        value = datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                         value.microsecond, tzinfo=timezone.utc, fold=value.fold)
    return value


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """``[day, day + 1)`` in UTC."""
    start = day_start(day)
    return start, start + timedelta(days=1)


def interval_of(data_interval_start: datetime, data_interval_end: datetime) -> tuple[datetime, datetime]:
    """The monitored interval of a run (UTC)."""
    return to_utc(data_interval_start), to_utc(data_interval_end)
