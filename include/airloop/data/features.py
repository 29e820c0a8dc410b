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


def category_transformers(config: PipelineConfig) -> list[tuple[str, object, list[str]]]:
    """The ``ColumnTransformer`` entries that encode the category features: impute the most
    frequent value, then one-hot encode with a vocabulary learned from the training data — at
    most ``max_categories`` categories per column (the most frequent), the rest of the training
    values and any value never seen in training sharing one "infrequent" column
    (``OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=max_categories + 1)``;
    a column with no more distinct values than that has no such column: an unseen value encodes
    as all zeros, as ``handle_unknown="ignore"`` would). One entry per distinct cap (``cat``
    for the first, ``cat_<cap>`` for the others). The fitted encoder is the vocabulary the model
    version stores (:func:`airloop.models.schema.learned_vocabulary` reads it back)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    by_cap: dict[int, list[str]] = {}
    for column in config.categorical_features:
        by_cap.setdefault(config.features[column].category_cap, []).append(column)
    entries: list[tuple[str, object, list[str]]] = []
    for cap, columns in by_cap.items():
        encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=cap + 1, sparse_output=False)
        entries.append(("cat" if not entries else f"cat_{cap}",
                        Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("onehot", encoder)]),
                        columns))
    return entries

