"""Feature matrix and target from a frame, as the pipeline file declares them (training, serving
and monitoring all type features through :func:`coerce_features`)."""

from __future__ import annotations

import pandas as pd

from airloop.core.pipeline import PipelineConfig


class TrainingError(RuntimeError):
    """The study cannot run (bad search space, no data, no completed trial, missing columns)."""


def coerce_features(config: PipelineConfig, frame: pd.DataFrame, *, fill_missing: bool = False) -> pd.DataFrame:
    """The configured feature columns typed as served: numbers as float64, categories as str/None.

    With ``fill_missing`` a missing feature column becomes an all-null column (a request may omit
    a nullable feature: what monitoring reads from the prediction log); otherwise it is a ``KeyError``.
    """
    if fill_missing:
        missing = [c for c in config.features if c not in frame.columns]
        if missing:
            frame = frame.assign(**{c: None for c in missing})
    out = {}
    for column, spec in config.features.items():
        series = frame[column]
        if spec.type == "category":
            out[column] = series.astype(object).where(series.notna(), None).map(
                lambda v: v if v is None else str(v)
            )
        else:
            out[column] = pd.to_numeric(series, errors="coerce").astype("float64")
    return pd.DataFrame(out, index=frame.index)


def features_and_target(config: PipelineConfig, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Split a frame into the configured feature columns (typed) and the target."""
    missing = [c for c in [*config.features, config.target] if c not in frame.columns]
    if missing:
        raise TrainingError(f"{config.name}: columns missing from the training data: {missing}")
    return coerce_features(config, frame[list(config.features)]), frame[config.target]
