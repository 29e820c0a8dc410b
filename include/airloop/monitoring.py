"""Monitoring: drift, performance and operations of one data interval of served predictions.

The monitoring DAG calls :func:`monitor_interval` once per (tenant, interval). It reads the
interval's rows of the ``predictions`` table (and the labels of ``ground_truth``), compares the
served features and scores with the model version's *reference* (its training features as served
plus its score on them, logged with every registered version as ``reference/reference.parquet``),
and stores the outcome in ``feature_drift`` (one row per feature and interval) and
``monitoring_runs`` (one row per interval), keyed by tenant, pipeline and interval start: a re-run
rewrites its own rows and nothing else.

Drift is judged with the methods and thresholds of ``monitoring.drift`` and Evidently's semantics
(0.7: ``DataDriftPreset``/``ValueDrift`` and its stat tests), in two ways:

* the stored verdicts (``feature_drift`` rows, drift share, prediction drift) come from the fast
  path, :mod:`airloop.driftstats`: Evidently's statistics recomputed with numpy on *every* row of
  the interval against the version's reference profile (``reference/profile.npz``, logged with the
  version; the unit tests check score and verdict against Evidently's own stat tests and report);
* the human HTML report is Evidently's own ``Report``, drawn from a seeded sample of at most
  :data:`HTML_MAX_ROWS` rows of each side when the interval (or the reference) is larger.

The two can differ only where the HTML report works on a sample (a score near its threshold may
land on the other side) or, for a reference with more distinct values than the profile keeps
(``driftstats.PROFILE_MAX_POINTS``), by the profile's grid approximation (see driftstats). Only
data of ``[start, end)`` is used: nothing here looks at the wall clock to select rows.

Heavy imports (Evidently, scikit-learn, MLflow) happen inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from airloop.config import ConfigError, PipelineConfig, Settings
from airloop.driftstats import METHOD_KINDS, P_VALUE_METHODS
from airloop.stages import PROFILE_FILE, REFERENCE_DIR, REFERENCE_FILE, SCORE_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import sqlalchemy as sa

    from airloop.driftstats import ReferenceProfile

log = logging.getLogger(__name__)

#: ``feature`` value of the prediction-drift row (drift of the served score).
PREDICTION_FEATURE = "__prediction__"
#: Column types each configurable method accepts in Evidently 0.7 (``StatTest.allowed_feature_types``);
#: :data:`P_VALUE_METHODS` (drift when p is small; the others are distances) comes from driftstats too.
METHOD_TYPES = METHOD_KINDS
#: Above this many rows (current or reference) the HTML report is drawn from a seeded sample of
#: this many rows; the stored verdicts never are.
HTML_MAX_ROWS = 50_000
#: Columns of the predictions frame besides the features (a feature may not use these names).
META_COLUMNS = ("request_id", "ts", "model_version", "variant", "status", "latency_ms", "prediction", SCORE_COLUMN)
#: Metrics the alert rules can test (``AlertRule.metric``), all top-level keys of the summary.
RULE_METRICS = ("drift_share", "prediction_drift", "performance_drop", "volume_ratio", "error_rate", "latency_p95_ms")
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

LabelPolicy = Literal["arrived", "served"]


# ============================================================================ helpers
def _utc(value: datetime | str) -> datetime:
    """A datetime (or ISO string) as tz-aware UTC; naive values are taken as UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, NaN or infinite (JSON- and SQL-safe)."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _json(value: Any) -> str | None:
    """Deterministic JSON text (sorted keys) or None."""
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def coerce_features(config: PipelineConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The configured feature columns typed as served: numbers as float64, categories as str/None.

    Missing feature columns become all-null columns (a request may omit a nullable feature).
    """
    from airloop.training import coerce_features as _coerce

    missing = [c for c in config.features if c not in frame.columns]
    if missing:
        frame = frame.assign(**{c: None for c in missing})
    return _coerce(config, frame)


# ============================================================================ drift
def column_drift_settings(config: PipelineConfig) -> dict[str, tuple[str, float]]:
    """``{column: (method, threshold)}`` for every feature and the score column, as configured:
    ``drift.numeric`` / ``drift.categorical`` by feature type, ``drift.columns`` overrides, and
    ``drift.prediction`` for :data:`SCORE_COLUMN`. Raises :class:`ConfigError` when a method does
    not apply to its column's type in Evidently (e.g. ``ks`` on a category)."""
    drift = config.monitoring.drift
    unknown = sorted(set(drift.columns) - set(config.features))
    if unknown:
        raise ConfigError(f"{config.name}: monitoring.drift.columns names unknown features: {unknown}")
    out: dict[str, tuple[str, float]] = {}
    for column, spec in config.features.items():
        kind = "cat" if spec.type == "category" else "num"
        chosen = drift.columns.get(column) or (drift.categorical if kind == "cat" else drift.numeric)
        if kind not in METHOD_TYPES[chosen.method]:
            raise ConfigError(f"{config.name}: drift method {chosen.method!r} does not apply to "
                              f"{'categorical' if kind == 'cat' else 'numeric'} feature {column!r}")
        out[column] = (chosen.method, float(chosen.threshold))
    out[SCORE_COLUMN] = (drift.prediction.method, float(drift.prediction.threshold))
    if "num" not in METHOD_TYPES[drift.prediction.method]:
        raise ConfigError(f"{config.name}: drift method {drift.prediction.method!r} does not apply to the numeric score")
    return out


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


def drift_report(config: PipelineConfig, columns: list[str], full: bool = True):
    """The Evidently ``Report`` judging ``columns`` (features and/or :data:`SCORE_COLUMN`).

    ``full=True``: ``DataDriftPreset(columns=<features>, num_method=, num_threshold=, cat_method=,
    cat_threshold=, per_column_method=, per_column_threshold=, drift_share=)`` plus a
    ``ValueDrift(column="__score__", method=, threshold=)`` for the prediction — the preset expands
    into one ``ValueDrift`` per feature with exactly those settings, plus ``DriftedColumnsCount``
    and the dataset-drift / drift-table widgets of the HTML report.
    ``full=False``: only the ``ValueDrift`` metrics (same verdicts, no dataset-level widgets:
    about half the run time). Tests are always on: each ``ValueDrift`` carries Evidently's
    ``drift`` test, whose FAIL status is the verdict read by :func:`drift_rows`.
    """
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    settings = column_drift_settings(config)
    features = [c for c in columns if c != SCORE_COLUMN]
    metrics: list[Any] = []
    if full and features:
        drift = config.monitoring.drift
        overrides = {c: settings[c] for c in features if c in drift.columns}
        metrics.append(DataDriftPreset(
            columns=features,
            num_method=drift.numeric.method, num_threshold=drift.numeric.threshold,
            cat_method=drift.categorical.method, cat_threshold=drift.categorical.threshold,
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
    snapshot = drift_report(config, judged, full=full).run(cur_ds, ref_ds, timestamp=timestamp)
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
    expected = column_drift_settings(config)
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
            "statistic": _finite(v["score"]),
            "p_value": _finite(v["score"]) if v["method"] in P_VALUE_METHODS else None,
            "threshold": v["threshold"],
            "drifted": bool(v["drifted"]),
            "current_rows": count(current),
            "reference_rows": count(reference),
        })
    return rows


def _drift_columns(config: PipelineConfig) -> tuple[list[str], list[str]]:
    """``(numeric, categorical)`` drift columns: numeric features plus :data:`SCORE_COLUMN`,
    categorical features (the column types Evidently is given, see :func:`_datasets`)."""
    numeric = [c for c, spec in config.features.items() if spec.type != "category"] + [SCORE_COLUMN]
    categorical = [c for c, spec in config.features.items() if spec.type == "category"]
    return numeric, categorical


def build_reference_profile(config: PipelineConfig, reference: pd.DataFrame) -> ReferenceProfile:
    """The drift profile (:class:`airloop.driftstats.ReferenceProfile`) of a reference frame:
    every feature and :data:`SCORE_COLUMN`, typed as Evidently types them here."""
    from airloop import driftstats

    numeric, categorical = _drift_columns(config)
    frame = reference if all(c in reference.columns for c in [*numeric, *categorical]) else \
        reference.reindex(columns=[*numeric, *categorical])
    return driftstats.build_profile(frame, numeric, categorical)


def fast_drift_rows(config: PipelineConfig, profile: ReferenceProfile,
                    current: pd.DataFrame) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-column drift of ``current`` against a reference ``profile`` by the fast path
    (:mod:`airloop.driftstats`, every current row, Evidently's statistics and verdicts).

    Returns ``(rows, skipped)``: rows in :func:`drift_rows`' format (features in config order,
    then the prediction) and the columns that cannot be judged (no non-null value on one side).
    """
    from airloop import driftstats

    rows, skipped = [], []
    for column, (method, threshold) in column_drift_settings(config).items():
        ref = profile.columns.get(column)
        values = current[column] if column in current.columns else None
        cur = None if ref is None or values is None else driftstats.current_data(ref, values)
        if ref is None or ref.n == 0 or cur is None or not len(cur):
            skipped.append(column)
            continue
        v = driftstats.verdict(column, ref, cur, method, threshold)
        rows.append({
            "feature": PREDICTION_FEATURE if column == SCORE_COLUMN else column,
            "method": v.method,
            "statistic": _finite(v.statistic),
            "p_value": _finite(v.p_value),
            "threshold": v.threshold,
            "drifted": v.drifted,
            "current_rows": v.current_rows,
            "reference_rows": v.reference_rows,
        })
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        snapshot.save_html(str(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
    snapshot, _, _ = run_drift(config, _html_sample(config, reference, max_rows), _html_sample(config, current, max_rows),
                               full=True, timestamp=timestamp)
    return None if snapshot is None else _write_html(snapshot, Path(path))


# ============================================================================ performance
def _to_class(value: Any, classes: dict[str, Any]) -> Any:
    """A served prediction or label (decoded JSON) as one of the configured classes, else None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return classes.get(str(value))


def performance(config: PipelineConfig, labelled: pd.DataFrame) -> dict:
    """Quality of the served predictions on labelled rows (``prediction`` and ``label`` columns
    hold decoded JSON values, :data:`SCORE_COLUMN` the served score).

    Classification: accuracy, f1_macro, balanced_accuracy; binary adds f1/precision/recall of the
    positive class (``classes[-1]``) and, from the score, roc_auc, pr_auc, log_loss, brier (None
    when only one class is present). Regression: rmse, mae, r2 from the served value. The study
    metric (``training.metric``, an sklearn scorer name) is added when computable, else None.
    ``rows`` counts the rows used (labels or predictions outside the classes are left out and
    counted in ``unusable_rows``).
    """
    import numpy as np
    import pandas as pd
    from sklearn import metrics as m

    out: dict[str, Any] = {}
    if config.task == "regression":
        y = pd.to_numeric(labelled["label"], errors="coerce")
        pred = pd.to_numeric(labelled[SCORE_COLUMN], errors="coerce")
        ok = y.notna() & pred.notna()
        y, pred = y[ok].to_numpy(float), pred[ok].to_numpy(float)
        out["rows"], out["unusable_rows"] = int(ok.sum()), int((~ok).sum())
        if len(y):
            mse = float(m.mean_squared_error(y, pred))
            out |= {"rmse": math.sqrt(mse), "mae": float(m.mean_absolute_error(y, pred)),
                    "r2": float(m.r2_score(y, pred)) if len(y) > 1 else None}
            scorers = {"neg_root_mean_squared_error": -out["rmse"], "neg_mean_absolute_error": -out["mae"],
                       "neg_mean_squared_error": -mse, "r2": out["r2"]}
        else:
            scorers = {}
    else:
        classes = {str(c): c for c in config.classes or []}
        y = labelled["label"].map(lambda v: _to_class(v, classes))
        pred = labelled["prediction"].map(lambda v: _to_class(v, classes))
        ok = y.notna() & pred.notna()
        y, pred = list(y[ok]), list(pred[ok])
        out["rows"], out["unusable_rows"] = int(ok.sum()), int((~ok).sum())
        scorers = {}
        if y:
            labels = list(config.classes or [])
            out |= {"accuracy": float(m.accuracy_score(y, pred)),
                    "f1_macro": float(m.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
                    "balanced_accuracy": float(m.balanced_accuracy_score(y, pred))}
            scorers |= {"accuracy": out["accuracy"], "f1_macro": out["f1_macro"],
                        "balanced_accuracy": out["balanced_accuracy"]}
        if y and config.task == "binary_classification":
            positive = config.classes[-1]
            out |= {"f1": float(m.f1_score(y, pred, pos_label=positive, zero_division=0)),
                    "precision": float(m.precision_score(y, pred, pos_label=positive, zero_division=0)),
                    "recall": float(m.recall_score(y, pred, pos_label=positive, zero_division=0)),
                    "roc_auc": None, "pr_auc": None, "log_loss": None, "brier": None}
            score = pd.to_numeric(labelled.loc[ok, SCORE_COLUMN], errors="coerce")
            has = score.notna().to_numpy()
            y_pos = np.array([v == positive for v in y])[has].astype(int)
            s = score.to_numpy(float)[has]
            if len(s) and len(np.unique(y_pos)) == 2:
                out |= {"roc_auc": float(m.roc_auc_score(y_pos, s)),
                        "pr_auc": float(m.average_precision_score(y_pos, s)),
                        "log_loss": float(m.log_loss(y_pos, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1])),
                        "brier": float(m.brier_score_loss(y_pos, s))}
            scorers |= {"f1": out["f1"], "precision": out["precision"], "recall": out["recall"],
                        "roc_auc": out["roc_auc"], "average_precision": out["pr_auc"],
                        "neg_log_loss": None if out["log_loss"] is None else -out["log_loss"],
                        "neg_brier_score": None if out["brier"] is None else -out["brier"]}
    metric = config.training.metric
    out[metric] = out.get(metric, scorers.get(metric))
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in out.items()}


