"""The ``event_ts`` window of ``POST /predict``: business times the prediction log accepts.

A record's ``event_ts`` decides the monitoring interval its row counts in, so a client could
otherwise file traffic under any day (year 9999 was stored once). Every ``event_ts`` must lie in
``[now - AIRLOOP_EVENT_TS_MAX_AGE_S, now + AIRLOOP_EVENT_TS_MAX_AHEAD_S]`` (default 7 days back,
5 minutes ahead: late clients and clock skew, nothing more); a request with one outside is refused
as a whole (422 naming each record index and the field ``event_ts``) and nothing of it is logged.

A replay of historical traffic (``airloop replay``, the demo's loop) declares its interval with
``X-Airloop-Replay-Interval: <start>/<end>`` (ISO 8601, naive = UTC) and the admin token; its
records' ``event_ts`` must then lie in ``[start, end)`` instead. The header without the admin token
is refused (403) whatever the records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from airloop.core.settings import AIRLOOP_EVENT_TS_MAX_AGE_S, AIRLOOP_EVENT_TS_MAX_AHEAD_S
from airloop.core.timeutil import to_utc
from airloop.models.schema import MAX_REPORTED_ERRORS, RecordValidationError
from airloop.serving.protocol import REPLAY_INTERVAL_HEADER


@dataclass(frozen=True, slots=True)
class EventWindow:
    """How far before and after now an ``event_ts`` may lie (seconds)."""

    max_age_s: float = AIRLOOP_EVENT_TS_MAX_AGE_S.default
    max_ahead_s: float = AIRLOOP_EVENT_TS_MAX_AHEAD_S.default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "EventWindow":
        """The window of ``AIRLOOP_EVENT_TS_MAX_AGE_S`` / ``AIRLOOP_EVENT_TS_MAX_AHEAD_S``."""
        return cls(AIRLOOP_EVENT_TS_MAX_AGE_S.get(env), AIRLOOP_EVENT_TS_MAX_AHEAD_S.get(env))

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """``(earliest, latest)`` accepted at ``now`` (both inclusive; a huge setting means no bound)."""
        try:
            low = now - timedelta(seconds=self.max_age_s)
        except OverflowError:
            low = datetime.min.replace(tzinfo=timezone.utc)
        try:
            high = now + timedelta(seconds=self.max_ahead_s)
        except OverflowError:
            high = datetime.max.replace(tzinfo=timezone.utc)
        return low, high


def _header_error(message: str, status_code: int = 422) -> RecordValidationError:
    return RecordValidationError([{"record": None, "field": REPLAY_INTERVAL_HEADER, "message": message}], status_code)


def replay_interval(value: str | None, admin: bool) -> tuple[datetime, datetime] | None:
    """The ``[start, end)`` of an ``X-Airloop-Replay-Interval`` header value (None without one).
    Raises :class:`RecordValidationError`: 403 when the caller is not the admin, 422 for a value
    that is not two ISO-8601 times ``<start>/<end>`` with start before end."""
    if value is None or not value.strip():
        return None
    if not admin:
        raise _header_error(f"{REPLAY_INTERVAL_HEADER} is accepted with the admin token only "
                            "(header Authorization: Bearer <admin token>)", 403)
    first, sep, second = value.strip().partition("/")
    try:
        if not sep:
            raise ValueError
        start, end = to_utc(first.strip()), to_utc(second.strip())
    except (TypeError, ValueError, OverflowError):
        raise _header_error(f"{REPLAY_INTERVAL_HEADER} must be <start>/<end> in ISO 8601, got {value!r:.120}") from None
    if not start < end:
        raise _header_error(f"{REPLAY_INTERVAL_HEADER}: the start {start.isoformat()} is not before the end "
                            f"{end.isoformat()}")
    return start, end


def check_event_ts(event_ts: list[datetime] | None, now: datetime, window: EventWindow,
                   replay: tuple[datetime, datetime] | None = None) -> None:
    """Raise :class:`RecordValidationError` (422, one error per record outside, ``{"record": i,
    "field": "event_ts", "message"}``) unless every ``event_ts`` (tz-aware UTC) lies in ``replay``'s
    ``[start, end)`` or, without one, in ``window`` around ``now``. ``None`` (server time) passes."""
    if not event_ts:
        return
    if replay is not None:
        low, high = replay

        def inside(ts: datetime) -> bool:
            return low <= ts < high

        where = f"the replay interval [{low.isoformat()}, {high.isoformat()}) of {REPLAY_INTERVAL_HEADER}"
    else:
        low, high = window.bounds(now)

        def inside(ts: datetime) -> bool:
            return low <= ts <= high

        where = (f"the accepted window [{low.isoformat()}, {high.isoformat()}] ({window.max_age_s:g} s before now, "
                 f"{window.max_ahead_s:g} s after; {AIRLOOP_EVENT_TS_MAX_AGE_S.name}, "
                 f"{AIRLOOP_EVENT_TS_MAX_AHEAD_S.name})")
    errors = [{"record": i, "field": "event_ts", "message": f"event_ts {ts.isoformat()} is outside {where}"}
              for i, ts in enumerate(event_ts) if not inside(ts)]
    if errors:
        raise RecordValidationError(errors[:MAX_REPORTED_ERRORS])
