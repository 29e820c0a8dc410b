"""Integrity expectations of the validation gate: what a schema check misses.

Added to every pipeline's derived suite (:func:`airloop.data.validation.build_suite`), as GX
expectations so they show in Data Docs, with per-day runtime parameters
(:func:`day_parameters`):

* **timestamps inside the partition's day**: ``expect_column_values_to_be_between`` on the
  timestamp column with ``[day 00:00 UTC, next day 00:00 UTC)``. Dated file partitions
  (``dt={date}``) hold whatever the export wrote; unpartitioned and SQL sources are split by
  the timestamp's day, so there it holds by construction.
* **no whole-row duplicates**: ``expect_compound_columns_to_be_unique`` over the pipeline's
  columns, ``mostly = 1 - validation.max_duplicate_fraction`` (GX counts every copy of a
  repeated row). Id uniqueness stays an explicit expectation of the pipeline file.
* **classification, no class missing from a day that should have it**:
  ``expect_column_distinct_values_to_contain_set`` on the target with the classes the day must
  hold (:func:`expected_classes`).

Why the class check is statistical, per day: a day without positives is normal for rare
positives and small days, so "at least 2 classes per partition" would quarantine healthy days
(0.5 % positives, 100 rows: 61 % of days have none). What is a fault is a day missing a class
the rest of the window makes near-certain: with share ``p`` among the other days' labels, ``n``
labelled rows have none with probability ``(1 - p) ** n``; below ``validation.class_absence_p``
(default 1e-6) the day is judged broken (~5 % fraud, ~400 rows: 1e-9: an export that lost the
label). The history is the window's own other days, so a backfill judges a day as the scheduled
run did. Separately, :func:`window_class_problem` refuses a window whose labels known by the
as-of day are all one class: a classifier cannot be trained on it, whatever each day says.

A file that cannot be read at all (empty, not CSV/Parquet, not UTF-8) never reaches GX: see
:class:`airloop.data.sources.UnreadableFile`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pandas as pd

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings

#: Runtime parameters of the partition-day bounds of the timestamp column.
DAY_START_PARAMETER = "partition_day_start"
DAY_END_PARAMETER = "partition_day_end"
#: Runtime parameter: the classes a day's target must contain (:func:`expected_classes`).
CLASSES_PARAMETER = "partition_expected_classes"

IN_DAY = "expect_column_values_to_be_between"
NO_DUPLICATE_ROWS = "expect_compound_columns_to_be_unique"
HAS_CLASSES = "expect_column_distinct_values_to_contain_set"


def is_classification(config: PipelineConfig) -> bool:
    return config.task != "regression"


def row_columns(config: PipelineConfig) -> list[str]:
    """The columns a whole-row duplicate is judged on: every column the pipeline reads."""
    named = [config.timestamp, config.id_column, config.target, config.label_timestamp, *config.features]
    return list(dict.fromkeys(c for c in named if c))


def integrity_expectations(config: PipelineConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(type, kwargs)`` of the integrity expectations of ``config`` (see the module doc)."""
    out: list[tuple[str, dict[str, Any]]] = [
        (IN_DAY, {"column": config.timestamp, "min_value": {"$PARAMETER": DAY_START_PARAMETER},
                  "max_value": {"$PARAMETER": DAY_END_PARAMETER}, "strict_max": True}),
    ]
    unique: dict[str, Any] = {"column_list": row_columns(config)}
    if config.validation.max_duplicate_fraction > 0:
        unique["mostly"] = round(1.0 - config.validation.max_duplicate_fraction, 10)
    out.append((NO_DUPLICATE_ROWS, unique))
    if is_classification(config):
        out.append((HAS_CLASSES, {"column": config.target, "value_set": {"$PARAMETER": CLASSES_PARAMETER}}))
    return out


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def class_counts(config: PipelineConfig, frames: dict[date, pd.DataFrame]) -> dict[date, pd.Series]:
    """Labelled rows per class of each day (empty for a day without the target column)."""
    return {day: (frame[config.target].value_counts(dropna=True) if config.target in frame.columns
                  else pd.Series(dtype="int64")) for day, frame in frames.items()}


