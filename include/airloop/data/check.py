"""Check a pipeline file against its source before any data is judged: ``airloop check``.

A misspelled column, a type no value has or a stale suite is the pipeline file's fault, not the
data's; found late, it quarantines good days and fails after retries. :func:`check_pipeline`
loads the file (field errors named), reads a small sample of the source (the newest partitions
or a LIMITed query) and reports, in words a person can act on:

* every configured column (timestamp, id, target, label timestamp, features) exists in the
  source, with a "did you mean" for a typo;
* each column's values parse as the declared type (:func:`unparsed_values`);
* category ``values:`` and the classification ``classes`` cover the sample (unseen values are
  warnings; an error only when most rows are unseen);
* every search-space parameter exists on its estimator (task, metric and estimator families
  already agree at load time: :class:`airloop.core.pipeline.PipelineConfig`);
* the stored GX suite equals the one ``make suite`` would write.

The training DAG's ``extract`` runs it first (:func:`ensure_pipeline_ok`, raising
:class:`ConfigurationError`, which is never retried); the pipeline-check DAG and ``airloop
check`` run it for every file (:func:`check_all`), one bad file never hiding the others.
:func:`config_problems` is the same judgement on a whole training window, which quarantining
applies before it quarantines anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from airloop.core.pipeline import (
    ESTIMATORS,
    ConfigurationError,
    PipelineConfig,
    did_you_mean,
    load_pipeline_config,
    pipeline_files,
    resolve_source_path,
)
from airloop.core.settings import ConfigError, Settings
from airloop.data.sources import ExtractError, describe_source, read_raw_files, source_files

logger = logging.getLogger(__name__)

__all__ = ["CheckReport", "ConfigurationError", "Finding", "check_all", "check_config", "check_pipeline",
           "config_problems", "ensure_pipeline_ok", "unparsed_values"]

#: Newest days (partitions) a check reads, and at most this many rows of them.
SAMPLE_DAYS = 3
SAMPLE_ROWS = 20_000


# --------------------------------------------------------------------------------------------
# Type-parse rules: does a column's data fit its declared type at all?
# --------------------------------------------------------------------------------------------

_BOOL_TEXT = frozenset({"true", "false", "0", "1"})


def to_datetime(values: pd.Series) -> pd.Series:
    """``values`` as UTC datetimes (NaT where they do not parse): ISO 8601 fast, other formats
    one by one."""
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    retry = parsed.isna() & values.notna()
    if retry.any():
        parsed[retry] = pd.to_datetime(values[retry].astype(str), utc=True, errors="coerce", format="mixed")
    return parsed


def _is_number(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def unparsed_values(kind: str, values: pd.Series) -> tuple[int, int, list[Any]]:
    """``(values that do not parse as kind, non-null values, up to 5 examples)``.

    ``kind`` is a column type (``float``, ``int``, ``bool``, ``category``) or ``datetime``:
    numbers (or numeric text, as CSV files hold them) for float/int; booleans, 0/1 or
    true/false text for bool; text for category; datetimes or datetime text for datetime.
    """
    present = values.dropna()
    if present.empty:
        return 0, 0, []
    dtype = present.dtype
    if kind in ("float", "int"):
        if pd.api.types.is_bool_dtype(dtype):
            bad = present
        elif pd.api.types.is_numeric_dtype(dtype):
            return 0, len(present), []
        else:
            text = present.map(lambda v: v.strip() if isinstance(v, str) else v)
            parsed = pd.to_numeric(text.where(~present.map(lambda v: isinstance(v, bool)), None), errors="coerce")
            bad = present[parsed.isna()]
    elif kind == "bool":
        if pd.api.types.is_bool_dtype(dtype):
            return 0, len(present), []
        if pd.api.types.is_numeric_dtype(dtype):
            bad = present[~present.isin([0, 1])]
        else:
            ok = present.map(lambda v: isinstance(v, bool) or (_is_number(v) and v in (0, 1))
                             or (isinstance(v, str) and v.strip().lower() in _BOOL_TEXT))
            bad = present[~ok.astype(bool)]
    elif kind == "category":
        if pd.api.types.infer_dtype(present, skipna=True) == "string":
            return 0, len(present), []
        bad = present[~present.map(lambda v: isinstance(v, str)).astype(bool)]
    elif kind == "datetime":
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return 0, len(present), []
        numeric = present.map(_is_number).astype(bool)
        parsed = to_datetime(present.where(~numeric, None))
        bad = present[parsed.isna().to_numpy() | numeric.to_numpy()]
    else:
        raise ValueError(f"unknown column kind {kind!r}")
    examples = list(dict.fromkeys(repr(v) for v in bad.head(50)))[:5]
    return len(bad), len(present), examples


def configured_columns(config: PipelineConfig) -> dict[str, tuple[str, str]]:
    """Every column the pipeline file names: ``{column: (field, kind)}`` (kind as for
    :func:`unparsed_values`; the id column has none: ``""``)."""
    out = {config.timestamp: ("timestamp", "datetime"), config.id_column: ("id_column", "")}
    if config.label_timestamp:
        out[config.label_timestamp] = ("label_timestamp", "datetime")
    out[config.target] = ("target", "float" if config.task == "regression" else "")
    for column, spec in config.features.items():
        out[column] = (f"features.{column}", spec.type)
    return out


def _mostly_bad(config: PipelineConfig, column: str, kind: str, frame: pd.DataFrame) -> str | None:
    """Why most of ``column``'s values in ``frame`` do not fit the pipeline file, else None."""
    spec = config.features.get(column)
    if kind:
        bad, present, examples = unparsed_values(kind, frame[column])
        if present == 0:
            return "holds no value" if column == config.timestamp and len(frame) else None
        if bad * 2 > present:
            return f"{100 * bad / present:.0f}% of values do not parse as {kind} (e.g. {', '.join(examples)})"
    allowed = None
    if column == config.target and config.task != "regression" and config.classes:
        allowed, what = list(config.classes), f"classes {list(config.classes)}"
    elif spec is not None and spec.type == "category" and getattr(spec, "values", None):
        allowed, what = list(spec.values), f"the declared values {list(spec.values)}"
    if allowed is not None:
        present_values = frame[column].dropna()
        outside = present_values[~present_values.isin(allowed)]
        if len(present_values) and len(outside) * 2 > len(present_values):
            seen = ", ".join(repr(v) for v in outside.value_counts().index[:5])
            return f"{100 * len(outside) / len(present_values):.0f}% of values are not among {what} (seen: {seen})"
    return None


