"""Drift thresholds learned from the training window's own day-to-day variation (``threshold: auto``).

A fixed threshold says how far a day may stray from the reference before it "drifts". Tuned on
one dataset it is wrong on the next: on the simulator a day differs from the reference only by
sampling noise, on real data (flights, weather) every day also differs by its weekday, its
weather and its calendar, so thresholds tuned for the simulator flagged those features on every
stable day. ``threshold: auto`` learns each column's threshold from the reference itself, when a
model version is trained, for the configured false-alarm rate ``r`` per feature-day
(``monitoring.drift.calibration.false_alarm_rate``, default 0.01):

1. **One statistic per training day.** For every day ``d`` of the training part of the window
   (the version's reference days; days with fewer than ``drift.min_rows`` rows are skipped, as
   monitoring skips them), the column's configured drift statistic is computed exactly as
   monitoring computes it — the day's rows (every row, capped at ``max_day_rows`` by a seeded
   sample) against the reference profile — except that the reference leaves out its own rows of
   day ``d`` (leave-one-day-out: in monitoring the judged day is never in the reference). Real
   days, not row resamples: resampling rows measures only sampling noise, while the point is to
   capture what differs between whole days (weekday, weather, holidays).
2. **A prediction bound.** The statistics are put on a scale where they are close to normal —
   ``log(distance)`` for distances (psi, wasserstein, jensenshannon, kl_div, hellinger), the
   normal score ``z = Φ⁻¹(1 - p)`` for p-value tests (ks, chisquare, z; under pure noise z is
   exactly standard normal) — and the threshold is the ``1 - r`` normal *prediction* bound of a
   new day: ``mean + t(1 - r, n - 1) · sd · sqrt(1 + 1/n)`` over the ``n`` days. With 30-60 days
   the empirical 99th percentile is the largest day seen (an unstable estimate); the prediction
   bound uses every day and accounts for estimating the mean and spread from ``n`` of them (for
   normal scores its false-alarm rate is exactly ``r``, averaged over windows).
3. **Limits.** A distance threshold is never below a tenth of Evidently's default for the
   method (0.01), a p-value threshold never above Evidently's default (0.05): a column that
   barely varies day to day (a constant) does not get a threshold that flags rounding noise.
   Fewer than ``min_days`` usable days: the method's Evidently default, recorded as a fallback.

**Seasonal features** (``calibration.seasonal``: weekday-driven ones, e.g. the hour mix of
flights on a Saturday): the reference is also kept per weekday, and such a feature's statistic
— in calibration and in monitoring alike — is its distance to the *nearest* weekday's reference
(the largest p-value). A Saturday is then compared with Saturdays without monitoring knowing
which day it judges, and a real shift is far from every weekday. The price: a change that makes
one weekday look like another one is not seen. Features left unflagged get the pooled threshold,
which covers every weekday's variation (so it is higher).

The outcome (thresholds, the per-column figures behind them, the days used) is stored with the
version's reference (``reference.parquet``'s metadata and ``profile.npz``), so monitoring a
version — backfills included — always uses the thresholds learned from its own training window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np

from airloop.core.pipeline import ColumnDrift, PipelineConfig
from airloop.monitoring import driftstats
from airloop.monitoring.driftstats import DEFAULT_THRESHOLDS, P_VALUE_METHODS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

#: Reference column holding each row's UTC day (``YYYY-MM-DD``) when thresholds are calibrated.
DAY_COLUMN = "__day__"

#: Key of the calibration in the reference frame's ``attrs`` (kept in ``reference.parquet``).
CALIBRATION_ATTR = "airloop.drift_calibration"

#: Layout version of the stored calibration.
CALIBRATION_FORMAT = 1

#: A calibrated distance threshold is never below this share of Evidently's default threshold.
FLOOR_SHARE = 0.1

#: Distances at or below this are taken as this (log scale).
_TINY = 1e-12


# ============================================================================ configuration
def column_specs(config: PipelineConfig, score_column: str) -> dict[str, tuple[str, ColumnDrift]]:
    """``{column: (kind, ColumnDrift)}`` of every feature and the score column as configured:
    ``drift.columns`` overrides, else ``drift.numeric`` / ``drift.categorical`` by type; the
    score takes ``drift.prediction``. ``kind`` is ``"num"`` or ``"cat"``."""
    drift = config.monitoring.drift
    out: dict[str, tuple[str, ColumnDrift]] = {}
    for column, spec in config.features.items():
        kind = "cat" if spec.type == "category" else "num"
        out[column] = (kind, drift.columns.get(column) or (drift.categorical if kind == "cat" else drift.numeric))
    out[score_column] = ("num", drift.prediction)
    return out


def auto_columns(config: PipelineConfig, score_column: str) -> dict[str, tuple[str, str]]:
    """``{column: (kind, method)}`` of the columns whose threshold is ``auto``."""
    return {c: (kind, spec.method) for c, (kind, spec) in column_specs(config, score_column).items() if spec.auto}


def wanted(config: PipelineConfig, score_column: str) -> bool:
    """Whether any column of the pipeline has ``threshold: auto``."""
    return bool(auto_columns(config, score_column))


def limit(method: str) -> float:
    """The floor (distances) or cap (p-values) of a calibrated threshold of ``method``."""
    return DEFAULT_THRESHOLDS[method] if method in P_VALUE_METHODS else FLOOR_SHARE * DEFAULT_THRESHOLDS[method]


def threshold_for(calibration: Mapping[str, Any] | None, column: str, method: str) -> tuple[float, bool]:
    """``(threshold, calibrated)`` of an ``auto`` column: the stored one when the calibration
    holds the column for the same method, else Evidently's default for the method (False)."""
    entry = ((calibration or {}).get("columns") or {}).get(column)
    if entry and entry.get("method") == method and entry.get("threshold") is not None:
        return float(entry["threshold"]), True
    return DEFAULT_THRESHOLDS[method], False