def expected_classes(counts: dict[date, pd.Series], day: date, alpha: float) -> list[Any]:
    """Classes ``day`` must contain: those whose absence from its labelled rows has probability
    ``(1 - share) ** n`` below ``alpha``, ``share`` being the class's share of the labels of the
    other days in ``counts``. Empty when no other day has labels (nothing to compare with)."""
    own = counts.get(day, pd.Series(dtype="int64"))
    rest = [c for d, c in counts.items() if d != day and len(c)]
    if not rest or not len(own):
        return []
    others = pd.concat(rest).groupby(level=0).sum()
    total, n = float(others.sum()), int(own.sum())
    return sorted((_scalar(c) for c, k in others.items() if k > 0 and (1.0 - k / total) ** n < alpha), key=str)


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[day 00:00 UTC, next day 00:00 UTC)`` as UTC timestamps."""
    start = pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
    return start, start + timedelta(days=1)


def day_parameters(config: PipelineConfig, day: date, counts: dict[date, pd.Series] | None) -> dict[str, Any]:
    """Runtime parameters of the integrity expectations for ``day`` (the day bounds as UTC
    timestamps: the caller expresses them like the column); ``counts`` of the window
    (:func:`class_counts`, history days included) for classification."""
    start, end = day_bounds(day)
    params: dict[str, Any] = {DAY_START_PARAMETER: start, DAY_END_PARAMETER: end}
    if is_classification(config):
        params[CLASSES_PARAMETER] = expected_classes(counts or {}, day, config.validation.class_absence_p)
    return params


def class_context(config: PipelineConfig, day: date, counts: dict[date, pd.Series] | None) -> dict[str, Any]:
    """What the failure text of the class check needs: the day's counts and the others' shares."""
    if not is_classification(config) or counts is None:
        return {}
    own = counts.get(day, pd.Series(dtype="int64"))
    rest = [c for d, c in counts.items() if d != day and len(c)]
    others = pd.concat(rest).groupby(level=0).sum() if rest else pd.Series(dtype="int64")
    total = float(others.sum()) or 1.0
    return {"day_counts": {str(_scalar(k)): int(v) for k, v in own.items()},
            "other_shares": {str(_scalar(k)): float(v) / total for k, v in others.items()},
            "labelled_rows": int(own.sum())}


def _is_day_check(kwargs: dict[str, Any], context: dict[str, Any]) -> bool:
    """Whether a (parameter-substituted) between-expectation is the partition-day check."""
    if kwargs.get("column") != context.get("freshness_column") or not context.get("day_bounds"):
        return False
    if isinstance(kwargs.get("max_value"), dict):
        return kwargs["max_value"].get("$PARAMETER") == DAY_END_PARAMETER
    try:
        high = pd.Timestamp(kwargs.get("max_value"))
        high = high.tz_localize("UTC") if high.tzinfo is None else high
        return bool(kwargs.get("strict_max")) and high == pd.Timestamp(context["day_bounds"][1])
    except (TypeError, ValueError):
        return False


def describe(kind: str, kwargs: dict[str, Any], res: dict[str, Any], context: dict[str, Any]) -> tuple[str, str] | None:
    """``(observed, details)`` of a failed integrity expectation; None for other expectations."""
    if kind == IN_DAY and _is_day_check(kwargs, context):
        low, high = context["day_bounds"]
        examples = ", ".join(dict.fromkeys(str(v) for v in res.get("partial_unexpected_list") or []).keys())
        return (f"{res.get('unexpected_count')} timestamps ({float(res.get('unexpected_percent') or 0):.1f}%) "
                f"outside the partition's day [{low}, {high})",
                f"the partition of {context.get('day')} holds rows of other days, e.g. {examples or '?'}")
    if kind == NO_DUPLICATE_ROWS:
        id_column = context.get("id_column")
        ids = [str(r.get(id_column)) for r in res.get("partial_unexpected_list") or [] if isinstance(r, dict)]
        allowed = 1.0 - float(kwargs.get("mostly", 1.0))
        return (f"{res.get('unexpected_count')} rows ({float(res.get('unexpected_percent') or 0):.1f}%) are "
                f"whole-row duplicates over the {len(kwargs.get('column_list') or ())} columns "
                f"{', '.join(kwargs.get('column_list') or ())} (every copy counted)",
                f"allowed {100 * allowed:.1f}% (validation.max_duplicate_fraction); repeated rows include "
                f"{id_column} {', '.join(dict.fromkeys(ids)) or '?'}")
    if kind == HAS_CLASSES:
        classes = context.get("classes") or {}
        own, shares = classes.get("day_counts", {}), classes.get("other_shares", {})
        missing = [str(v) for v in context.get("expected_classes") or [] if str(v) not in own]
        seen = ", ".join(f"{k}: {v}" for k, v in own.items()) or "none"
        n = classes.get("labelled_rows", 0)
        why = "; ".join(f"class {m} is {100 * shares.get(m, 0):.1f}% of the window's other days, so "
                        f"P(none in {n} rows) = {(1 - shares.get(m, 0)) ** n:.1e}" for m in missing)
        return (f"labels missing class(es) {', '.join(missing) or '?'} (classes seen: {seen})",
                f"{why} < validation.class_absence_p {context.get('class_absence_p')}: the export lost labels")
    return None


def window_class_problem(config: PipelineConfig, frames: dict[date, pd.DataFrame], as_of: date) -> str | None:
    """Why the window cannot train a classifier (None when it can): the labels known by
    ``as_of`` (the rows training sees, after the label cutoff) hold fewer than 2 classes."""
    from airloop.data.snapshot import apply_label_cutoff

    if not is_classification(config) or not frames:
        return None
    parts = [f for f in frames.values() if config.target in f.columns]
    if not parts:
        return None
    labels = apply_label_cutoff(config, pd.concat(parts, ignore_index=True), as_of)[config.target].dropna()
    counts = labels.value_counts()
    if len(counts) >= 2:
        return None
    days = sorted(frames)
    seen = ", ".join(f"{_scalar(k)!r}: {v}" for k, v in counts.items()) or "no labelled row"
    return (f"{days[0]}..{days[-1]}: target column '{config.target}' has fewer than 2 classes among the "
            f"{len(labels)} labels known before {as_of} ({seen}; expected classes {config.classes or 'any 2'}): "
            "a classifier cannot be trained on it")


def day_source(config: PipelineConfig, settings: Settings, day: date) -> str:
    """The file(s) holding ``day`` (dated partitions), else the source in words."""
    from airloop.data.sources import describe_source, source_files

    if config.source.kind == "files" and config.source.partitioned:
        files = source_files(config, settings, day)
        if files:
            return ", ".join(str(f) for f in files)
    return describe_source(config, settings)


def failure_report(config: PipelineConfig, failures: list, settings: Settings) -> str:
    """The failures (:class:`~airloop.data.validation.Failure`) grouped by day, each day with its
    source file(s) and the command that releases it once fixed."""
    lines: list[str] = []
    for day in sorted({f.day for f in failures}):
        lines.append(f"{day.isoformat()}: file {day_source(config, settings, day)}")
        lines.extend(f"  - {f.message}" for f in failures if f.day == day)
        lines.append(f"  release it once its data is fixed: `airloop release {config.name} {day.isoformat()}`")
    return "\n".join(lines)