def config_problems(config: PipelineConfig, partitions: dict[date, pd.DataFrame]) -> list[str]:
    """What is wrong with the pipeline file rather than with the data, judged on every day: a
    configured column missing from every partition (with a "did you mean"), or whose values
    mostly do not fit its declared type, classes or category values on every day that has
    values. One bad day is data; every day alike is the configuration."""
    if not partitions:
        return []
    frames = list(partitions.values())
    configured = configured_columns(config)
    present = sorted({str(c) for f in frames for c in f.columns})
    unused = [c for c in present if c not in configured] or present  # a typo's fix is a column not yet used
    problems = []
    for column, (where, kind) in configured.items():
        holding = [f for f in frames if column in f.columns]
        if not holding:
            problems.append(f"{where}: column {column!r} is missing from all {len(frames)} day(s) of the window"
                            f"{did_you_mean(column, unused)}")
            continue
        reasons = []
        for frame in holding:
            reason = _mostly_bad(config, column, kind, frame)
            if reason is None:
                if frame[column].notna().any() or column == config.timestamp:
                    break
                continue
            reasons.append(reason)
        else:
            if reasons:
                problems.append(f"{where}: column {column!r} on all {len(holding)} day(s): {reasons[-1]}")
    return problems


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

Level = Literal["ok", "info", "warning", "error"]
_MARK = {"ok": "ok   ", "info": "info ", "warning": "warn ", "error": "ERROR"}


