"""Quarantine of partitions that failed validation: kept, never deleted."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pandas as pd

from airloop.core.files import atomic_write
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.data.validation import ValidationOutcome

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Quarantine
# --------------------------------------------------------------------------------------------


def _parquet_bytes(frame: pd.DataFrame) -> tuple[bytes, list[str]]:
    """``frame`` as parquet; object columns pyarrow cannot store are written as strings."""
    import io

    import pyarrow as pa

    stringified: list[str] = []
    try:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue(), stringified
    except (pa.ArrowException, TypeError, ValueError):
        copy = frame.copy()
        for column in copy.columns:
            if copy[column].dtype == object:
                try:
                    pa.array(copy[column], from_pandas=True)
                except (pa.ArrowException, TypeError, ValueError):
                    copy[column] = copy[column].map(lambda v: None if v is None or v != v else str(v))
                    stringified.append(str(column))
        buffer = io.BytesIO()
        copy.to_parquet(buffer, index=False)
        return buffer.getvalue(), stringified


def quarantine_partitions(
    config: PipelineConfig,
    partitions: dict[date, pd.DataFrame],
    outcome: ValidationOutcome,
    settings: Settings,
) -> list[Path]:
    """Copy each failed day's rows to ``quarantine_dir/<pipeline>/<day>/data.parquet``.

    A ``reason.json`` beside it records the failures, the interval and the result path.
    Idempotent (a re-run rewrites the same files); the source frames and files are never
    modified or deleted. Returns the parquet paths written.
    """
    written: list[Path] = []
    for day in outcome.failed_days:
        if day not in partitions:
            logger.warning("%s: failed day %s is not among the partitions given; not quarantined", config.name, day)
            continue
        folder = settings.quarantine_dir / config.name / day.isoformat()
        data, stringified = _parquet_bytes(partitions[day])
        reason = {
            "pipeline": config.name,
            "day": day.isoformat(),
            "rows": len(partitions[day]),
            "interval_end": outcome.statistics.get("interval_end"),
            "result_path": str(outcome.result_path),
            "failures": [f.to_json() for f in outcome.failures if f.day == day],
            "stringified_columns": stringified,
        }
        atomic_write(folder / "data.parquet", data)
        atomic_write(folder / "reason.json", (json.dumps(reason, indent=2, sort_keys=True) + "\n").encode())
        logger.warning("%s: quarantined %s (%d rows) in %s", config.name, day, len(partitions[day]), folder)
        written.append(folder / "data.parquet")
    return written


def quarantined_days(config: PipelineConfig, settings: Settings) -> set[date]:
    """Days of ``config`` currently in quarantine (folders holding a ``data.parquet``)."""
    root = settings.quarantine_dir / config.name
    days: set[date] = set()
    if not root.is_dir():
        return days
    for folder in root.iterdir():
        try:
            day = date.fromisoformat(folder.name)
        except ValueError:
            continue
        if (folder / "data.parquet").is_file():
            days.add(day)
    return days
