"""Extract: immutable, content-addressed snapshots of the interval's window."""

from __future__ import annotations

from datetime import date

import pytest

from airloop.data.simulator import write_history
from airloop.data.snapshot import extract_window, load_snapshot, load_snapshot_days, window_days
from airloop.data.sources import ExtractError


@pytest.fixture()
def source(tmp_path, claims_config):
    from airloop.core.settings import load_settings

    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    write_history(settings.data_dir / "claims_fraud", start=date(2026, 1, 1), days=20)
    return settings


def test_window_excludes_as_of_day():
    assert window_days(date(2026, 1, 10), 3) == [date(2026, 1, 7), date(2026, 1, 8), date(2026, 1, 9)]


def test_snapshot_is_content_addressed_and_idempotent(source, claims_config):
    a = extract_window(claims_config, date(2026, 1, 15), source, window=7)
    b = extract_window(claims_config, date(2026, 1, 15), source, window=7)
    assert a == b
    assert a.path.endswith(a.fingerprint[:16])
    assert a.days == [f"2026-01-{d:02d}" for d in range(8, 15)]
    assert len(load_snapshot_days(a)) == 7
    # no temporary folders left behind
    assert [p.name for p in (source.snapshots_dir / "claims_fraud" / "2026-01-15").iterdir()] == [a.fingerprint[:16]]


def test_excluded_days_change_the_fingerprint(source, claims_config):
    full = extract_window(claims_config, date(2026, 1, 15), source, window=7)
    without = extract_window(claims_config, date(2026, 1, 15), source, window=7, exclude={date(2026, 1, 10)})
    assert "2026-01-10" not in without.days and without.excluded_days == ["2026-01-10"]
    assert without.fingerprint != full.fingerprint and without.rows < full.rows


def test_training_frame_only_has_labels_known_by_as_of(source, claims_config):
    snap = extract_window(claims_config, date(2026, 1, 15), source, window=7)
    frame = load_snapshot(snap.to_dict(), claims_config)
    assert (frame["label_ts"] < "2026-01-15").all()
    assert len(frame) < snap.rows  # the newest claims are not labelled yet
    assert frame["claim_ts"].is_monotonic_increasing


def test_empty_window_is_a_clear_error(source, claims_config):
    with pytest.raises(ExtractError, match="no partitions"):
        extract_window(claims_config, date(2025, 6, 1), source, window=7)