def performance_drop(metric: str, current: float, reference: float) -> float:
    """Relative drop of ``metric`` from the version's holdout ``reference`` to ``current``:
    positive = worse, for higher-is-better metrics ``(reference - current) / |reference|`` and for
    :data:`airloop.evaluation.LOWER_IS_BETTER` ones ``(current - reference) / |reference|``.
    A zero reference gives 0 when unchanged, else +/-inf."""
    from airloop.evaluation import LOWER_IS_BETTER

    worse_by = (current - reference) if metric in LOWER_IS_BETTER else (reference - current)
    if reference == 0:
        return 0.0 if worse_by == 0 else math.copysign(math.inf, worse_by)
    return float(worse_by / abs(reference))


# ============================================================================ operations
def operations(pred_rows: pd.DataFrame, baseline_counts: list[int]) -> dict:
    """Traffic health of an interval: ``volume`` (prediction rows, errors included),
    ``volume_ratio`` (volume / mean of ``baseline_counts``; None without a non-zero baseline),
    ``error_rate`` (share of rows with status ``error``; None without rows), ``latency_p50_ms`` /
    ``latency_p95_ms`` (over rows with a latency; None without)."""
    import numpy as np
    import pandas as pd

    volume = int(len(pred_rows))
    baseline = float(np.mean(baseline_counts)) if len(baseline_counts) else 0.0
    latency = pd.to_numeric(pred_rows["latency_ms"], errors="coerce").dropna() if volume else pd.Series(dtype=float)
    return {
        "volume": volume,
        "baseline_mean": baseline if len(baseline_counts) else None,
        "volume_ratio": volume / baseline if baseline > 0 else None,
        "error_rate": float((pred_rows["status"] == "error").mean()) if volume else None,
        "latency_p50_ms": float(np.percentile(latency, 50)) if len(latency) else None,
        "latency_p95_ms": float(np.percentile(latency, 95)) if len(latency) else None,
    }


