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

import glob
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from airloop.core.pipeline import PipelineConfig, resolve_source_path
from airloop.core.settings import Settings
from airloop.core.timeutil import day_start


class ExtractError(RuntimeError):
    """The training window cannot be materialised (missing data, unreadable file)."""


class UnreadablePartitions(ExtractError):
    """Dated partitions of the window whose files cannot be read (``files``: day -> error)."""

    def __init__(self, pipeline: str, files: dict[date, "UnreadableFile"]) -> None:
        self.pipeline, self.files = pipeline, dict(sorted(files.items()))
        super().__init__(f"{pipeline}: {len(files)} partition file(s) cannot be read:\n"
                         + "\n".join(f"  - {err}" for err in self.files.values()))


class UnreadableFile(ExtractError):
    """A source file that is empty (0 bytes, or no data rows) or cannot be read as its format
    (not CSV/Parquet, truncated, not UTF-8, permission denied): a retry cannot help, so the
    extract quarantines its day (:func:`airloop.data.quarantine.quarantine_unreadable`).
    ``day`` is the partition's day (None for an unpartitioned source)."""

    def __init__(self, pipeline: str, path: Path, reason: str, day: date | None = None) -> None:
        self.pipeline, self.path, self.reason, self.day = pipeline, Path(path), reason, day
        super().__init__(f"{pipeline}: source.path: {path}: {reason}")


#: Characters that make a file pattern a glob (``*``, ``?``, ``[...]``; ``**`` spans folders).
GLOB_CHARS = frozenset("*?[")


