"""Extract: materialise a data interval's training window as an immutable, fingerprinted snapshot.

A snapshot is a folder of one Parquet file per day (``day=YYYY-MM-DD.parquet``) plus
``fingerprint.json``. It is content-addressed: the folder name ends with the first characters of
the fingerprint hash, it is written under a temporary name and renamed into place, so a reader
never sees a partial snapshot and re-running the same interval on the same data yields the same
folder. Days are kept apart so that validation can judge (and quarantine) each day on its own.

Point-in-time correctness: a run "as of" day D reads the days ``[D - window, D)``. The snapshot
keeps every row as the source had it (validation judges whole days); :func:`load_snapshot` then
keeps only rows whose label was known before D (``label_timestamp`` in the pipeline config), so a
backfill of D trains on exactly what a scheduled run on D saw.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pandas as pd

from airloop.config import PipelineConfig, Settings, resolve_source_path


class ExtractError(RuntimeError):
    """The training window cannot be materialised (missing data, unreadable file)."""


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


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def window_days(as_of: date, window: int) -> list[date]:
    """The ``window`` days before ``as_of`` (``as_of`` itself excluded), oldest first."""
    return [as_of - timedelta(days=offset) for offset in range(window, 0, -1)]


def read_partition(config: PipelineConfig, day: date, settings: Settings) -> pd.DataFrame | None:
    """Read one day of the source as the source typed it; ``None`` when the day has no file."""
    path = resolve_source_path(config, settings) / config.source.partition.format(date=day.isoformat())
    if not path.is_file():
        return None
    try:
        if config.source.format == "csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except Exception as err:  # corrupt file: say which
        raise ExtractError(f"{path}: cannot read {config.source.format} partition: {err}") from err
    for column in (config.timestamp, config.label_timestamp):
        if column and column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    return frame


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
    :class:`ExtractError` when the window holds no data at all.
    """
    window = window or config.training.window_days
    days = window_days(as_of, window)
    frames: dict[date, pd.DataFrame] = {}
    for day in days:
        if day in exclude:
            continue
        frame = read_partition(config, day, settings)
        if frame is not None:
            frames[day] = frame
    if not frames:
        raise ExtractError(
            f"{config.name}: no partitions under {resolve_source_path(config, settings)} "
            f"for {days[0]}..{days[-1]} (pattern {config.source.partition!r})"
        )
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
