"""An interval's estimate stored beside the realized figures, checked once its labels arrive
(order-independent), and the drift reference refreshed from served traffic."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.core.references import ReferenceRefresh
from airloop.core.settings import load_settings
from airloop.data.features import coerce_features
from airloop.data.simulator import generate_day
from airloop.monitoring import estimates, refresh
from airloop.monitoring.reference import SCORE_COLUMN

DAYS = [date(2026, 4, 1) + timedelta(days=i) for i in range(3)]


def utc(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc)


@pytest.fixture()
def local(tmp_path):
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    return settings, store.get_engine(settings.monitoring_db_uri)


def served_day(config, day: date, seed: int):
    """The day's claims served with calibrated scores (labels drawn from them), label times 3-12 days later."""
    raw = generate_day(day)
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(-2.2, 1.5, len(raw))))
    y = (rng.random(len(raw)) < p).astype(int)
    ts = [t.to_pydatetime() for t in raw["claim_ts"]]
    preds = [{"request_id": str(rid), "ts": t, "tenant": "default", "pipeline": config.name, "model_name": config.name,
              "model_version": "1", "variant": "champion", "features": json.dumps(rec, default=str),
              "prediction": json.dumps(int(pi >= 0.3)), "score": float(pi), "status": "ok"}
             for rid, t, rec, pi in zip(raw["claim_id"], ts, raw[list(config.features)].to_dict("records"), p, strict=True)]
    delays = rng.integers(3, 13, len(raw))
    labels = [{"request_id": str(rid), "tenant": "default", "pipeline": config.name, "label": json.dumps(int(yi)),
               "label_ts": t + timedelta(days=int(dl)), "received_at": t + timedelta(days=int(dl))}
              for rid, t, yi, dl in zip(raw["claim_id"], ts, y, delays, strict=True)]
    frame = coerce_features(config, raw, fill_missing=True).assign(**{SCORE_COLUMN: p, "model_version": "1"})
    return preds, labels, frame


def store_day(engine, config, day, frame):
    est = estimates.interval_estimate(config, frame, threshold=0.3, reference=None, holdout={"roc_auc": 0.8})
    store.upsert(engine, store.monitoring_runs, [{
        "tenant": "default", "pipeline": config.name, "interval_start": utc(day),
        "interval_end": utc(day + timedelta(days=1)), "model_version": "1", "rows": len(frame),
        **estimates.run_columns(est), "reference_id": "training"}])
    return est


def checks_table(engine):
    t = store.estimate_checks
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t).order_by(t.c.interval_start, t.c.checked_at))]


def check_days(engine, config, days):
    out = []
    for day in days:
        out += estimates.check_estimates(engine, config, "default", utc(day), utc(day + timedelta(days=1)))
    return out


def test_estimate_error_is_stored_once_the_labels_arrive_in_any_order(local, claims_config, tmp_path):
    settings, engine = local
    labels_all = []
    for i, day in enumerate(DAYS):
        preds, labels, frame = served_day(claims_config, day, i)
        store.insert_ignore(engine, store.predictions, preds)
        labels_all += labels
        est = store_day(engine, claims_config, day, frame)
        assert est["metric"] == "roc_auc" and est["threshold"] == 0.3 and est["low"] <= est["value"] <= est["high"]
        assert set(est["metrics"]) == {"roc_auc", "f1", "precision", "recall", "accuracy"}
    store.upsert(engine, store.ground_truth, labels_all)
    later = [DAYS[0] + timedelta(days=i) for i in range(1, 20)]
    # a few days after the first day few labels are known: nothing checked yet
    assert check_days(engine, claims_config, later[:4]) == []
    checks = check_days(engine, claims_config, later[4:])
    # each day checked on the days its labels arrived once 90 % were known; the last check is complete
    last = {}
    for c in checks:
        assert c["labelled_rows"] >= 0.9 * c["rows"] and c["error"] == pytest.approx(c["estimated"] - c["realized"])
        last[c["interval_start"][:10]] = c
    assert sorted(last) == [d.isoformat() for d in DAYS]
    for c in last.values():
        assert c["labelled_rows"] == c["rows"] and abs(c["error"]) < 0.15  # calibrated scores: close
    latest = estimates.latest_checks(engine, claims_config.name, "default")
    assert [latest[utc(d)]["labelled_rows"] for d in DAYS] == [last[d.isoformat()]["rows"] for d in DAYS]
    in_order = checks_table(engine)
    # re-runs change nothing; a backfill in another order writes the same rows
    check_days(engine, claims_config, later)
    assert checks_table(engine) == in_order
    with engine.begin() as conn:
        conn.execute(sa.delete(store.estimate_checks))
    check_days(engine, claims_config, list(reversed(later)))
    assert checks_table(engine) == in_order