@dataclass(frozen=True)
class Finding:
    """One line of a check report. ``config`` tells a problem of the pipeline file (a retry
    cannot help) from one of reaching the source (no data yet, an unreachable database)."""

    level: Level
    message: str
    config: bool = True


@dataclass
class CheckReport:
    """What :func:`check_pipeline` found for one pipeline file."""

    pipeline: str
    path: Path
    findings: list[Finding] = field(default_factory=list)
    #: The source sample the columns were judged on, in words (None: no sample read).
    sample: str | None = None

    def add(self, level: Level, message: str, config: bool = True) -> None:
        self.findings.append(Finding(level, message, config))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def config_errors(self) -> list[Finding]:
        """Errors a person must fix in the pipeline file (or with ``make suite``)."""
        return [f for f in self.errors if f.config]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        """The report as text: a heading, the sample, one marked line per finding, a verdict."""
        lines = [f"{self.pipeline} ({self.path})"]
        if self.sample:
            lines.append(f"  sample: {self.sample}")
        for f in self.findings:
            first, *rest = f.message.splitlines()
            lines.append(f"  {_MARK[f.level]}  {first}")
            lines += [f"         {line}" for line in rest]
        errors, warnings = len(self.errors), len(self.warnings)
        tail = f", {warnings} warning(s)" if warnings else ""
        if not errors:
            lines.append(f"  => OK{tail}")
        elif self.config_errors:
            lines.append(f"  => {errors} problem(s){tail}: fix {self.path} and run `airloop check` again")
        else:
            lines.append(f"  => the source could not be checked{tail}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "path": str(self.path), "ok": self.ok, "sample": self.sample,
                "findings": [f.__dict__ for f in self.findings]}


# --------------------------------------------------------------------------------------------
# The sample
# --------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    frame: pd.DataFrame | None
    description: str
    problem: str | None = None
    #: A problem of reaching the source (unreadable file, database down) rather than of the file.
    transient: bool = False


def _partition_days(config: PipelineConfig, settings: Settings, before: date | None) -> list[date]:
    """Days a ``{date}`` files source has file(s) for (found by their names; nothing read)."""
    import glob
    import re

    template = str(resolve_source_path(config, settings) / config.source.partition) if config.source.partition \
        else str(resolve_source_path(config, settings))
    head, _, tail = template.partition("{date}")
    days = set()
    for path in glob.glob(glob.escape(head) + "????-??-??" + tail.replace("{date}", "*"), recursive=True):
        found = re.fullmatch(r"\d{4}-\d{2}-\d{2}", path[len(head):len(head) + 10])
        if found and Path(path).is_file():
            try:
                day = date.fromisoformat(found.group(0))
            except ValueError:
                continue
            if before is None or day < before:
                days.add(day)
    return sorted(days)


def _newest_rows(config: PipelineConfig, frame: pd.DataFrame, before: date | None, days: int) -> pd.DataFrame:
    """Rows of the newest ``days`` days before ``before`` (by the timestamp column, when present)."""
    if config.timestamp not in frame.columns:
        return frame.tail(SAMPLE_ROWS)
    ts = to_datetime(frame[config.timestamp])
    if before is not None:
        frame, ts = frame[ts < pd.Timestamp(before, tz="UTC")], ts[ts < pd.Timestamp(before, tz="UTC")]
    if ts.notna().any():
        first = ts.max().floor("D") - pd.Timedelta(days=days - 1)
        frame = frame[(ts >= first) | ts.isna()]
    return frame.tail(SAMPLE_ROWS)


