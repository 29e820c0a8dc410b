"""Quarantine of partitions that failed validation: kept, never deleted.

A quarantined day is ``quarantine_dir/<pipeline>/<day>/`` (``data.parquet`` + ``reason.json``,
which records the :func:`~airloop.data.validation.validation_fingerprint` of the suite and source
that judged it). A day whose file cannot be read at all (empty, not CSV/Parquet, not UTF-8,
permission denied) has byte-for-byte copies of its files under ``files/`` instead of
``data.parquet`` (:func:`quarantine_unreadable`). Training runs skip quarantined days. A day
leaves quarantine by

* re-validation: when a run's fingerprint differs from the recorded one (the pipeline file or
  the suite changed), :func:`revalidate_quarantined` validates the day again and releases it if
  it now passes (``airloop release <pipeline> --revalidate`` does it for every day at once);
* hand release: ``airloop release <pipeline> <day>`` (:func:`release_day`), once the data is
  fixed; the next run validates the day again like any other.

Released days move to ``quarantine_dir/<pipeline>/released/<day>--<time>/`` with a
``release.json``: nothing is deleted. Days whose failures are the pipeline file's fault (a
column missing from every day of the window) are never quarantined: quarantining raises
:class:`~airloop.core.pipeline.ConfigurationError` instead (:func:`airloop.data.check.config_problems`).
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from airloop.core.files import atomic_write
from airloop.core.pipeline import ConfigurationError, PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import day_start
from airloop.data.check import config_problems
from airloop.data.sources import UnreadableFile, read_days, source_files
from airloop.data.validation import (
    Failure,
    ValidationOutcome,
    load_suite,
    release_hint,
    validate_partitions,
    validation_fingerprint,
)

#: Folder of a quarantined day holding copies of its unreadable source files.
FILES_DIR = "files"
#: The "expectation" an unreadable file fails (it never reaches GX).
READABLE_FILE = "airloop:file_is_readable"

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
    check_config: bool = True,
) -> list[Path]:
    """Copy each failed day's rows to ``quarantine_dir/<pipeline>/<day>/data.parquet``.

    A ``reason.json`` beside it records the failures, the interval, the result path and the
    suite fingerprint. Idempotent (a re-run rewrites the same files); the source frames and
    files are never modified or deleted. Returns the parquet paths written.

    With ``check_config`` (``partitions`` being the whole window), failures that are the
    pipeline file's (:func:`airloop.data.check.config_problems`: a column missing from every
    day, a type no day's values have) quarantine nothing: :class:`ConfigurationError` is raised
    naming the column (and the "did you mean").
    """
    if check_config and outcome.failed_days:
        problems = config_problems(config, partitions)
        if problems:
            raise ConfigurationError(
                f"{config.name}: the pipeline file does not fit the data of any day, so no day was quarantined "
                "(fix the file; check it with `airloop check " + config.name + "`):\n"
                + "\n".join(f"  - {p}" for p in problems))
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
            "suite_fingerprint": outcome.suite_fingerprint,
            "release": f"airloop release {config.name} {day.isoformat()}",
        }
        atomic_write(folder / "data.parquet", data)
        atomic_write(folder / "reason.json", (json.dumps(reason, indent=2, sort_keys=True) + "\n").encode())
        logger.warning("%s: quarantined %s (%d rows) in %s; %s", config.name, day, len(partitions[day]), folder,
                       release_hint(config.name))
        written.append(folder / "data.parquet")
    return written


def unreadable_failure(err: UnreadableFile) -> Failure:
    """The :class:`Failure` of a partition whose file cannot be read."""
    return Failure(day=err.day, expectation=READABLE_FILE, column=None, observed=err.reason, details=f"file {err.path}")


def quarantine_unreadable(config: PipelineConfig, errors: dict[date, UnreadableFile], settings: Settings,
                          interval_end: str, suite_fingerprint: str | None) -> list[Path]:
    """Quarantine each day of ``errors`` (its partition files cannot be read): copies of the
    day's source files, byte for byte, go to ``quarantine_dir/<pipeline>/<day>/files/`` (a file
    that cannot even be opened is recorded, not copied) and ``reason.json`` says why. The
    source is never modified. Returns the quarantine folders written."""
    written: list[Path] = []
    for day, err in sorted(errors.items()):
        folder = settings.quarantine_dir / config.name / day.isoformat()
        copies_dir = folder / FILES_DIR
        copies_dir.mkdir(parents=True, exist_ok=True)
        copies = []
        for index, path in enumerate(source_files(config, settings, day) or [err.path]):
            target = copies_dir / (path.name if index == 0 else f"{index}-{path.name}")
            try:
                shutil.copyfile(path, target)
                copies.append({"source": str(path), "copy": str(target), "bytes": target.stat().st_size})
            except OSError as copy_err:
                copies.append({"source": str(path), "copy": None, "error": f"{type(copy_err).__name__}: {copy_err}"})
        reason = {
            "pipeline": config.name,
            "day": day.isoformat(),
            "kind": "unreadable",
            "rows": None,
            "interval_end": interval_end,
            "failures": [unreadable_failure(err).to_json()],
            "files": copies,
            "suite_fingerprint": suite_fingerprint,
            "release": f"airloop release {config.name} {day.isoformat()}",
        }
        atomic_write(folder / "reason.json", (json.dumps(reason, indent=2, sort_keys=True) + "\n").encode())
        logger.warning("%s: quarantined %s: %s; copies in %s; %s", config.name, day, err, copies_dir,
                       release_hint(config.name))
        written.append(folder)
    return written


def _is_quarantined(folder: Path) -> bool:
    """A day folder holding its rows (``data.parquet``) or its unreadable files (``files/``)."""
    return (folder / "data.parquet").is_file() or ((folder / FILES_DIR).is_dir() and (folder / "reason.json").is_file())


def quarantined_days(config: PipelineConfig, settings: Settings) -> set[date]:
    """Days of ``config`` currently in quarantine (folders holding a ``data.parquet``, or the
    copies of unreadable files)."""
    root = settings.quarantine_dir / config.name
    days: set[date] = set()
    if not root.is_dir():
        return days
    for folder in root.iterdir():
        try:
            day = date.fromisoformat(folder.name)
        except ValueError:
            continue
        if _is_quarantined(folder):
            days.add(day)
    return days


def quarantine_reason(config: PipelineConfig, settings: Settings, day: date) -> dict[str, Any]:
    """The ``reason.json`` of a quarantined day (``{}`` when missing or unreadable)."""
    try:
        return json.loads((settings.quarantine_dir / config.name / day.isoformat() / "reason.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def release_day(config: PipelineConfig, settings: Settings, day: date, why: str) -> Path:
    """Take ``day`` out of quarantine: its folder moves to ``released/<day>--<time>/`` with a
    ``release.json`` (``why``, when); nothing is deleted. The next run reads and validates the
    day from the source again. ``KeyError`` when the day is not quarantined."""
    folder = settings.quarantine_dir / config.name / day.isoformat()
    if not _is_quarantined(folder):
        quarantined = ", ".join(d.isoformat() for d in sorted(quarantined_days(config, settings))) or "none"
        raise KeyError(f"{config.name}: {day} is not quarantined (quarantined days: {quarantined})")
    now = datetime.now(timezone.utc)
    target = settings.quarantine_dir / config.name / "released" / f"{day.isoformat()}--{now:%Y%m%dT%H%M%S%fZ}"
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.replace(target)
    record = {"pipeline": config.name, "day": day.isoformat(), "released_at": now.isoformat(), "why": why}
    atomic_write(target / "release.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    logger.warning("%s: released %s from quarantine (%s); kept in %s", config.name, day, why, target)
    return target


def _day_frames(config: PipelineConfig, settings: Settings,
                days: list[date]) -> tuple[dict[date, pd.DataFrame], dict[date, UnreadableFile]]:
    """The days as the source has them now (the quarantined copy for a day the source lost),
    and the days whose source files still cannot be read."""
    unreadable: dict[date, UnreadableFile] = {}
    frames = read_days(config, days, settings, unreadable=unreadable)
    for day in days:
        copy = settings.quarantine_dir / config.name / day.isoformat() / "data.parquet"
        if day not in frames and day not in unreadable and copy.is_file():
            frames[day] = pd.read_parquet(copy)
    return frames, unreadable


def _history(config: PipelineConfig, settings: Settings, days: list[date], skip: set[date]) -> dict[date, pd.DataFrame]:
    """The readable days of the training window before the newest of ``days`` (not in ``skip``):
    the history a day's class shares are judged against when it is re-validated alone."""
    last = max(days)
    window = [last - timedelta(days=i) for i in range(config.training.window_days, -1, -1)]
    return read_days(config, [d for d in window if d not in skip], settings, unreadable={})


