"""Input and prediction drift of one interval: fast statistics and Evidently's report."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop.core.files import atomic_path
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import ConfigError
from airloop.monitoring.driftstats import METHOD_KINDS, P_VALUE_METHODS
from airloop.monitoring.reference import SCORE_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from airloop.monitoring.driftstats import ReferenceProfile

from airloop.core.metrics import finite_or_none
from airloop.monitoring import calibration as drift_calibration
from airloop.monitoring import driftstats
from airloop.monitoring.reference import PREDICTION_FEATURE, build_reference_profile

log = logging.getLogger(__name__)


#: Column types each configurable method accepts in Evidently 0.7 (``StatTest.allowed_feature_types``);
#: :data:`P_VALUE_METHODS` (drift when p is small; the others are distances) comes from driftstats too.
METHOD_TYPES = METHOD_KINDS


#: Above this many rows (current or reference) the HTML report is drawn from a seeded sample of
#: this many rows; the stored verdicts never are.
HTML_MAX_ROWS = 50_000


# ============================================================================ drift
_WARNED: set[tuple[str, str]] = set()


def column_drift_settings(config: PipelineConfig, calibration: dict[str, Any] | None = None) -> dict[str, tuple[str, float]]:
    """``{column: (method, threshold)}`` for every feature and the score column, as configured:
    ``drift.numeric`` / ``drift.categorical`` by feature type, ``drift.columns`` overrides, and
    ``drift.prediction`` for :data:`SCORE_COLUMN`. Raises :class:`ConfigError` when a method does
    not apply to its column's type in Evidently (e.g. ``ks`` on a category).

    A ``threshold: auto`` column takes the threshold stored in ``calibration`` (the version's
    reference calibration, :mod:`airloop.monitoring.calibration`) for its method; without one
    (a version trained before the pipeline said ``auto``) Evidently's default for the method,
    with a warning."""
    drift = config.monitoring.drift
    unknown = sorted(set(drift.columns) - set(config.features))
    if unknown:
        raise ConfigError(f"{config.name}: monitoring.drift.columns names unknown features: {unknown}")
    unknown = sorted(set(drift.calibration.seasonal) - set(config.features))
    if unknown:
        raise ConfigError(f"{config.name}: monitoring.drift.calibration.seasonal names unknown features: {unknown}")
    out: dict[str, tuple[str, float]] = {}
    for column, (kind, chosen) in drift_calibration.column_specs(config, SCORE_COLUMN).items():
        if kind not in METHOD_TYPES[chosen.method]:
            what = "the numeric score" if column == SCORE_COLUMN else \
                f"{'categorical' if kind == 'cat' else 'numeric'} feature {column!r}"
            raise ConfigError(f"{config.name}: drift method {chosen.method!r} does not apply to {what}")
        if not chosen.auto:
            out[column] = (chosen.method, float(chosen.threshold))
            continue
        threshold, calibrated = drift_calibration.threshold_for(calibration, column, chosen.method)
        if not calibrated and (config.name, column) not in _WARNED:
            _WARNED.add((config.name, column))
            log.warning("%s: %s has threshold auto but its reference holds no calibration for %s: Evidently's "
                        "default %s (retrain to calibrate)", config.name, column, chosen.method, threshold)
        out[column] = (chosen.method, threshold)
    return {c: out[c] for c in [*config.features, SCORE_COLUMN]}


def reference_calibration(reference: pd.DataFrame | None) -> dict[str, Any] | None:
    """The calibrated thresholds a reference frame carries (``attrs``; see
    :func:`airloop.monitoring.reference.reference_frame`), or None."""
    return None if reference is None else reference.attrs.get(drift_calibration.CALIBRATION_ATTR)


def _judgeable(config: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Split the feature + score columns into those Evidently can judge (non-null values on both
    sides) and those it cannot (absent or all null in either frame: Evidently would raise)."""
    import numpy as np

    judged, skipped = [], []
    for column in [*config.features, SCORE_COLUMN]:
        ok = all(column in f.columns and f[column].replace([np.inf, -np.inf], np.nan).notna().any()
                 for f in (reference, current))
        (judged if ok else skipped).append(column)
    return judged, skipped


