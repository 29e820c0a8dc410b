"""Immutable, content-addressed training-window snapshots and their fingerprints."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import day_start
from airloop.data.sources import ExtractError, UnreadableFile, UnreadablePartitions, describe_source, read_days


@dataclass(frozen=True)
class Snapshot:
    """Reference to a materialised training window (small: safe to pass through XCom)."""

    pipeline: str
    as_of: str
    window_start: str
    path: str
    fingerprint: str
    rows: int
    days: list[str]
    excluded_days: list[str]
    min_ts: str | None
    max_ts: str | None

    def to_dict(self) -> dict:
        """Plain-dict form for XCom and MLflow tags."""
        return asdict(self)


def window_days(as_of: date, window: int) -> list[date]:
    """The ``window`` days before ``as_of`` (``as_of`` itself excluded), oldest first."""
    return [as_of - timedelta(days=offset) for offset in range(window, 0, -1)]


def apply_label_cutoff(config: PipelineConfig, frame: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """Drop rows whose label was not yet known at the start of ``as_of`` (if labels lag)."""
    if not config.label_timestamp or config.label_timestamp not in frame.columns:
        return frame
    known = frame[config.label_timestamp] < pd.Timestamp(day_start(as_of))
    return frame.loc[known].reset_index(drop=True)


def _hash_frames(frames: dict[date, pd.DataFrame]) -> str:
    digest = hashlib.sha256()
    for day in sorted(frames):
        digest.update(day.isoformat().encode())
        digest.update(pd.util.hash_pandas_object(frames[day], index=False).values.tobytes())
        digest.update(",".join(f"{c}:{t}" for c, t in frames[day].dtypes.astype(str).items()).encode())
    return digest.hexdigest()


def extract_window(
    config: PipelineConfig,
    as_of: date,
    settings: Settings,
    window: int | None = None,
    exclude: set[date] | frozenset[date] = frozenset(),
) -> Snapshot:
    """Materialise the training window ending at ``as_of`` as an immutable snapshot.

    Days in ``exclude`` (quarantined) are skipped and listed in the fingerprint. Raises
    :class:`UnreadablePartitions` (every dated partition whose file is empty or unreadable, before
    anything is written), :class:`~airloop.data.sources.UnreadableFile` for an unpartitioned
    source, and :class:`ExtractError` when the window holds no data at all.
    """
    window = window or config.training.window_days
    days = window_days(as_of, window)
    unreadable: dict[date, UnreadableFile] = {}
    frames = read_days(config, [d for d in days if d not in exclude], settings, unreadable=unreadable)
    if unreadable:
        raise UnreadablePartitions(config.name, unreadable)
    if not frames:
        raise ExtractError(f"{config.name}: no partitions for {days[0]}..{days[-1]} in {describe_source(config, settings)}")
    fingerprint = _hash_frames(frames)
    target = settings.snapshots_dir / config.name / as_of.isoformat() / fingerprint[:16]
    rows = sum(len(f) for f in frames.values())
    ts = [f[config.timestamp] for f in frames.values() if config.timestamp in f.columns and len(f)]
    all_ts = pd.concat(ts) if ts else pd.Series(dtype="datetime64[ns, UTC]")
    snapshot = Snapshot(
        pipeline=config.name,
        as_of=as_of.isoformat(),
        window_start=days[0].isoformat(),
        path=str(target),
        fingerprint=fingerprint,
        rows=rows,
        days=[d.isoformat() for d in sorted(frames)],
        excluded_days=sorted(d.isoformat() for d in exclude if d in days),
        min_ts=all_ts.min().isoformat() if len(all_ts) else None,
        max_ts=all_ts.max().isoformat() if len(all_ts) else None,
    )
    if not (target / "fingerprint.json").is_file():
        _write_snapshot(target, frames, snapshot)
    return snapshot


def _write_snapshot(target: Path, frames: dict[date, pd.DataFrame], snapshot: Snapshot) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for day, frame in frames.items():
            frame.to_parquet(tmp / f"day={day.isoformat()}.parquet", index=False)
        (tmp / "fingerprint.json").write_text(json.dumps(snapshot.to_dict(), indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "fingerprint.json").is_file():  # lost a race to an identical writer?
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_snapshot_days(snapshot: Snapshot | dict) -> dict[date, pd.DataFrame]:
    """Read a snapshot back as one frame per day, as extracted (for validation)."""
    path = Path(snapshot["path"] if isinstance(snapshot, dict) else snapshot.path)
    if not (path / "fingerprint.json").is_file():
        raise ExtractError(f"{path}: snapshot not found or incomplete")
    return {
        date.fromisoformat(file.stem.split("=", 1)[1]): pd.read_parquet(file)
        for file in sorted(path.glob("day=*.parquet"))
    }


def load_snapshot(snapshot: Snapshot | dict, config: PipelineConfig) -> pd.DataFrame:
    """Read a snapshot for training: one frame sorted by timestamp, only rows labelled by as-of."""
    frames = load_snapshot_days(snapshot)
    as_of = date.fromisoformat(snapshot["as_of"] if isinstance(snapshot, dict) else snapshot.as_of)
    frame = apply_label_cutoff(config, pd.concat(frames.values(), ignore_index=True), as_of)
    return frame.sort_values([config.timestamp, config.id_column], kind="stable").reset_index(drop=True)