def test_reference_refresh_from_served_traffic(local, claims_config):
    settings, engine = local
    config = claims_config.model_copy(update={"monitoring": claims_config.monitoring.model_copy(update={
        "reference": claims_config.monitoring.reference.model_copy(update={
            "refresh": ReferenceRefresh(every_days=7, window_days=3)})})})
    training = pd.DataFrame({c: [] for c in [*config.features, SCORE_COLUMN]})
    day = refresh.refresh_day(config, utc(date(2026, 4, 8)))
    assert (day.date() - date(1970, 1, 1)).days % 7 == 0 and day <= utc(date(2026, 4, 8))
    first = day.date() - timedelta(days=3)
    # no traffic before the refresh day: the training reference stays
    ref, _, rid = refresh.reference_for(engine, config, settings, "default", "1", utc(date(2026, 4, 8)), training, None)
    assert rid == refresh.TRAINING and ref is training
    for i in range(3):
        preds, _, _ = served_day(config, first + timedelta(days=i), i)
        store.insert_ignore(engine, store.predictions, preds)
    ref, profile, rid = refresh.reference_for(engine, config, settings, "default", "1", utc(date(2026, 4, 8)),
                                              training, None)
    assert rid == f"refresh:{day:%Y-%m-%d}" and len(ref) > 1000 and profile is not None
    assert set(ref.columns) >= {*config.features, SCORE_COLUMN}
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(store.reference_refreshes)).mappings().all()
    assert row["rows"] == len(ref) and row["model_version"] == "1"
    again, _, rid2 = refresh.reference_for(engine, config, settings, "default", "1", utc(date(2026, 4, 8)),
                                           training, None)  # cached: the same frame
    assert rid2 == rid and again[SCORE_COLUMN].tolist() == ref[SCORE_COLUMN].tolist()
    assert refresh.refresh_day(claims_config.model_copy(update={"monitoring": claims_config.monitoring.model_copy(
        update={"reference": claims_config.monitoring.reference.model_copy(update={"refresh": None})})}),
        utc(date(2026, 4, 8))) is None


def test_regression_interval_estimate_learns_errors_from_the_reference_holdout(settings):
    """DLE through the store path: the version's reference rows with realized targets (its holdout)
    fit the loss model; an interval of harder flights gets a higher estimated MAE than the holdout's."""
    from airloop.core.pipeline import load_pipeline_config
    from airloop.monitoring.reference import TARGET_COLUMN

    config = load_pipeline_config(settings.pipelines_dir / "examples" / "flights_arrival_delay.yaml", settings)
    rng = np.random.default_rng(6)

    def flights(n, long_share):
        frame = pd.DataFrame({name: rng.integers(0, 23, n) for name, spec in config.features.items()
                              if spec.type == "int"})
        for name, spec in config.features.items():
            if spec.type == "float":
                frame[name] = rng.uniform(100, 3000, n)
            elif spec.type == "category":
                frame[name] = rng.choice([str(v) for v in spec.values], n)
        long = rng.random(n) < long_share
        frame["distance"] = np.where(long, 2500.0, 300.0)
        pred = rng.normal(5, 10, n)
        actual = pred + rng.normal(0, np.where(long, 40.0, 8.0))
        return coerce_features(config, frame, fill_missing=True).assign(**{SCORE_COLUMN: pred}), actual

    reference, actual = flights(3000, 0.2)
    reference[TARGET_COLUMN] = np.where(np.arange(len(reference)) >= 1000, actual, np.nan)  # holdout rows
    holdout_mae = float(np.abs(actual[1000:] - reference[SCORE_COLUMN].to_numpy()[1000:]).mean())
    served, served_actual = flights(800, 0.8)
    est = estimates.interval_estimate(config, served, threshold=None, reference=reference, version="r1",
                                      holdout={"mae": holdout_mae, "rmse": 20.0})
    realized = float(np.abs(served_actual - served[SCORE_COLUMN].to_numpy()).mean())
    assert est["metric"] in ("mae", "rmse") and set(est["metrics"]) == {"mae", "rmse"}
    mae = est["metrics"]["mae"]
    assert mae["value"] == pytest.approx(realized, rel=0.15) and mae["value"] > 1.5 * holdout_mae
    assert est["threshold"] is None and est["drop"] is not None
    # without holdout targets in the reference there is no regression estimate
    assert estimates.interval_estimate(config, served, threshold=None, reference=reference.drop(
        columns=[TARGET_COLUMN]), version="r2", holdout={}) is None