def _datasets(config: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]):
    """Evidently ``Dataset`` pair with explicit column types (numbers numerical, categories categorical)."""
    from evidently import DataDefinition, Dataset

    numeric = [c for c in columns if c == SCORE_COLUMN or config.features[c].type != "category"]
    categorical = [c for c in columns if c != SCORE_COLUMN and config.features[c].type == "category"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    return (Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition))


def drift_report(config: PipelineConfig, columns: list[str], full: bool = True,
                 calibration: dict[str, Any] | None = None):
    """The Evidently ``Report`` judging ``columns`` (features and/or :data:`SCORE_COLUMN`).

    ``full=True``: ``DataDriftPreset(columns=<features>, num_method=, num_threshold=, cat_method=,
    cat_threshold=, per_column_method=, per_column_threshold=, drift_share=)`` plus a
    ``ValueDrift(column="__score__", method=, threshold=)`` for the prediction — the preset expands
    into one ``ValueDrift`` per feature with exactly those settings, plus ``DriftedColumnsCount``
    and the dataset-drift / drift-table widgets of the HTML report.
    ``full=False``: only the ``ValueDrift`` metrics (same verdicts, no dataset-level widgets:
    about half the run time). Tests are always on: each ``ValueDrift`` carries Evidently's
    ``drift`` test, whose FAIL status is the verdict read by :func:`drift_rows`. ``calibration``:
    the reference's calibrated thresholds (``threshold: auto``; then every feature's threshold is
    passed per column). A seasonal column's stored verdict is against the nearest weekday of the
    reference, Evidently's against the whole reference: the report may show it drifting alone.
    """
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    settings = column_drift_settings(config, calibration)
    features = [c for c in columns if c != SCORE_COLUMN]
    metrics: list[Any] = []
    if full and features:
        drift = config.monitoring.drift
        auto = drift.numeric.auto or drift.categorical.auto or any(c.auto for c in drift.columns.values())
        overrides = {c: settings[c] for c in features if auto or c in drift.columns}
        metrics.append(DataDriftPreset(
            columns=features,
            num_method=drift.numeric.method,
            num_threshold=driftstats.DEFAULT_THRESHOLDS[drift.numeric.method] if drift.numeric.auto else drift.numeric.threshold,
            cat_method=drift.categorical.method,
            cat_threshold=(driftstats.DEFAULT_THRESHOLDS[drift.categorical.method] if drift.categorical.auto
                           else drift.categorical.threshold),
            per_column_method={c: m for c, (m, _) in overrides.items()} or None,
            per_column_threshold={c: t for c, (_, t) in overrides.items()} or None,
            drift_share=drift.drift_share,
        ))
    else:
        metrics.extend(ValueDrift(column=c, method=settings[c][0], threshold=settings[c][1]) for c in features)
    if SCORE_COLUMN in columns:
        metrics.append(ValueDrift(column=SCORE_COLUMN, method=settings[SCORE_COLUMN][0],
                                  threshold=settings[SCORE_COLUMN][1]))
    return Report(metrics, include_tests=True)


def run_drift(config: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame, full: bool = True,
              timestamp: datetime | None = None):
    """Run :func:`drift_report` on the judgeable columns; return ``(snapshot, judged, skipped)``."""
    judged, skipped = _judgeable(config, reference, current)
    if not judged:
        return None, judged, skipped
    ref_ds, cur_ds = _datasets(config, reference, current, judged)
    snapshot = drift_report(config, judged, full=full, calibration=reference_calibration(reference)).run(
        cur_ds, ref_ds, timestamp=timestamp)
    return snapshot, judged, skipped