def source_files(config: PipelineConfig, settings: Settings, day: date | None = None) -> list[Path]:
    """The files of a files source, sorted: those of ``day`` for a ``{date}`` pattern (``day``
    required), else every file the pattern matches (a folder: every file of the source's format
    below it)."""
    source = config.source
    pattern = str(resolve_source_path(config, settings) / source.partition) if source.partition else str(
        resolve_source_path(config, settings))
    if source.partitioned:
        if day is None:
            raise ValueError(f"{config.name}: source.partition {source.pattern!r} needs a day")
        pattern = pattern.replace("{date}", day.isoformat())
    elif Path(pattern).is_dir():
        pattern = str(Path(pattern) / "**" / f"*.{source.format}")
    if not GLOB_CHARS & set(pattern):
        return [Path(pattern)] if Path(pattern).is_file() else []
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def _utf8_error(data: bytes, chunk: int = 1 << 20) -> tuple[int, str] | None:
    """(byte offset, reason) of the first invalid UTF-8 sequence in ``data`` (None: valid),
    decoded a chunk at a time so a large file is never held twice as text."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(data), chunk):
        try:
            decoder.decode(data[start:start + chunk], final=start + chunk >= len(data))
        except UnicodeDecodeError as err:
            pending = len(err.object) - len(data[start:start + chunk])  # bytes carried from the last chunk
            return start - pending + err.start, err.reason
    return None


def read_file(config: PipelineConfig, path: Path) -> pd.DataFrame:
    """One source file exactly as the source holds it (nothing parsed). CSV files must be UTF-8
    text. :class:`UnreadableFile` names the file and why: empty (0 bytes), permission denied,
    not valid UTF-8 (with the byte offset), NUL bytes (a binary file), not Parquet / truncated."""
    import io

    try:
        data = Path(path).read_bytes()
    except PermissionError:
        raise UnreadableFile(config.name, path, "permission denied (cannot open the file for reading)") from None
    except IsADirectoryError:
        raise UnreadableFile(config.name, path, "is a folder, not a file") from None
    if not data:
        raise UnreadableFile(config.name, path, "empty file (0 bytes)")
    if config.source.format == "csv":
        bad = _utf8_error(data)
        if bad is not None:
            offset, why = bad
            raise UnreadableFile(config.name, path, f"encoding error: not valid UTF-8 at byte offset {offset} "
                                                    f"(byte 0x{data[offset]:02x}: {why}); CSV sources must be UTF-8")
        nul = data.find(b"\0")
        if nul >= 0:
            raise UnreadableFile(config.name, path, f"not a CSV text file: NUL byte at byte offset {nul}")
    try:
        if config.source.format == "csv":
            return pd.read_csv(io.BytesIO(data))
        return pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # corrupt file: say which
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableFile(config.name, path, f"cannot read {config.source.format} file: {first}") from err


def read_raw_files(config: PipelineConfig, files: list[Path]) -> pd.DataFrame:
    """Concatenate ``files`` exactly as the source holds them (nothing parsed; see :func:`read_file`)."""
    frames = [read_file(config, path) for path in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _read_files(config: PipelineConfig, files: list[Path]) -> pd.DataFrame:
    """Concatenate ``files`` as the source typed them; timestamps parsed to UTC."""
    return _parse_timestamps(config, read_raw_files(config, files))


def _parse_timestamps(config: PipelineConfig, frame: pd.DataFrame) -> pd.DataFrame:
    for column in (config.timestamp, config.label_timestamp):
        if column and column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    return frame


def _split_days(config: PipelineConfig, frame: pd.DataFrame, days: list[date], where: str) -> dict[date, pd.DataFrame]:
    """One frame per day of ``days`` that has rows, selected on the timestamp column."""
    if config.timestamp not in frame.columns:
        raise ExtractError(f"{config.name}: {where} has no timestamp column {config.timestamp!r} "
                           f"(columns: {list(frame.columns)[:20]})")
    day_of = frame[config.timestamp].dt.floor("D").dt.date
    wanted = set(days)
    return {day: part.reset_index(drop=True) for day, part in frame.groupby(day_of, sort=True) if day in wanted}


def _read_partition_files(config: PipelineConfig, files: list[Path], day: date,
                          empty_is_error: bool) -> pd.DataFrame | None:
    """The files of one dated partition. With ``empty_is_error`` a file without data rows is
    :class:`UnreadableFile` ("empty") unless ``validation.min_rows_per_day`` is 0, when a day
    of empty files has no data (None); without it, empty files are read as they are."""
    frames = []
    for path in files:
        try:
            frame = read_file(config, path)
        except UnreadableFile as err:
            raise UnreadableFile(config.name, path, err.reason, day) from err.__cause__
        if empty_is_error and frame.empty:
            if config.validation.min_rows_per_day > 0:
                raise UnreadableFile(config.name, path, f"empty partition: header only, 0 data rows "
                                     f"(validation.min_rows_per_day is {config.validation.min_rows_per_day})", day)
            continue
        frames.append(frame)
    if not frames:
        return None
    return _parse_timestamps(config, frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))


def read_days(config: PipelineConfig, days: list[date], settings: Settings,
              unreadable: dict[date, UnreadableFile] | None = None) -> dict[date, pd.DataFrame]:
    """Read ``days`` of the source, one frame per day that has data (days without data are left
    out), as the source typed them with the timestamp columns parsed to UTC.

    * files with a ``{date}`` pattern: each day's file(s), whole (the partition is the day); a
      file that cannot be read raises :class:`UnreadableFile`, or, given an ``unreadable``
      dict, is recorded there by day (so is a file of no data rows) and its day left out;
    * files without one: every matching file once, rows split by the timestamp column's day;
    * sql: one query over ``[first day, last day + 1)`` with bound parameters, split by day.

    Rows whose timestamp is null or outside ``days`` can only be kept by dated partitions.
    """
    if not days:
        return {}
    if config.source.kind == "sql":
        start, end = day_start(min(days)), day_start(max(days) + timedelta(days=1))
        return _split_days(config, read_sql_interval(config, start, end), days, "the SQL source")
    if config.source.partitioned:
        out = {}
        for day in days:
            files = source_files(config, settings, day)
            if not files:
                continue
            try:
                frame = _read_partition_files(config, files, day, empty_is_error=unreadable is not None)
            except UnreadableFile as err:
                if unreadable is None:
                    raise
                unreadable[day] = err
                continue
            if frame is not None:
                out[day] = frame
        return out
    files = source_files(config, settings)
    if not files:
        return {}
    return _split_days(config, _read_files(config, files), days, f"source.path {config.source.pattern!r}")


def read_partition(config: PipelineConfig, day: date, settings: Settings) -> pd.DataFrame | None:
    """Read one day of the source (see :func:`read_days`); ``None`` when the day has no data."""
    return read_days(config, [day], settings).get(day)


def describe_source(config: PipelineConfig, settings: Settings) -> str:
    """The source in words, for messages (never the connection's credentials)."""
    source = config.source
    if source.kind == "sql":
        what = f"table {source.table}" if source.table is not None else "query"
        return f"the SQL source ({what} via connection {source.conn_id!r}, timestamp {config.timestamp!r})"
    root = resolve_source_path(config, settings)
    return f"{root / source.partition if source.partition else root} ({source.format})"


# ------------------------------------------------------------------------------- SQL sources
def source_query(config: PipelineConfig) -> sa.Select:
    """The SELECT of a SQL source for one interval: every column of ``source.table`` (or of
    ``source.query`` as a subquery) with ``timestamp >= :start AND timestamp < :end``, ordered by
    timestamp and id so that a re-read gives the same rows in the same order. Built with
    SQLAlchemy Core: identifiers are quoted by the dialect, the interval bounds are bound
    parameters (``start``, ``end``), never SQL text."""
    source = config.source
    if source.kind != "sql":
        raise ValueError(f"{config.name}: source.kind is {source.kind!r}, not 'sql'")
    ts, key = sa.column(config.timestamp), sa.column(config.id_column)
    if source.table is not None:
        schema, _, name = source.table.rpartition(".")
        origin = sa.table(name, schema=schema or None)
    else:
        origin = sa.text(source.query).columns(ts, key).subquery("airloop_source")
    bound = sa.DateTime(timezone=True)
    return (
        sa.select(sa.literal_column("*"))
        .select_from(origin)
        .where(ts >= sa.bindparam("start", type_=bound), ts < sa.bindparam("end", type_=bound))
        .order_by(ts, key)
    )


def sql_engine(conn_id: str) -> sa.Engine:
    """The SQLAlchemy engine of the Airflow connection ``conn_id``, through the connection type's
    own hook (``PostgresHook`` for ``postgres``, any ``common.sql`` DbApiHook); cached per
    connection URI, so a changed connection gets a new engine."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as err:  # AirflowNotFoundException and the like
        raise ExtractError(f"source.conn_id {conn_id!r}: no such Airflow connection "
                           f"(set AIRFLOW_CONN_{conn_id.upper()} or add it in Airflow): {err}") from err
    key = (conn_id, conn.get_uri())
    engine = _ENGINES.get(key)
    if engine is None:
        hook = conn.get_hook()
        if not hasattr(hook, "get_sqlalchemy_engine"):
            raise ExtractError(f"source.conn_id {conn_id!r}: a {conn.conn_type!r} connection has no SQL hook "
                               f"({type(hook).__name__})")
        engine = _ENGINES.setdefault(key, hook.get_sqlalchemy_engine())
    return engine


_ENGINES: dict[tuple[str, str], sa.Engine] = {}


def read_sql_interval(config: PipelineConfig, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows of a SQL source with ``start <= timestamp < end`` (see :func:`source_query`)."""
    source = config.source
    what = f"source.table {source.table!r}" if source.table is not None else "source.query"
    engine = sql_engine(source.conn_id)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql_query(source_query(config), conn, params={"start": start, "end": end})
    except sa.exc.SQLAlchemyError as err:
        raise ExtractError(f"{config.name}: {what} via connection {source.conn_id!r}: "
                           f"{str(getattr(err, 'orig', None) or err).strip().splitlines()[0]}") from err
    return _parse_timestamps(config, frame)


# --------------------------------------------------------------------------- data availability
def newest_day(config: PipelineConfig, settings: Settings, before: date) -> date | None:
    """The newest day before ``before`` that the source has data for (None: no data before it).

    What a manual run without an as-of day trains on: the newest complete day, never a day read
    off the wall clock. Dated partitions are found by their file names (nothing is read); a
    single file is read once; a SQL source answers one ``max(timestamp)`` query.
    """
    if config.source.kind == "sql":
        inner = source_query(config).subquery()
        query = sa.select(sa.func.max(inner.c[config.timestamp]))
        with sql_engine(config.source.conn_id).connect() as conn:
            newest = conn.execute(query, {"start": datetime(1970, 1, 1), "end": day_start(before)}).scalar()
        return pd.Timestamp(newest).date() if newest is not None else None
    if config.source.partitioned:
        import re

        template = str(resolve_source_path(config, settings) / config.source.partition)
        head, _, tail = template.partition("{date}")
        days = set()
        for path in glob.glob(glob.escape(head) + "????-??-??" + tail.replace("{date}", "*"), recursive=True):
            found = re.fullmatch(r"\d{4}-\d{2}-\d{2}", path[len(head):len(head) + 10])
            if found and Path(path).is_file():
                day = date.fromisoformat(found.group(0))
                if day < before:
                    days.add(day)
        return max(days) if days else None
    files = source_files(config, settings)
    if not files:
        return None
    stamps = _read_files(config, files)[config.timestamp].dropna()
    stamps = stamps[stamps < pd.Timestamp(day_start(before))]
    return stamps.max().date() if len(stamps) else None