# ============================================================================ store reads
def _expand(config: PipelineConfig, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Prediction rows (store mappings) as a frame: meta columns, decoded JSON, typed features."""
    import pandas as pd

    clash = sorted(set(config.features) & set(META_COLUMNS))
    if clash:
        raise ConfigError(f"{config.name}: feature names clash with prediction columns: {clash}")
    records = []
    for row in rows:
        features = json.loads(row["features"]) if row["features"] else {}
        records.append(features if isinstance(features, dict) else {})
    raw = pd.DataFrame.from_records(records, columns=list(config.features)) if records else \
        pd.DataFrame(columns=list(config.features))
    feats = coerce_features(config, raw.reset_index(drop=True))
    meta = pd.DataFrame({
        "request_id": [r["request_id"] for r in rows],
        "ts": pd.to_datetime([r["ts"] for r in rows], utc=True) if rows else pd.to_datetime([], utc=True),
        "model_version": [r["model_version"] for r in rows],
        "variant": [r["variant"] for r in rows],
        "status": [r["status"] for r in rows],
        "latency_ms": pd.to_numeric(pd.Series([r["latency_ms"] for r in rows], dtype=object), errors="coerce"),
        "prediction": [json.loads(r["prediction"]) if r["prediction"] is not None else None for r in rows],
        SCORE_COLUMN: pd.to_numeric(pd.Series([r["score"] for r in rows], dtype=object), errors="coerce"),
    }, index=range(len(rows)))
    out = pd.concat([meta, feats], axis=1)
    if rows and "label" in rows[0]:
        out["label"] = [json.loads(r["label"]) if r["label"] is not None else None for r in rows]
        out["label_ts"] = pd.to_datetime([r["label_ts"] for r in rows], utc=True)
    return out


def load_interval(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime, end: datetime, *,
                  labels: LabelPolicy = "arrived", labelled_version: str | None = None,
                  label_window: timedelta | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interval's prediction rows and its labelled rows, from the monitoring store.

    ``predictions_frame``: every ``predictions`` row of ``tenant`` and this pipeline with
    ``start <= ts < end`` (errors included), ordered by ts and request id, with columns
    :data:`META_COLUMNS` (``prediction`` decoded from JSON, the score as :data:`SCORE_COLUMN`)
    plus one column per configured feature, expanded from the features JSON and typed as served.

    ``labelled_frame``: ``ok`` predictions joined with ``ground_truth`` (same request id, tenant,
    pipeline), plus ``label`` (decoded) and ``label_ts``. Which labels belong to the interval:

    * ``labels="arrived"`` (default): labels whose ``label_ts`` falls in ``[start, end)``, with
      their predictions (served before ``end``). Labels arrive days after the prediction, so this
      is what makes performance measurable per interval; over consecutive intervals every label
      counts exactly once.
    * ``labels="served"``: predictions served in ``[start, end)`` whose label was known before
      ``end`` (strict point-in-time view; usually empty for daily intervals and delayed labels).

    ``label_window`` (with ``"arrived"``) widens the label window to ``[end - label_window, end)``:
    performance over a trailing week of arrivals instead of one day's handful of labels (with rare
    positives a single day's AUC is noise).

    ``labelled_version`` keeps only labelled rows served by that model version (performance is
    compared with that version's holdout). Both reads are parameterised SQLAlchemy Core queries.
    """
    import pandas as pd
    import sqlalchemy as sa

    from airloop.store import ground_truth, predictions

    start, end = _utc(start), _utc(end)
    p, g = predictions, ground_truth
    cols = [p.c.request_id, p.c.ts, p.c.model_version, p.c.variant, p.c.features, p.c.prediction, p.c.score,
            p.c.latency_ms, p.c.status]
    mine = sa.and_(p.c.tenant == tenant, p.c.pipeline == config.name)
    query = sa.select(*cols).where(mine, p.c.ts >= start, p.c.ts < end).order_by(p.c.ts, p.c.request_id)
    joined = p.join(g, sa.and_(g.c.request_id == p.c.request_id, g.c.tenant == p.c.tenant,
                               g.c.pipeline == p.c.pipeline))
    lq = sa.select(*cols, g.c.label, g.c.label_ts).select_from(joined).where(mine, p.c.status == "ok")
    if labels == "arrived":
        since = end - label_window if label_window is not None else start
        lq = lq.where(g.c.label_ts >= since, g.c.label_ts < end, p.c.ts < end)
    elif labels == "served":
        lq = lq.where(p.c.ts >= start, p.c.ts < end, g.c.label_ts < end)
    else:
        raise ValueError(f"labels must be 'arrived' or 'served', not {labels!r}")
    if labelled_version is not None:
        lq = lq.where(p.c.model_version == str(labelled_version))
    lq = lq.order_by(p.c.ts, p.c.request_id)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
        lrows = [dict(r) for r in conn.execute(lq).mappings()]
    frame = _expand(config, rows)
    labelled = _expand(config, lrows)
    if not lrows:
        labelled = labelled.assign(label=pd.Series(dtype=object), label_ts=pd.to_datetime([], utc=True))
    return frame, labelled


def baseline_windows(start: datetime, days: int, period: timedelta = timedelta(days=1)) -> list[tuple[datetime, datetime]]:
    """The trailing windows, oldest first, that form the volume baseline of an interval starting
    at ``start`` and lasting ``period``: for periods up to a day, the same window on each of the
    ``days`` previous days (so hourly intervals compare with the same hour); for longer periods,
    the ``max(1, days // period_days)`` previous periods."""
    start = _utc(start)
    if period <= timedelta(days=1):
        step, n = timedelta(days=1), days
    else:
        step, n = period, max(1, days // max(1, period.days))
    return [(start - k * step, start - k * step + period) for k in range(n, 0, -1)]


def trailing_volumes(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime, days: int,
                     period: timedelta = timedelta(days=1)) -> list[int]:
    """Prediction rows (errors included) of ``tenant`` in each :func:`baseline_windows` window
    before ``start``, oldest first; windows without traffic count 0."""
    import sqlalchemy as sa

    from airloop.store import predictions as p

    windows = baseline_windows(start, days, period)
    counts = []
    with engine.connect() as conn:
        for a, b in windows:  # one indexed COUNT per window (portable; a handful of windows)
            query = sa.select(sa.func.count()).select_from(p).where(
                p.c.tenant == tenant, p.c.pipeline == config.name, p.c.ts >= a, p.c.ts < b)
            counts.append(int(conn.execute(query).scalar_one()))
    return counts


# ============================================================================ reference
def reference_cache_path(settings: Settings, config: PipelineConfig, version: str | int) -> Path:
    """Local copy of a version's reference: ``<state_dir>/references/<pipeline>/<version>/reference.parquet``."""
    return Path(settings.state_dir) / "references" / config.name / str(version) / REFERENCE_FILE


def _version_artifact(client_or_settings: Any, config: PipelineConfig, version: str | int, cache: Path,
                      name: str) -> bool:
    """Make sure ``cache`` holds the file ``name`` of the version's reference folder (the folder
    of its ``airloop.reference_artifact`` tag, default ``reference/``), downloading it once from
    the version's MLflow run (atomic: a concurrent reader sees the whole file or none).

    ``cache`` is resolved by the caller from ``settings``. Returns False when the run has no such
    artifact (only asked when ``name`` is not the reference itself, which must exist)."""
    if cache.is_file():
        return True
    if isinstance(client_or_settings, Settings):
        from airloop import registry

        client = registry.get_client(client_or_settings)
    else:
        client = client_or_settings
    mv = client.get_model_version(config.model_name, str(version))
    if not getattr(mv, "run_id", None):
        raise LookupError(f"{config.model_name} v{version} has no MLflow run: no drift reference")
    reference = (getattr(mv, "tags", None) or {}).get("airloop.reference_artifact") or f"{REFERENCE_DIR}/{REFERENCE_FILE}"
    folder = reference.rpartition("/")[0]
    artifact = reference if name == REFERENCE_FILE else (f"{folder}/{name}" if folder else name)
    if artifact != reference and artifact not in {a.path for a in client.list_artifacts(mv.run_id, folder or None)}:
        return False
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".download-") as tmp:
        os.replace(client.download_artifacts(mv.run_id, artifact, tmp), cache)
    log.info("%s of %s v%s cached at %s", name, config.model_name, version, cache)
    return True


def _settings_of(client_or_settings: Any, settings: Settings | None) -> Settings:
    from airloop.config import get_settings

    return client_or_settings if isinstance(client_or_settings, Settings) else settings or get_settings()


def load_reference(client_or_settings: Any, config: PipelineConfig, version: str | int,
                   settings: Settings | None = None) -> pd.DataFrame:
    """The drift reference of model ``version``: features typed as served plus :data:`SCORE_COLUMN`.

    Downloaded once from the version's MLflow run (``run_id`` of the model version; artifact
    ``reference/reference.parquet``, or the path in its ``airloop.reference_artifact`` tag) and
    cached on local disk under ``settings.state_dir/references/<pipeline>/<version>/`` — a
    version's reference is immutable, so a cached copy is used without asking MLflow. Pass
    :class:`Settings` (a client is made from it) or an ``MlflowClient`` (then ``settings`` gives
    the cache folder; default :func:`airloop.config.get_settings`).
    """
    import pandas as pd

    cache = reference_cache_path(_settings_of(client_or_settings, settings), config, version)
    _version_artifact(client_or_settings, config, version, cache, REFERENCE_FILE)
    frame = pd.read_parquet(cache)
    missing = [c for c in [*config.features, SCORE_COLUMN] if c not in frame.columns]
    if missing:
        raise ValueError(f"reference of {config.model_name} v{version} ({cache}) lacks columns {missing}")
    out = coerce_features(config, frame)
    out[SCORE_COLUMN] = pd.to_numeric(frame[SCORE_COLUMN], errors="coerce").astype("float64")
    return out


def profile_cache_path(settings: Settings, config: PipelineConfig, version: str | int) -> Path:
    """Local copy of a version's drift profile, next to its cached reference."""
    return reference_cache_path(settings, config, version).with_name(PROFILE_FILE)


def load_profile(client_or_settings: Any, config: PipelineConfig, version: str | int,
                 settings: Settings | None = None) -> ReferenceProfile:
    """The drift profile of model ``version`` (:class:`airloop.driftstats.ReferenceProfile`).

    Downloaded once from the version's MLflow run (``profile.npz`` next to the reference
    artifact) and cached under ``settings.state_dir/references/<pipeline>/<version>/`` like
    :func:`load_reference`. A version logged before profiles existed has none: its profile is
    then built from its reference (:func:`load_reference`) and cached the same way. Arguments
    as :func:`load_reference`.
    """
    from airloop import driftstats

    cache = profile_cache_path(_settings_of(client_or_settings, settings), config, version)
    if not _version_artifact(client_or_settings, config, version, cache, PROFILE_FILE):
        reference = load_reference(client_or_settings, config, version, settings=settings)
        build_reference_profile(config, reference).save(cache)
        log.info("%s v%s has no logged drift profile: built from its reference, cached at %s",
                 config.model_name, version, cache)
    return driftstats.ReferenceProfile.load(cache)


def load_reference_metrics(client_or_settings: Any, config: PipelineConfig, version: str | int) -> dict[str, float]:
    """The version's holdout metrics (its run's ``holdout_<name>`` metrics, as ``{name: value}``)."""
    from airloop import registry

    client = registry.get_client(client_or_settings) if isinstance(client_or_settings, Settings) else client_or_settings
    mv = client.get_model_version(config.model_name, str(version))
    metrics = client.get_run(mv.run_id).data.metrics
    return {k.removeprefix("holdout_"): float(v) for k, v in sorted(metrics.items()) if k.startswith("holdout_")}


# ============================================================================ rules
def _fmt(value: float) -> str:
    return f"{value:.4g}"


def evaluate_rules(config: PipelineConfig, summary: dict) -> list[dict]:
    """Apply ``monitoring.alerts`` to an interval summary; return the rules that fire.

    A rule ``metric op value`` fires when ``summary[metric]`` is a finite number satisfying it.
    A metric absent from the summary or None (drift not judged, too few labels, no baseline)
    never fires. Each alert: ``rule``, ``metric``, ``op``, ``threshold``, ``observed``,
    ``severity``, ``retrain`` and a ``message`` naming the metric, the observed value and the
    threshold — and, for drift rules, the drifted features (``drifted_features`` of the summary)
    or the prediction's drift method.
    """
    fired = []
    for rule in config.monitoring.alerts:
        observed = _finite(summary.get(rule.metric))
        if observed is None or not _OPS[rule.op](observed, rule.value):
            continue
        message = f"{rule.name}: {rule.metric} = {_fmt(observed)} {rule.op} {_fmt(rule.value)}"
        details: dict[str, Any] = {}
        if rule.metric == "drift_share":
            drifted = list(summary.get("drifted_features") or [])
            details["drifted_features"] = drifted
            message += f"; drifted features: {', '.join(drifted) if drifted else 'none'}"
        elif rule.metric == "prediction_drift":
            prediction = config.monitoring.drift.prediction
            details["method"] = prediction.method
            message += f"; prediction score drift ({prediction.method}, drift threshold {_fmt(prediction.threshold)})"
        elif rule.metric == "performance_drop":
            metric = summary.get("metric") or config.training.metric
            details |= {"metric": metric, "current": (summary.get("performance") or {}).get(metric),
                        "reference": (summary.get("reference_performance") or {}).get(metric)}
            if details["current"] is not None and details["reference"] is not None:
                message += f"; {metric} {_fmt(details['current'])} vs holdout {_fmt(details['reference'])}"
        fired.append({"rule": rule.name, "metric": rule.metric, "op": rule.op, "threshold": rule.value,
                      "observed": observed, "severity": rule.severity, "retrain": rule.retrain,
                      "message": message, "details": details})
    return fired


# ============================================================================ one interval
def _report_path(report_dir: Path | str, config: PipelineConfig, tenant: str, start: datetime) -> Path:
    safe_tenant = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tenant)
    return Path(report_dir) / config.name / safe_tenant / f"drift_{start:%Y%m%dT%H%M%SZ}.html"