def evidently_verdicts(snapshot) -> dict[str, dict[str, Any]]:
    """``{column: {method, threshold, score, drifted}}`` read from an Evidently snapshot's
    ``ValueDrift`` results: method/threshold from the metric's config, score from its value,
    drifted from its ``drift`` test (FAIL = drift detected)."""
    out: dict[str, dict[str, Any]] = {}
    for result in snapshot.metric_results.values():
        location = getattr(result, "metric_value_location", None)
        params = location.metric.params if location is not None else {}
        if params.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        tests = [t for t in result.tests if t.id == "drift"]
        if len(tests) != 1:
            raise RuntimeError(f"Evidently gave no drift verdict for column {params.get('column')!r}")
        status = getattr(tests[0].status, "value", tests[0].status)
        out[params["column"]] = {"method": params["method"], "threshold": float(params["threshold"]),
                                 "score": float(result.value), "drifted": status == "FAIL"}
    return out


def evidently_drift_share(snapshot) -> tuple[float | None, bool | None]:
    """``(share, dataset_drift)`` from the preset's ``DriftedColumnsCount`` (None without it)."""
    for result in snapshot.metric_results.values():
        params = result.metric_value_location.metric.params if hasattr(result, "metric_value_location") else {}
        if params.get("type") == "evidently:metric_v2:DriftedColumnsCount":
            status = [getattr(t.status, "value", t.status) for t in result.tests]
            return float(result.share.value), ("FAIL" in status) if status else None
    return None, None


def drift_rows(config: PipelineConfig, snapshot, reference: pd.DataFrame, current: pd.DataFrame,
               judged: list[str]) -> list[dict[str, Any]]:
    """One row per judged column (features in config order, then the prediction) from a snapshot.

    Row: ``feature`` (``"__prediction__"`` for the score), ``method``, ``statistic`` (Evidently's
    drift score: a distance, or the p-value for p-value tests), ``p_value`` (p-value tests only,
    else None), ``threshold``, ``drifted`` (Evidently's verdict), ``current_rows`` /
    ``reference_rows`` (non-null values Evidently compared).
    """
    import numpy as np

    verdicts = evidently_verdicts(snapshot) if snapshot is not None else {}
    expected = column_drift_settings(config, reference_calibration(reference))
    rows = []
    for column in judged:
        v = verdicts.get(column)
        if v is None:
            raise RuntimeError(f"Evidently returned no drift result for column {column!r}")
        if (v["method"], v["threshold"]) != expected[column]:  # never silently judge otherwise
            raise RuntimeError(f"Evidently judged {column!r} with {v['method']}@{v['threshold']}, "
                               f"configured {expected[column][0]}@{expected[column][1]}")
        count = lambda f: int(f[column].replace([np.inf, -np.inf], np.nan).notna().sum())  # noqa: E731
        rows.append({
            "feature": PREDICTION_FEATURE if column == SCORE_COLUMN else column,
            "method": v["method"],
            "statistic": finite_or_none(v["score"]),
            "p_value": finite_or_none(v["score"]) if v["method"] in P_VALUE_METHODS else None,
            "threshold": v["threshold"],
            "drifted": bool(v["drifted"]),
            "current_rows": count(current),
            "reference_rows": count(reference),
        })
    return rows


