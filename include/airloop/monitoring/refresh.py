"""Drift references refreshed from a version's own served traffic (``monitoring.reference.refresh``).

Refresh days are every ``every_days`` days of the calendar (days since 1970-01-01 divisible by
``every_days``). The reference of an interval starting at ``S`` is the one of the last refresh
day ``R <= S``: the ``ok`` rows the version served in ``[R - window_days, R)`` (features as
served plus their score), when there are at least ``drift.min_rows`` of them; otherwise the
version's training reference. It depends only on stored traffic before ``R``, so every run,
backfill or worker computes the same reference; the frame is cached under the version's
reference folder and recorded in ``reference_refreshes`` (``reference_id`` of each monitoring
run says which reference its drift used).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc
from airloop.monitoring import calibration
from airloop.monitoring.reference import PROFILE_FILE, REFERENCE_FILE, SCORE_COLUMN, build_reference_profile, \
    reference_cache_path

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import sqlalchemy as sa

    from airloop.monitoring.driftstats import ReferenceProfile

log = logging.getLogger(__name__)

#: ``reference_id`` of drift judged against the version's training reference.
TRAINING = "training"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def refresh_day(config: PipelineConfig, start: datetime) -> datetime | None:
    """The last refresh day at or before ``start`` (None without a refresh policy)."""
    policy = config.monitoring.reference.refresh
    if policy is None:
        return None
    days = (to_utc(start) - _EPOCH).days
    return _EPOCH + timedelta(days=days - days % policy.every_days)


def reference_for(engine: sa.Engine, config: PipelineConfig, settings: Settings, tenant: str, version: str,
                  start: datetime, training: pd.DataFrame,
                  profile: ReferenceProfile | None) -> tuple[pd.DataFrame, ReferenceProfile | None, str]:
    """``(reference, profile, reference_id)`` that drift of the interval starting at ``start``
    uses: the refreshed reference of the last refresh day (``"refresh:<YYYY-MM-DD>"``) or the
    version's ``training`` reference and ``profile`` (``"training"``)."""
    from airloop.monitoring.traffic import load_interval

    day = refresh_day(config, start)
    if day is None:
        return training, profile, TRAINING
    policy = config.monitoring.reference.refresh
    folder = reference_cache_path(settings, config, version).parent / tenant_dir(tenant) / f"refresh-{day:%Y%m%d}"
    cached, cached_profile = folder / REFERENCE_FILE, folder / PROFILE_FILE
    reference_id = f"refresh:{day:%Y-%m-%d}"
    if cached.is_file() and cached_profile.is_file():
        import pandas as pd

        from airloop.monitoring.driftstats import ReferenceProfile

        frame = pd.read_parquet(cached)
        frame.attrs.update(training.attrs)
        return frame, ReferenceProfile.load(cached_profile), reference_id
    window_start = day - timedelta(days=policy.window_days)
    served, _ = load_interval(engine, config, tenant, window_start, day)
    served = served[(served["status"] == "ok") & (served["model_version"].astype(str) == str(version))]
    if len(served) < config.monitoring.drift.min_rows:
        log.info("%s v%s: %d served rows in [%s, %s) < drift.min_rows: the training reference stays", config.name,
                 version, len(served), window_start.date(), day.date())
        return training, profile, TRAINING
    frame = served[[*config.features, SCORE_COLUMN]].reset_index(drop=True)
    if calibration.DAY_COLUMN in training.columns:  # seasonal calibrated thresholds need each row's day
        frame[calibration.DAY_COLUMN] = [d.isoformat() for d in calibration.day_of(served["ts"])]
    frame.attrs.update(training.attrs)  # the version's calibrated thresholds stay its own
    built = build_reference_profile(config, frame)
    _write(frame, built, folder)
    store.upsert(engine, store.reference_refreshes, [{
        "tenant": tenant, "pipeline": config.name, "model_version": str(version), "refreshed_at": day,
        "window_start": window_start, "window_end": day, "rows": int(len(frame)), "artifact": str(cached)}])
    log.info("%s v%s: drift reference refreshed from %d served rows of [%s, %s)", config.name, version, len(frame),
             window_start.date(), day.date())
    return frame, built, reference_id


def tenant_dir(tenant: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tenant)


def _write(frame: pd.DataFrame, profile: ReferenceProfile, folder: Path) -> None:
    """Write the refreshed reference and its profile atomically (a reader sees both or neither)."""
    import os
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".refresh-") as tmp:
        part = Path(tmp) / "ref"
        part.mkdir()
        frame.drop(columns=[], errors="ignore").to_parquet(part / REFERENCE_FILE, index=False)
        profile.save(part / PROFILE_FILE)
        try:
            os.replace(part, folder)
        except OSError:  # another worker wrote the same (deterministic) reference first
            if not (folder / PROFILE_FILE).is_file():
                raise
