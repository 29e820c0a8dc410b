"""The demo's per-day monitoring lines: the estimate, the realized figure of the day's own rows,
and the trailing realized figure the performance rules judge (a retrained version's recovery)."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

from airloop.core import store
from airloop.core.settings import load_settings
from airloop.monitoring.history import daily_lines


def utc(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc)


def test_each_day_shows_the_trailing_realized_figure_of_its_version(tmp_path, claims_config):
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    engine = store.get_engine(settings.monitoring_db_uri)
    estimate = {"metric": "roc_auc", "value": 0.78, "low": 0.74, "high": 0.82, "band_drop": 0.0,
                "metrics": {"roc_auc": {"value": 0.78, "low": 0.74, "high": 0.82},
                            "f1": {"value": 0.3, "low": 0.25, "high": 0.35}}}
    days = [date(2026, 5, 13), date(2026, 5, 20), date(2026, 5, 21)]
    rows = [
        # the old version, its concept drift judged on 312 labelled rows; the new one not labelled yet; then 64 rows
        ("3", {"roc_auc": 0.41, "f1": 0.05}, 312),
        ("4", None, 12),
        ("4", {"roc_auc": 0.8123, "f1": 0.33}, 64),
    ]
    store.upsert(engine, store.monitoring_runs, [{
        "tenant": "default", "pipeline": claims_config.name, "interval_start": utc(day),
        "interval_end": utc(day + timedelta(days=1)), "model_version": version, "rows": 500,
        "performance": json.dumps(perf) if perf else None, "labelled_rows": labelled,
        "estimated_performance": json.dumps(estimate), "estimated_metric": "roc_auc", "estimated_value": 0.78,
        "estimated_low": 0.74, "estimated_high": 0.82, "reference_id": "training"}
        for day, (version, perf, labelled) in zip(days, rows, strict=True)])

    head, *lines = daily_lines(engine, claims_config)
    assert "trailing (labelled)" in head
    assert len(lines) == 3
    assert lines[0].startswith("    2026-05-13 v3") and "| 0.410 (n=312)" in lines[0]
    assert lines[1].startswith("    2026-05-20 v4") and "|   -   (n=12)" in lines[1]
    assert "| 0.812 (n=64)" in lines[2] and "roc_auc 0.780 (0.740..0.820)" in lines[2]