def is_seasonal(calibration: Mapping[str, Any] | None, column: str) -> bool:
    """Whether the stored calibration scored ``column`` against the nearest weekday."""
    entry = ((calibration or {}).get("columns") or {}).get(column)
    return bool(entry and entry.get("seasonal"))


# ============================================================================ statistics
def _profile(kind: str, values: Any) -> driftstats.ColumnProfile:
    if kind == "cat":
        return driftstats.profile_categorical(values)
    return driftstats.profile_numeric(np.asarray(values, dtype=np.float64))


def best_statistic(profiles: Iterable[driftstats.ColumnProfile], cur: Any, method: str) -> float:
    """The statistic against the nearest of several references (the smallest distance, or the
    largest p-value); profiles without values are skipped. NaN when none has values."""
    scores = [driftstats.statistic(p, cur, method) for p in profiles if p.n > 0]
    scores = [s for s in scores if not math.isnan(s)]
    if not scores:
        return math.nan
    return max(scores) if method in P_VALUE_METHODS else min(scores)


def to_normal_scale(method: str, values: Any) -> np.ndarray:
    """Statistics on the scale the bound is computed on: ``log(distance)`` or ``Φ⁻¹(1 - p)``."""
    from scipy.stats import norm

    x = np.asarray(values, dtype=np.float64)
    if method in P_VALUE_METHODS:
        return norm.isf(np.clip(x, 1e-300, 1 - 1e-16))
    return np.log(np.maximum(x, _TINY))


def from_normal_scale(method: str, value: float) -> float:
    """Inverse of :func:`to_normal_scale` for one value."""
    from scipy.stats import norm

    return float(norm.sf(value)) if method in P_VALUE_METHODS else float(math.exp(value))


def prediction_bound(x: Any, rate: float) -> float:
    """The one-sided ``1 - rate`` normal prediction bound of a new value given the sample ``x``:
    ``mean + t(1 - rate, n - 1) * sd * sqrt(1 + 1/n)`` (``sd`` with ``ddof=1``)."""
    from scipy.stats import t

    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError("a prediction bound needs at least two values")
    return float(x.mean() + t.ppf(1 - rate, n - 1) * x.std(ddof=1) * math.sqrt(1 + 1 / n))


def threshold_from_statistics(method: str, statistics: Any, rate: float) -> dict[str, Any]:
    """The calibrated threshold of ``method`` from one statistic per day (see the module
    docstring): ``{threshold, bound, center, spread, limited}`` (``limited``: the floor or cap
    applied, else None)."""
    z = to_normal_scale(method, statistics)
    bound = prediction_bound(z, rate)
    raw = from_normal_scale(method, bound)
    edge = limit(method)
    if method in P_VALUE_METHODS:
        threshold, limited = (edge, "cap") if raw > edge else (raw, None)
    else:
        threshold, limited = (edge, "floor") if raw < edge else (raw, None)
    return {"threshold": float(threshold), "bound": float(raw), "center": float(z.mean()),
            "spread": float(z.std(ddof=1)), "limited": limited}


def day_statistics(kind: str, method: str, reference: Any, reference_days: np.ndarray,
                   days: Mapping[date, Any], seasonal: bool = False) -> dict[date, float]:
    """One statistic per day of ``days`` (``{day: values}``): the day's values against the
    reference ``values`` without that day's rows (``reference_days`` holds each reference row's
    day), against the nearest weekday's reference when ``seasonal``. Days without values on
    either side are left out."""
    import pandas as pd

    ref = pd.Series(reference).reset_index(drop=True)
    ref_days = np.asarray(reference_days)
    weekdays = np.array([d.weekday() for d in ref_days]) if seasonal else None
    full = {w: _profile(kind, ref[weekdays == w]) for w in range(7)} if seasonal else None
    out: dict[date, float] = {}
    for day, values in days.items():
        keep = ref_days != day
        if seasonal:
            profiles = dict(full)
            profiles[day.weekday()] = _profile(kind, ref[keep & (weekdays == day.weekday())])
            probe = next((p for p in profiles.values() if p.n), None)
            if probe is None:
                continue
            cur = driftstats.current_data(probe, values)
            if not len(cur):
                continue
            score = best_statistic(profiles.values(), cur, method)
        else:
            profile = _profile(kind, ref[keep])
            cur = driftstats.current_data(profile, values)
            if profile.n == 0 or not len(cur):
                continue
            score = driftstats.statistic(profile, cur, method)
        if not math.isnan(score):
            out[day] = float(score)
    return out