def _store_interval(engine: sa.Engine, key: dict[str, Any], drift: list[dict[str, Any]], run: dict[str, Any]) -> None:
    """Upsert the interval's rows in one transaction; drop this interval's stale feature rows."""
    import sqlalchemy as sa

    from airloop.store import _dialect_insert, feature_drift, monitoring_runs

    def upsert(conn, table, rows):
        if not rows:
            return
        keys = [c.name for c in table.primary_key.columns]
        stmt = _dialect_insert(conn, table)
        stmt = stmt.on_conflict_do_update(index_elements=keys,
                                          set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys})
        conn.execute(stmt, rows)

    fd = feature_drift
    with engine.begin() as conn:
        stale = sa.delete(fd).where(fd.c.tenant == key["tenant"], fd.c.pipeline == key["pipeline"],
                                    fd.c.interval_start == key["interval_start"])
        if drift:
            stale = stale.where(fd.c.feature.not_in([r["feature"] for r in drift]))
        conn.execute(stale)
        upsert(conn, fd, [key | r for r in drift])
        upsert(conn, monitoring_runs, [key | run])


def monitor_interval(config: PipelineConfig, settings: Settings, tenant: str, start: datetime, end: datetime,
                     model_version: str | int | None, reference: pd.DataFrame, report_dir: Path | str, *,
                     reference_metrics: dict[str, float] | None = None, engine: sa.Engine | None = None,
                     labels: LabelPolicy = "arrived", profile: ReferenceProfile | None = None) -> dict:
    """Monitor one interval ``[start, end)`` of ``tenant``'s traffic and store the outcome.

    1. :func:`load_interval` (labelled rows restricted to ``model_version``).
    2. Drift of the ``ok`` rows when there are at least ``drift.min_rows`` of them: the verdicts
       by the fast path (:func:`fast_drift_rows`, every row) against ``profile`` (the version's
       stored profile, :func:`load_profile`; built from ``reference`` when not given), the HTML
       report by Evidently under ``report_dir`` (:func:`save_drift_report`: a seeded sample of
       each side above :data:`HTML_MAX_ROWS` rows); otherwise drift is recorded as not judged
       (``drift_share``/``drifted_features``/``report_uri`` NULL).
    3. :func:`performance` when at least ``monitoring.min_labelled_rows`` labelled rows, and
       :func:`performance_drop` of the study metric vs ``reference_metrics`` (the version's
       holdout metrics, :func:`load_reference_metrics`) when given.
    4. :func:`operations` against :func:`trailing_volumes` (``volume_baseline_days``).
    5. :func:`evaluate_rules`; the reasons of fired ``retrain`` rules go to ``retrain_reason``
       (whether a retrain is requested — cool-down — is decided by the caller).
    6. Upsert ``feature_drift`` rows and the ``monitoring_runs`` row keyed by (tenant, pipeline,
       interval_start) in one transaction: a re-run overwrites its own rows (and removes feature
       rows it no longer produces) and changes nothing else. Same store contents and reference →
       identical stored rows.

    Returns a JSON-serialisable summary (no frames): the rule metrics at the top level
    (``drift_share``, ``prediction_drift``, ``performance_drop``, ``volume_ratio``, ``error_rate``,
    ``latency_p95_ms``), the fired ``alerts`` and the stored values.
    """
    from airloop import store

    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"empty interval: start {start} >= end {end}")
    mon = config.monitoring
    engine = engine or store.get_engine(settings.monitoring_db_uri)
    version = None if model_version is None else str(model_version)

    frame, labelled = load_interval(engine, config, tenant, start, end, labels=labels, labelled_version=version,
                                    label_window=timedelta(days=config.monitoring.performance_window_days))
    ok = frame[frame["status"] == "ok"]
    current = ok[[*config.features, SCORE_COLUMN]].reset_index(drop=True)

    # -- drift
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    report_uri = None
    if len(current) >= mon.drift.min_rows:
        rows, skipped = fast_drift_rows(config, profile or build_reference_profile(config, reference), current)
        written = save_drift_report(config, reference, current, _report_path(report_dir, config, tenant, start),
                                    timestamp=end) if rows else None
        report_uri = str(written) if written else None
        drift = drift_summary(config, rows) | {"drift_judged": bool(rows), "drift_reason": None if rows else
                                               "no column has values on both sides"}
    else:
        drift = {"drift_share": None, "dataset_drift": None, "drifted_features": None, "prediction_drift": None,
                 "prediction_drifted": None, "drift_judged": False,
                 "drift_reason": f"{len(current)} ok rows < drift.min_rows {mon.drift.min_rows}: drift not judged"}

    # -- performance
    metric = config.training.metric
    perf = None
    drop = None
    if len(labelled) >= mon.min_labelled_rows:
        perf = performance(config, labelled)
        if perf.get("rows", 0) < mon.min_labelled_rows:
            perf = None
    ref_perf = {k: _finite(v) for k, v in sorted((reference_metrics or {}).items())} or None
    if perf is not None and ref_perf is not None and perf.get(metric) is not None and ref_perf.get(metric) is not None:
        drop = _finite(performance_drop(metric, perf[metric], ref_perf[metric]))

    # -- operations
    ops = operations(frame, trailing_volumes(engine, config, tenant, start, mon.volume_baseline_days, end - start))

    summary: dict[str, Any] = {
        "tenant": tenant, "pipeline": config.name, "interval_start": start.isoformat(),
        "interval_end": end.isoformat(), "model_version": version, "rows": int(len(frame)), "ok_rows": int(len(ok)),
        **drift, "unjudged_features": [PREDICTION_FEATURE if c == SCORE_COLUMN else c for c in skipped],
        "labelled_rows": int(len(labelled)), "performance_judged": perf is not None,
        "performance": perf, "reference_performance": ref_perf, "metric": metric, "performance_drop": drop,
        **{k: _finite(v) if isinstance(v, float) else v for k, v in ops.items()},
        "report_uri": report_uri,
    }
    alerts = evaluate_rules(config, summary)
    retrain = [a["message"] for a in alerts if a["retrain"]]
    summary |= {"alerts": alerts, "retrain": bool(retrain), "retrain_reason": "; ".join(retrain) or None}

    key = {"tenant": tenant, "pipeline": config.name, "interval_start": start}
    drift_db = [r | {"interval_end": end, "model_version": version} for r in rows]
    run_db = {
        "interval_end": end, "model_version": version, "rows": summary["rows"],
        "drift_share": _finite(summary["drift_share"]),
        "drifted_features": _json(summary["drifted_features"]),
        "prediction_drift": _finite(summary["prediction_drift"]),
        "labelled_rows": summary["labelled_rows"], "performance": _json(perf),
        "reference_performance": _json(ref_perf), "volume_ratio": summary["volume_ratio"],
        "error_rate": summary["error_rate"], "latency_p50_ms": summary["latency_p50_ms"],
        "latency_p95_ms": summary["latency_p95_ms"], "report_uri": report_uri,
        "retrain_reason": summary["retrain_reason"],
    }
    _store_interval(engine, key, drift_db, run_db)
    log.info("monitored %s/%s [%s, %s): %s rows, drift %s, %s labelled, %s alerts", config.name, tenant,
             start.isoformat(), end.isoformat(), summary["rows"],
             summary["drifted_features"] if drift["drift_judged"] else "not judged", summary["labelled_rows"],
             len(alerts))
    return summary
