"""The demo simulator: deterministic, realistic, with its scripted events."""

from __future__ import annotations

from datetime import date

import pandas as pd

from airloop.data.simulator import DEFAULT_EVENTS, generate_day, write_history


def test_same_day_same_seed_same_data():
    a, b = generate_day(date(2026, 2, 3)), generate_day(date(2026, 2, 3))
    pd.testing.assert_frame_equal(a, b)
    assert not generate_day(date(2026, 2, 3), seed=8).equals(a)


def test_rows_are_plausible():
    frame = generate_day(date(2026, 2, 3))
    assert 250 < len(frame) < 600
    assert frame["claim_id"].is_unique
    assert (frame["claim_ts"].dt.date == date(2026, 2, 3)).all()
    assert (frame["label_ts"] > frame["claim_ts"]).all()  # labels arrive later
    assert 0.01 < frame["is_fraud"].mean() < 0.2
    assert frame.drop(columns=["claim_amount", "police_report"]).notna().all().all()


def test_bad_data_day_has_nulls_and_negative_values():
    bad = generate_day(DEFAULT_EVENTS["bad_data"])
    assert bad["claim_amount"].isna().mean() > 0.3
    assert (bad["days_to_report"] < 0).any()
    good = generate_day(date(2026, 3, 9))
    assert good["claim_amount"].notna().all() and (good["days_to_report"] >= 0).all()


def test_covariate_shift_moves_inputs():
    before = pd.concat(generate_day(date(2026, 4, d)) for d in range(1, 11))
    after = pd.concat(generate_day(date(2026, 4, d)) for d in range(21, 31))
    assert after["claim_amount"].median() > 1.5 * before["claim_amount"].median()
    assert after["customer_age"].mean() < before["customer_age"].mean() - 4
    assert (after["channel"] == "online").mean() > (before["channel"] == "online").mean() + 0.08


def test_write_history_is_idempotent(tmp_path):
    files = write_history(tmp_path, start=date(2026, 1, 1), days=3)
    first = [f.read_bytes() for f in files]
    again = write_history(tmp_path, start=date(2026, 1, 1), days=3)
    assert [f.read_bytes() for f in again] == first
    assert (tmp_path / "events.json").is_file()
    assert sorted(p.parent.name for p in files) == ["dt=2026-01-01", "dt=2026-01-02", "dt=2026-01-03"]