def calibrate(reference: pd.DataFrame, reference_days: Any, days: Mapping[date, pd.DataFrame],
              columns: Mapping[str, tuple[str, str]], rate: float = 0.01, seasonal: Iterable[str] = (),
              min_days: int = 7) -> dict[str, Any]:
    """Calibrate the threshold of each of ``columns`` (``{column: (kind, method)}``).

    ``reference``: the reference frame (the version's reference rows); ``reference_days``: each
    of its rows' UTC day (dates or ``YYYY-MM-DD``); ``days``: ``{day: frame}`` of the days to
    calibrate on, every row of each (see the module docstring). Returns the JSON-able
    calibration stored with the reference: ``format``, ``false_alarm_rate``, ``days`` (first,
    last, count) and per column ``method``, ``threshold``, ``seasonal``, ``days``, the figures of
    :func:`threshold_from_statistics`, ``largest`` (the largest day statistic, the smallest
    p-value) and ``fallback`` (why the default was used, else None).
    """
    ref_days = np.array([d if isinstance(d, date) else date.fromisoformat(str(d)) for d in reference_days], dtype=object)
    seasonal = set(seasonal)
    out_columns: dict[str, dict[str, Any]] = {}
    for column, (kind, method) in columns.items():
        if column not in reference.columns:
            continue
        stats = day_statistics(kind, method, reference[column], ref_days,
                               {d: f[column] for d, f in days.items() if column in f.columns},
                               seasonal=column in seasonal)
        entry: dict[str, Any] = {"method": method, "seasonal": column in seasonal, "days": len(stats)}
        if len(stats) < max(min_days, 3):
            entry |= {"threshold": DEFAULT_THRESHOLDS[method], "bound": None, "center": None, "spread": None,
                      "limited": None, "largest": None,
                      "fallback": f"{len(stats)} usable days < calibration.min_days {min_days}: Evidently's default"}
        else:
            values = np.array(list(stats.values()))
            entry |= threshold_from_statistics(method, values, rate)
            entry["largest"] = float(values.min() if method in P_VALUE_METHODS else values.max())
            entry["fallback"] = None
        out_columns[column] = entry
    used = sorted(days)
    return {"format": CALIBRATION_FORMAT, "false_alarm_rate": float(rate),
            "days": {"first": used[0].isoformat() if used else None, "last": used[-1].isoformat() if used else None,
                     "count": len(used)},
            "columns": out_columns}


# ============================================================================ a model version
def day_of(timestamps: Any) -> np.ndarray:
    """The UTC day (``datetime.date``) of each timestamp."""
    import pandas as pd

    return pd.to_datetime(timestamps, utc=True).dt.floor("D").dt.date.to_numpy()


def calibrate_reference(config: PipelineConfig, model: Any, train: pd.DataFrame, reference: pd.DataFrame,
                        score_column: str) -> dict[str, Any]:
    """The calibration of a version's ``threshold: auto`` columns: every training day of
    ``train`` (its rows typed as served, scored by ``model``; at most ``max_day_rows`` per day by
    a seeded sample) against ``reference`` (which holds :data:`DAY_COLUMN`)."""
    import pandas as pd

    from airloop.data.features import coerce_features
    from airloop.models.scoring import model_scores

    settings = config.monitoring.drift.calibration
    columns = auto_columns(config, score_column)
    unknown = sorted(set(settings.seasonal) - set(config.features))
    if unknown:
        from airloop.core.settings import ConfigError

        raise ConfigError(f"{config.name}: monitoring.drift.calibration.seasonal names unknown features: {unknown}")
    day = pd.Series(day_of(train[config.timestamp]), index=train.index)
    parts = []
    for d, rows in train.groupby(day, sort=True):
        if len(rows) < config.monitoring.drift.min_rows:
            continue
        if len(rows) > settings.max_day_rows:
            rows = rows.sample(n=settings.max_day_rows, random_state=config.training.seed)
        parts.append(rows)
    days: dict[date, pd.DataFrame] = {}
    if parts:
        rows = pd.concat(parts)
        X = coerce_features(config, rows, fill_missing=True)
        if score_column in columns:
            X[score_column] = model_scores(config, model, X[list(config.features)])
        for d, part in X.groupby(day.loc[rows.index].to_numpy(), sort=True):
            days[d] = part.reset_index(drop=True)
    result = calibrate(reference, reference[DAY_COLUMN], days, columns, rate=settings.false_alarm_rate,
                       seasonal=settings.seasonal, min_days=settings.min_days)
    fallback = [c for c, e in result["columns"].items() if e["fallback"]]
    log.info("%s: drift thresholds calibrated on %s training days for a false-alarm rate of %s per feature-day: %s%s",
             config.name, result["days"]["count"], settings.false_alarm_rate,
             ", ".join(f"{c}={e['threshold']:.4g}" for c, e in result["columns"].items()),
             f"; Evidently's defaults (too few days) for {fallback}" if fallback else "")
    return result