def revalidate_quarantined(
    config: PipelineConfig,
    settings: Settings,
    days: list[date] | None = None,
    suite: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, list[str]]:
    """Re-validate quarantined days judged under another suite/source fingerprint than the
    current one (all of them with ``force``), among ``days`` (default: every quarantined day);
    release those that pass now, re-quarantine the others under the current fingerprint (so they
    are not re-validated again until it changes). Results go to
    ``validation_dir/<pipeline>/revalidation-<fingerprint>/``, never over a run's results.
    Returns ``{"released": [...], "kept": [...]}`` (ISO days)."""
    quarantined = quarantined_days(config, settings)
    if days is not None:
        quarantined &= set(days)
    if not quarantined:
        return {"released": [], "kept": []}
    suite = load_suite(config, settings) if suite is None else suite
    fingerprint = validation_fingerprint(config, suite)
    stale = sorted(d for d in quarantined
                   if force or quarantine_reason(config, settings, d).get("suite_fingerprint") != fingerprint)
    if not stale:
        return {"released": [], "kept": []}
    logger.info("%s: re-validating %d quarantined day(s) %s under suite fingerprint %s", config.name, len(stale),
                [d.isoformat() for d in stale], fingerprint[:12])
    frames, unreadable = _day_frames(config, settings, stale)
    # Every day judged like an older day of a run: freshness only against the day's own start.
    interval_end = day_start(max(stale)) + timedelta(hours=config.validation.freshness_hours)
    if unreadable:
        quarantine_unreadable(config, unreadable, settings, interval_end.isoformat(), fingerprint)
    if not frames:
        return {"released": [], "kept": [d.isoformat() for d in sorted(unreadable)]}
    outcome = validate_partitions(config, frames, interval_end, settings, suite=suite,
                                  out_dir=settings.validation_dir / config.name / f"revalidation-{fingerprint[:12]}",
                                  reference=_history(config, settings, sorted(frames), quarantined))
    failed = set(outcome.failed_days) | set(unreadable)
    released = [d for d in stale if d not in failed and d in frames]
    for day in released:
        release_day(config, settings, day, f"re-validated under suite fingerprint {fingerprint[:12]}: passed")
    if outcome.failed_days:
        quarantine_partitions(config, {d: frames[d] for d in outcome.failed_days}, outcome, settings,
                              check_config=False)
    if released:
        logger.warning("%s: released %d day(s) from quarantine after re-validation: %s", config.name, len(released),
                       [d.isoformat() for d in released])
    return {"released": [d.isoformat() for d in released], "kept": [d.isoformat() for d in sorted(failed)]}