def _sql_sample(config: PipelineConfig, before: date | None) -> pd.DataFrame:
    import sqlalchemy as sa

    from airloop.core.timeutil import day_start
    from airloop.data.sources import sql_engine

    source = config.source
    if source.table is not None:
        schema, _, name = source.table.rpartition(".")
        origin = sa.table(name, schema=schema or None)
    else:
        origin = sa.text(source.query).columns().subquery("airloop_source")
    query = sa.select(sa.literal_column("*")).select_from(origin)
    try:
        with sql_engine(source.conn_id).connect() as conn:
            probe = pd.read_sql_query(query.limit(1), conn)
            if config.timestamp in probe.columns:
                ts = sa.column(config.timestamp)
                query = query.order_by(ts.desc())
                if before is not None:
                    query = query.where(ts < sa.bindparam("end", day_start(before), type_=sa.DateTime(timezone=True)))
            return pd.read_sql_query(query.limit(SAMPLE_ROWS), conn)
    except sa.exc.SQLAlchemyError as err:
        raise ExtractError(f"{str(getattr(err, 'orig', None) or err).strip().splitlines()[0]}") from err


def read_sample(config: PipelineConfig, settings: Settings, before: date | None = None,
                days: int = SAMPLE_DAYS) -> _Sample:
    """A small raw sample of the source: the newest ``days`` partitions (files with ``{date}``),
    the newest rows of the newest files, or a LIMITed query (SQL); only data before ``before``."""
    where = describe_source(config, settings).replace(f"{settings.root}/", "")
    try:
        if config.source.kind == "sql":
            frame = _sql_sample(config, before)
            if frame.empty:
                return _Sample(None, where, f"no rows in {where}")
            return _Sample(frame, f"newest {len(frame)} rows of {where}")
        if config.source.partitioned:
            found = _partition_days(config, settings, before)[-days:]
            if not found:
                return _Sample(None, where, f"no partition found for {where}" + (f" before {before}" if before else ""))
            files = [f for day in found for f in source_files(config, settings, day)]
            frame = read_raw_files(config, files).tail(SAMPLE_ROWS)
            span = found[0].isoformat() if len(found) == 1 else f"{found[0]}..{found[-1]}"
            return _Sample(frame, f"{len(found)} partition(s) {span} of {where}, {len(frame):,} rows")
        files = source_files(config, settings)
        if not files:
            return _Sample(None, where, f"no file found for {where}")
        frame = _newest_rows(config, read_raw_files(config, files[-days:]), before, days)
        return _Sample(frame, f"newest {len(frame):,} rows of {len(files[-days:])} file(s) of {where}")
    except Exception as err:  # noqa: BLE001 - unreadable file, unknown connection, database down
        return _Sample(None, where, f"cannot read {where}: {err}", transient=True)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def _check_search_space(config: PipelineConfig, report: CheckReport) -> None:
    """Every searched parameter exists on its scikit-learn estimator."""
    bad = 0
    for family, params in config.training.search_space.items():
        module, _, name = ESTIMATORS[family][config.task_kind].partition(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
        known = sorted(cls().get_params())
        for param in params:
            if param not in known:
                bad += 1
                report.add("error", f"training.search_space.{family}.{param}: not a parameter of {name}"
                                    f"{did_you_mean(param, known)}")
    if not bad:
        report.add("ok", f"search space: {len(config.training.search_space)} estimator families, every parameter exists")


def _check_suite(config: PipelineConfig, settings: Settings, report: CheckReport) -> None:
    """The stored suite equals what ``make suite`` would write."""
    from airloop.data.validation import build_suite, suite_path

    path = suite_path(config, settings)
    shown = _shown(path, settings)
    try:
        expected = build_suite(config)
    except ConfigError as err:
        report.add("error", str(err))
        return
    if not path.is_file():
        report.add("error", f"no stored suite {shown}: run `make suite`")
        return
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        report.add("error", f"{shown} is not valid JSON: run `make suite`")
        return
    if stored != expected:
        def keys(suite: dict) -> set[str]:
            return {json.dumps([e.get("type"), e.get("kwargs")], sort_keys=True) for e in suite.get("expectations", [])}

        new, gone = len(keys(expected) - keys(stored)), len(keys(stored) - keys(expected))
        report.add("error", f"{shown} is out of date ({new} expectation(s) to add, {gone} to remove): run `make suite`")
    else:
        report.add("ok", f"suite {shown} is up to date ({len(expected['expectations'])} expectations)")


def _check_columns(config: PipelineConfig, frame: pd.DataFrame, report: CheckReport) -> None:
    """Columns exist, parse as their types; categories and classes cover the sample."""
    columns = [str(c) for c in frame.columns]
    configured = configured_columns(config)
    missing = [c for c in configured if c not in frame.columns]
    unused = [c for c in columns if c not in configured]
    for column in missing:
        where = configured[column][0]
        label = where if where.endswith(column) else f"{where} {column!r}"
        report.add("error", f"{label}: column not in the source{did_you_mean(column, unused or columns)}")
    if not missing:
        report.add("ok", f"all {len(configured)} configured columns are in the source")
    if unused:
        report.add("info", f"source columns not used: {', '.join(unused[:15])}{' ...' if len(unused) > 15 else ''}")
    typed_ok = True
    for column, (where, kind) in configured.items():
        if column not in frame.columns or not kind:
            continue
        bad, present, examples = unparsed_values(kind, frame[column])
        if present == 0:
            report.add("warning", f"{where}: no value in the sample (all {len(frame)} rows null)")
        elif bad * 2 > present:
            typed_ok = False
            report.add("error", f"{where}: declared {kind}, but {bad:,} of {present:,} values do not parse as {kind} "
                                f"(e.g. {', '.join(examples)})")
        elif bad:
            typed_ok = False
            report.add("warning", f"{where}: {bad:,} of {present:,} values do not parse as {kind} "
                                  f"(e.g. {', '.join(examples)}): validation fails the days that hold them")
        elif kind == "int" and pd.api.types.is_float_dtype(frame[column].dtype):
            values = frame[column].dropna()
            if (values != values.round()).any():
                report.add("warning", f"{where}: declared int, but values have decimals "
                                      f"(e.g. {values[values != values.round()].iloc[0]!r}): declare float?")
    if typed_ok:
        report.add("ok", "values parse as the declared types")
    declared = [c for c, spec in config.features.items()
                if spec.type == "category" and getattr(spec, "values", None) and c in frame.columns]
    clean = [_check_set(f"features.{c}", frame[c], list(config.features[c].values), "declared values", report)
             for c in declared]
    if declared and all(clean):
        report.add("ok", f"the {len(declared)} category columns hold only declared values")
    if config.task != "regression" and config.classes and config.target in frame.columns:
        _check_set("classes", frame[config.target], list(config.classes), "classes", report, target=config.target)
    elif config.task == "regression" and config.target in frame.columns:
        distinct = frame[config.target].dropna().nunique()
        if 0 < distinct <= 2:
            report.add("warning", f"target {config.target!r} holds {distinct} distinct value(s): a classification task?")


def _check_set(where: str, values: pd.Series, allowed: list[Any], what: str, report: CheckReport,
               target: str | None = None) -> bool:
    """Unseen values are a warning (an error when most rows hold one); declared ones never seen,
    info (a warning for classes). True when every value is allowed."""
    present = values.dropna()
    if present.empty:
        return True
    outside = present[~present.isin(allowed)]
    counts = outside.value_counts()
    seen = ", ".join(f"{v!r} ({n:,})" for v, n in counts.head(8).items())
    subject = f"target {target!r}" if target else where
    if len(outside) * 2 > len(present):
        hint = ""
        if {str(v) for v in counts.index} & {str(c) for c in allowed}:  # 1 vs "1": same text, other type
            def kind(value: Any) -> str:
                return "text" if isinstance(value, str) else "numbers"

            hint = f" (the data holds {kind(counts.index[0])}, the file lists {kind(allowed[0])}: quote or unquote them)"
        report.add("error", f"{subject}: {len(outside):,} of {len(present):,} rows hold values not among the {what} "
                            f"{allowed}: {seen}{hint}")
    elif len(outside):
        report.add("warning", f"{subject}: {len(outside):,} of {len(present):,} rows hold values not among the {what} "
                              f"(validation fails their days): {seen}")
    elif target:
        report.add("ok", f"classes {allowed} match the target {target!r}")
    never = [a for a in allowed if not present.isin([a]).any()]
    if never and len(outside) * 2 <= len(present):
        level = "warning" if target else "info"
        report.add(level, f"{subject}: {what} not seen in the sample: {', '.join(map(repr, never))}")
    return outside.empty


def _shown(path: Path, settings: Settings) -> str:
    try:
        return str(Path(path).resolve().relative_to(settings.root))
    except ValueError:
        return str(path)


def check_config(config: PipelineConfig, settings: Settings, path: Path | None = None, before: date | None = None,
                 source: bool = True) -> CheckReport:
    """Check a loaded pipeline against its source (a sample before ``before``) and its suite.
    ``source=False`` skips reading the source (the file and the suite only)."""
    report = CheckReport(config.name, Path(_shown(path, settings)) if path else Path(config.name))
    report.add("ok", f"the file loads: {config.task}, metric {config.training.metric}, "
                     f"estimators {', '.join(config.training.search_space)}")
    _check_search_space(config, report)
    if source:
        sample = read_sample(config, settings, before=before)
        report.sample = sample.description if sample.frame is not None else None
        if sample.frame is None:
            report.add("error", f"source: {sample.problem}; columns not checked", config=False)
        else:
            _check_columns(config, sample.frame, report)
    _check_suite(config, settings, report)
    return report


def check_pipeline(name_or_path: str | Path, settings: Settings, before: date | None = None,
                   source: bool = True) -> CheckReport:
    """Load one pipeline file (by name or path) and check it; a file that does not load is a
    report with its field errors, never an exception."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix in {".yaml", ".yml"} else settings.pipelines_dir / f"{name_or_path}.yaml"
    try:
        config = load_pipeline_config(path, settings)
    except ConfigError as err:
        report = CheckReport(path.stem, Path(_shown(path, settings)))
        first, *rest = str(err).splitlines()
        report.add("error", "\n".join([first.removeprefix(f"{path}: "), *[r.strip() for r in rest]]))
        return report
    if config.name != path.stem:
        report = CheckReport(path.stem, Path(_shown(path, settings)))
        report.add("error", f"name {config.name!r} must equal the file name {path.stem!r}")
        return report
    return check_config(config, settings, path=path, before=before, source=source)


def check_all(settings: Settings, names: list[str] | None = None, source: bool = True) -> list[CheckReport]:
    """One report per pipeline (``names``, default every file in the pipelines folder)."""
    targets = names or [str(p) for p in pipeline_files(settings)]
    reports = []
    for target in targets:
        try:
            reports.append(check_pipeline(target, settings, source=source))
        except Exception as err:  # noqa: BLE001 - one broken check never hides the other files
            logger.exception("checking %s failed", target)
            report = CheckReport(Path(target).stem, Path(target))
            report.add("error", f"the check itself failed: {type(err).__name__}: {err}", config=False)
            reports.append(report)
    return reports


def ensure_pipeline_ok(config: PipelineConfig, settings: Settings, as_of: date | None = None) -> CheckReport:
    """The check at the start of a training run (sample before ``as_of``): raise
    :class:`ConfigurationError` with the report when the pipeline file is wrong. A source that
    cannot be read or has no data yet is left to the extract (retried, its own message)."""
    report = check_config(config, settings, before=as_of)
    if report.config_errors:
        raise ConfigurationError(f"{config.name}: the pipeline file does not fit its data (no retry: fix the file)\n"
                                 + report.format())
    for finding in report.findings:
        if finding.level in ("warning", "error"):
            logger.warning("%s: %s", config.name, finding.message)
    logger.info("%s: pipeline check passed (%s)", config.name, report.sample)
    return report