def fast_drift_rows(config: PipelineConfig, profile: ReferenceProfile,
                    current: pd.DataFrame) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-column drift of ``current`` against a reference ``profile`` by the fast path
    (:mod:`airloop.monitoring.driftstats`, every current row, Evidently's statistics and verdicts).

    Returns ``(rows, skipped)``: rows in :func:`drift_rows`' format (features in config order,
    then the prediction) and the columns that cannot be judged (no non-null value on one side).
    ``threshold: auto`` columns take the thresholds stored in the profile (its ``calibration``);
    a column calibrated as seasonal is scored against the profile's nearest weekday.
    """

    def judge(column: str, method: str, threshold: float) -> dict[str, Any] | None:
        ref = profile.columns.get(column)
        values = current[column] if column in current.columns else None
        cur = None if ref is None or values is None else driftstats.current_data(ref, values)
        if ref is None or ref.n == 0 or cur is None or not len(cur):
            return None
        if column in profile.seasonal and drift_calibration.is_seasonal(profile.calibration, column):
            score = drift_calibration.best_statistic(profile.seasonal[column].values(), cur, method)
            v = driftstats.DriftVerdict(column=column, kind=ref.kind, method=method, threshold=float(threshold),
                                        statistic=score, drifted=driftstats.drifted(method, score, threshold),
                                        current_rows=driftstats._size(cur), reference_rows=ref.n)
        else:
            v = driftstats.verdict(column, ref, cur, method, threshold)
        return {
            "feature": PREDICTION_FEATURE if column == SCORE_COLUMN else column,
            "method": v.method,
            "statistic": finite_or_none(v.statistic),
            "p_value": finite_or_none(v.p_value),
            "threshold": v.threshold,
            "drifted": v.drifted,
            "current_rows": v.current_rows,
            "reference_rows": v.reference_rows,
        }

    settings = column_drift_settings(config, profile.calibration)
    judged = driftstats._in_threads([(judge, c, m, t) for c, (m, t) in settings.items()])  # columns side by side
    rows = [row for row in judged if row is not None]
    skipped = [c for c, row in zip(settings, judged) if row is None]
    return rows, skipped


def drift_table(config: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame,
                profile: ReferenceProfile | None = None) -> list[dict]:
    """Per-feature drift of ``current`` against the reference, by the fast path.

    Both frames hold the feature columns (typed as served) and :data:`SCORE_COLUMN`. Numeric
    features use ``monitoring.drift.numeric``, categorical ``.categorical``, per-column overrides
    ``.columns``, the score ``.prediction``. Returns one row per feature plus one for the
    prediction (``feature="__prediction__"``) — see :func:`drift_rows`; a column without any
    non-null value in either frame cannot be judged and gets no row. ``profile``: the reference's
    stored profile (:func:`load_profile`); built from ``reference`` when not given. Scores and
    verdicts equal Evidently's (:func:`run_drift` + :func:`drift_rows`) for the same data.
    """
    return fast_drift_rows(config, profile or build_reference_profile(config, reference), current)[0]


def drift_summary(config: PipelineConfig, rows: list[dict]) -> dict[str, Any]:
    """Interval-level drift from the rows: share of drifted features (prediction excluded),
    dataset drift (share >= ``drift.drift_share``, Evidently's rule), drifted features, and the
    prediction's drift statistic and verdict."""
    features = [r for r in rows if r["feature"] != PREDICTION_FEATURE]
    prediction = next((r for r in rows if r["feature"] == PREDICTION_FEATURE), None)
    drifted = [r["feature"] for r in features if r["drifted"]]
    share = len(drifted) / len(features) if features else None
    return {
        "drift_share": share,
        "dataset_drift": None if share is None else share >= config.monitoring.drift.drift_share,
        "drifted_features": drifted,
        "prediction_drift": prediction["statistic"] if prediction else None,
        "prediction_drifted": prediction["drifted"] if prediction else None,
    }


def _write_html(snapshot, path: Path) -> Path:
    """Write the snapshot's HTML atomically (``save_html`` only writes when given a ``str``)."""
    with atomic_path(path) as tmp:
        snapshot.save_html(str(tmp))
    return path


def _html_sample(config: PipelineConfig, frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """``frame`` itself, or a seeded (``training.seed``) sample of ``max_rows`` rows in row order."""
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=config.training.seed).sort_index()


def save_drift_report(config: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame, path: Path | str,
                      max_rows: int = HTML_MAX_ROWS, timestamp: datetime | None = None) -> Path | None:
    """Write Evidently's HTML drift report (``DataDriftPreset`` + prediction ``ValueDrift``) to ``path``.

    When ``current`` (or ``reference``) has more than ``max_rows`` (50,000) rows the report is
    drawn from a seeded sample of that many rows (``training.seed``), so it may differ slightly
    from the stored verdicts, which are always computed on every row. Written atomically;
    returns the path, or None when no column could be judged.
    """
    sample = _html_sample(config, reference, max_rows)
    sample.attrs = dict(reference.attrs)  # the calibrated thresholds, if any
    snapshot, _, _ = run_drift(config, sample, _html_sample(config, current, max_rows), full=True, timestamp=timestamp)
    return None if snapshot is None else _write_html(snapshot, Path(path))
