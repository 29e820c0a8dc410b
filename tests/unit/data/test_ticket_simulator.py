"""The second demo dataset: support-ticket triage (multi-class), written as Parquet partitions
that the ticket_triage pipeline reads through its glob pattern."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import load_settings
from airloop.data.simulator import DATASETS, TICKET_EVENTS, TICKET_QUEUES, generate_ticket_day, write_history
from airloop.data.snapshot import extract_window
from airloop.data.sources import read_partition

SHIFT = TICKET_EVENTS["covariate_shift"]


def days(first: date, n: int) -> pd.DataFrame:
    return pd.concat([generate_ticket_day(first + timedelta(days=i)) for i in range(n)], ignore_index=True)


def test_same_day_same_seed_same_tickets():
    a = generate_ticket_day(date(2026, 2, 3))
    pd.testing.assert_frame_equal(a, generate_ticket_day(date(2026, 2, 3)))
    assert not generate_ticket_day(date(2026, 2, 3), seed=8).equals(a)


def test_tickets_are_plausible_and_every_queue_is_used():
    frame = days(date(2026, 2, 2), 7)  # a Monday .. Sunday
    config = load_pipeline_config("ticket_triage")
    assert set(config.features) | {config.timestamp, config.id_column, config.target, config.label_timestamp} == set(frame)
    assert frame["ticket_id"].is_unique
    assert (frame["triaged_ts"] > frame["created_ts"]).all()
    assert (frame["triaged_ts"] - frame["created_ts"]).max() <= pd.Timedelta(days=5)
    assert set(frame["queue"]) == set(TICKET_QUEUES) == set(config.classes)
    assert frame["queue"].value_counts(normalize=True).min() > 0.08  # five real queues, none negligible
    weekday = generate_ticket_day(date(2026, 2, 4))
    assert (weekday["created_ts"].dt.date == date(2026, 2, 4)).all() and 250 < len(weekday) < 400
    assert len(generate_ticket_day(date(2026, 2, 7))) < 0.8 * len(weekday)  # Saturdays are quieter
    assert frame.notna().all().all()


def test_covariate_shift_moves_inputs():
    before, after = days(SHIFT - timedelta(days=7), 7), days(SHIFT, 7)
    assert (after["product"] == "api").mean() > (before["product"] == "api").mean() + 0.2
    assert (after["language"] == "de").mean() > (before["language"] == "de").mean() + 0.1
    assert after["body_words"].median() > 1.3 * before["body_words"].median()
    assert after["customer_tier"].value_counts(normalize=True).sub(
        before["customer_tier"].value_counts(normalize=True)).abs().max() < 0.05  # unshifted


def test_history_is_parquet_the_pipeline_reads_through_its_glob(tmp_path):
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    config = load_pipeline_config("ticket_triage")
    demo = DATASETS["ticket_triage"]
    files = write_history(settings.data_dir / "ticket_triage", start=date(2026, 2, 1), days=3, dataset="ticket_triage")
    assert [f.relative_to(settings.data_dir).as_posix() for f in files] == [
        f"ticket_triage/dt=2026-02-0{d}/part-0.parquet" for d in (1, 2, 3)]
    again = write_history(settings.data_dir / "ticket_triage", start=date(2026, 2, 1), days=3, dataset="ticket_triage")
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in files]
    assert demo.fmt == config.source.format == "parquet"
    day = read_partition(config, date(2026, 2, 2), settings)
    pd.testing.assert_frame_equal(day, generate_ticket_day(date(2026, 2, 2)))
    snap = extract_window(config, date(2026, 2, 4), settings, window=3)
    assert snap.days == ["2026-02-01", "2026-02-02", "2026-02-03"]


def test_cli_simulate_writes_the_ticket_history(tmp_path, monkeypatch, capsys):
    from airloop.cli import main as cli
    from airloop.core.settings import get_settings

    monkeypatch.setenv("AIRLOOP_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert cli.main(["simulate", "--pipeline", "ticket_triage", "--days", "2"]) == 0
    finally:
        get_settings.cache_clear()
    assert "wrote 2 daily partitions" in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*.parquet")) == [
        "data/ticket_triage/dt=2026-01-01/part-0.parquet", "data/ticket_triage/dt=2026-01-02/part-0.parquet"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_demo_dataset_has_its_pipeline(name):
    config = load_pipeline_config(name)
    assert config.source.kind == "files" and config.source.partitioned
