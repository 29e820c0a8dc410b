"""Data validation with Great Expectations 1.x: a suite derived from the pipeline config.

The suite is *derived*, not hand-written: :func:`build_suite` turns a :class:`PipelineConfig`
(feature types, ranges, categories, null budgets, row counts, freshness) plus the explicit
``validation.expectations`` list into a GX ``ExpectationSuite`` (as the JSON dict GX itself
serialises). :func:`write_suite` stores it under ``include/gx/<pipeline>.suite.json`` so the
contract is reviewable in git; :func:`load_suite` refuses a stored suite that no longer matches
the config ("suite out of date: run `make suite`").

:func:`validate_partitions` runs the suite on each day's partition (one GX validation per day,
one ephemeral context per call), writes the full GX results and Data Docs under
``<state>/validation/<pipeline>/<interval end>/`` and returns a :class:`ValidationOutcome` with
human-readable :class:`Failure` records. :func:`quarantine_partitions` copies failed days aside
(never touching the source) so later extracts can skip them (:func:`quarantined_days`).

``great_expectations`` takes seconds to import, so it is imported lazily inside functions.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import ConfigError, Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from great_expectations.data_context import AbstractDataContext

from airloop.core.files import atomic_write
from airloop.data import integrity

logger = logging.getLogger(__name__)


#: Runtime parameter of the freshness expectation (``{"$PARAMETER": ...}`` in the suite).
FRESHNESS_PARAMETER = "freshness_min_ts"


#: GX result format: counts, percentages and up to 20 example unexpected values.
RESULT_FORMAT = "SUMMARY"


#: Name of the Data Docs site (the ephemeral context's default ``local_site`` is never built).
DOCS_SITE = "airloop"


#: pandas dtypes (and, for object columns, per-value Python types) a numeric column may have.
NUMERIC_TYPES: tuple[str, ...] = (
    "int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float", "float16", "float32", "float64",
    "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype",
    "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype",
    "Float32Dtype", "Float64Dtype",
)  # fmt: skip


#: Types a category column may have: object columns of Python strings or pandas' StringDtype.
STRING_TYPES: tuple[str, ...] = ("str", "StringDtype")


#: Types a bool column may have (0/1 integers are accepted too).
BOOL_TYPES: tuple[str, ...] = ("bool", "BooleanDtype", "int", "int8", "int16", "int32", "int64", "Int64Dtype")


_TYPE_NAMES = {NUMERIC_TYPES: "numeric (int/float)", STRING_TYPES: "strings", BOOL_TYPES: "boolean"}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failed expectation on one day, in words a human can act on."""

    day: date
    expectation: str
    column: str | None
    observed: str
    details: str

    @property
    def message(self) -> str:
        """``2026-03-10: expect_... on column 'x' failed: <observed> (<details>)``."""
        where = f" on column '{self.column}'" if self.column else ""
        extra = f" ({self.details})" if self.details else ""
        return f"{self.day.isoformat()}: {self.expectation}{where} failed: {self.observed}{extra}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (day as ISO string)."""
        data = asdict(self)
        data["day"] = self.day.isoformat()
        data["message"] = self.message
        return data


@dataclass
class ValidationOutcome:
    """What :func:`validate_partitions` found, and where the full results are."""

    success: bool
    failed_days: list[date]
    failures: list[Failure]
    result_path: Path
    statistics: dict[str, Any]
    #: Human-readable HTML report (links to the GX Data Docs built next to it).
    report_path: Path | None = None
    #: GX Data Docs index page, or None when they could not be rendered.
    data_docs_path: Path | None = None
    #: :func:`validation_fingerprint` of the suite and source that judged the days.
    suite_fingerprint: str | None = None


# --------------------------------------------------------------------------------------------
# Suite: derive, store, load
# --------------------------------------------------------------------------------------------


def _gx_expectation(kind: str, kwargs: dict[str, Any]) -> Any:
    """Build a GX ``Expectation`` from its snake_case type and kwargs (raises GX errors)."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    return ExpectationConfiguration(type=kind, kwargs=kwargs).to_domain_obj()


def _derived_expectations(config: PipelineConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(type, kwargs)`` pairs derived from the schema, row-count and freshness settings."""
    out: list[tuple[str, dict[str, Any]]] = []
    for column, spec in config.features.items():
        out.append(("expect_column_to_exist", {"column": column}))
        type_list = {"category": STRING_TYPES, "bool": BOOL_TYPES}.get(spec.type, NUMERIC_TYPES)
        out.append(("expect_column_values_to_be_in_type_list", {"column": column, "type_list": list(type_list)}))
        not_null: dict[str, Any] = {"column": column}
        if spec.max_null_fraction > 0:
            not_null["mostly"] = round(1.0 - spec.max_null_fraction, 10)
        out.append(("expect_column_values_to_not_be_null", not_null))
        if spec.min is not None or spec.max is not None:
            between: dict[str, Any] = {"column": column}
            if spec.min is not None:
                between["min_value"] = spec.min
            if spec.max is not None:
                between["max_value"] = spec.max
            out.append(("expect_column_values_to_be_between", between))
        if spec.type == "category" and spec.values is not None:
            # Nulls are ignored by in-set; their share is the not-null expectation's business. A
            # category without declared values has a learned vocabulary: no value set to expect.
            out.append(("expect_column_values_to_be_in_set", {"column": column, "value_set": list(spec.values)}))
        elif spec.type == "bool":
            out.append(("expect_column_values_to_be_in_set", {"column": column, "value_set": [False, True]}))
    for column in (config.timestamp, config.id_column, config.target, config.label_timestamp):
        if column:
            out.append(("expect_column_to_exist", {"column": column}))
    if config.task != "regression" and config.classes:
        out.append(("expect_column_values_to_be_in_set", {"column": config.target, "value_set": list(config.classes)}))
    rows: dict[str, Any] = {"min_value": config.validation.min_rows_per_day}
    if config.validation.max_rows_per_day is not None:
        rows["max_value"] = config.validation.max_rows_per_day
    out.append(("expect_table_row_count_to_be_between", rows))
    out.append(
        ("expect_column_max_to_be_between", {"column": config.timestamp, "min_value": {"$PARAMETER": FRESHNESS_PARAMETER}})
    )
    return out + integrity.integrity_expectations(config)


def _explicit_expectations(config: PipelineConfig) -> list[tuple[str, dict[str, Any]]]:
    """The config's ``validation.expectations``; a bad entry raises :class:`ConfigError`."""
    out: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(config.validation.expectations):
        where = f"pipeline '{config.name}': validation.expectations[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{where}: needs a 'type' (expect_...) and optional 'kwargs', got {entry!r}")
        extra = set(entry) - {"type", "kwargs"}
        if extra:
            raise ConfigError(f"{where} ({entry['type']}): unknown keys {sorted(extra)}; only 'type' and 'kwargs'")
        kwargs = entry.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where} ({entry['type']}): 'kwargs' must be a mapping")
        out.append((entry["type"], dict(kwargs)))
    return out


def build_suite(config: PipelineConfig) -> dict[str, Any]:
    """Return the GX 1.x ExpectationSuite derived from ``config`` (GX's own JSON dict form).

    Per feature column: exists; dtype (numeric / strings / bool); nulls (``mostly = 1 -
    max_null_fraction``); range (min/max); declared categories (nulls allowed there; a category
    column without ``values`` learns its vocabulary in training: no set here). The timestamp, id,
    target (and label timestamp) columns exist; a classification target is in ``classes``. The
    day's row count is within ``validation.min/max_rows_per_day``; the newest timestamp is at
    least the runtime parameter ``freshness_min_ts``. Then the integrity expectations
    (:mod:`airloop.data.integrity`: timestamps inside the partition's day, no whole-row
    duplicates, no class missing that the window makes near-certain), then the explicit
    ``validation.expectations``; an unknown type or bad kwargs raises :class:`ConfigError`
    naming the pipeline and the entry index.
    """
    import great_expectations as gx
    from great_expectations.exceptions import ExpectationNotFoundError

    expectations = [_gx_expectation(kind, kwargs) for kind, kwargs in _derived_expectations(config)]
    for index, (kind, kwargs) in enumerate(_explicit_expectations(config)):
        where = f"pipeline '{config.name}': validation.expectations[{index}] ({kind})"
        try:
            expectations.append(_gx_expectation(kind, kwargs))
        except ExpectationNotFoundError:
            raise ConfigError(f"{where}: unknown expectation type '{kind}' (GX 1.x snake_case names)") from None
        except (ValueError, TypeError) as err:  # pydantic ValidationError is a ValueError
            raise ConfigError(f"{where}: invalid kwargs {kwargs}: {err}") from None
        known = {config.timestamp, config.id_column, config.target, config.label_timestamp, *config.features}
        if "column" in kwargs and kwargs["column"] not in known:
            logger.warning("%s: column %r is not declared in the pipeline config", where, kwargs["column"])
    suite = gx.ExpectationSuite(name=config.name, expectations=expectations)
    # Round-trip through JSON so the dict equals what load_suite reads back from disk.
    return json.loads(json.dumps(suite.to_json_dict(), sort_keys=True))


def suite_path(config: PipelineConfig, settings: Settings) -> Path:
    """Committed suite file: ``<root>/include/gx/<pipeline>.suite.json``."""
    return settings.root / "include" / "gx" / f"{config.name}.suite.json"


def _suite_text(suite: dict[str, Any]) -> str:
    return json.dumps(suite, indent=2, sort_keys=True) + "\n"


def write_suite(config: PipelineConfig, settings: Settings) -> Path:
    """Write :func:`build_suite` to :func:`suite_path` (sorted, stable JSON); return the path."""
    path = suite_path(config, settings)
    atomic_write(path, _suite_text(build_suite(config)).encode())
    logger.info("wrote expectation suite %s", path)
    return path


def load_suite(config: PipelineConfig, settings: Settings) -> dict[str, Any]:
    """Read the committed suite; raise :class:`ConfigError` if missing or out of date."""
    path = suite_path(config, settings)
    if not path.is_file():
        raise ConfigError(f"{path}: expectation suite for pipeline '{config.name}' not found: run `make suite`")
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}): run `make suite`") from None
    expected = build_suite(config)
    if stored != expected:
        stored_types = [e.get("type") for e in stored.get("expectations", [])]
        expected_types = [e["type"] for e in expected["expectations"]]
        raise ConfigError(
            f"{path}: suite out of date: run `make suite` (stored {len(stored_types)} expectations, "
            f"config derives {len(expected_types)}; the pipeline config or GX version changed)"
        )
    return stored


def validation_fingerprint(config: PipelineConfig, suite: dict[str, Any]) -> str:
    """SHA-256 of what judges a day: the suite (derived from the pipeline file, GX version
    included) and the source it reads. Recorded with each quarantined day; a day quarantined
    under another fingerprint is re-validated (:func:`airloop.data.quarantine.revalidate_quarantined`)."""
    what = {"suite": suite, "source": config.source.model_dump(mode="json"), "timestamp": config.timestamp}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def release_hint(pipeline: str) -> str:
    """How a quarantined day of ``pipeline`` gets released (appended to failure messages)."""
    return (f"Quarantined days are re-validated by the next run when the suite or the pipeline file changes; "
            f"to release one by hand once its data is fixed: `airloop release {pipeline} <day>` "
            f"(or `airloop release {pipeline} --revalidate` to re-validate them all now).")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_utc(moment: datetime) -> pd.Timestamp:
    """``moment`` as a tz-aware UTC timestamp (naive values are taken as UTC)."""
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _match_column_tz(frame: pd.DataFrame, column: str, bound: pd.Timestamp) -> pd.Timestamp:
    """Express ``bound`` like the column's timestamps (tz-aware vs naive UTC) so GX can compare."""
    if column in frame.columns and pd.api.types.is_datetime64_any_dtype(frame[column].dtype):
        tz = getattr(frame[column].dtype, "tz", None)
        return bound.tz_convert(tz) if tz is not None else bound.tz_convert("UTC").tz_localize(None)
    return bound


def _new_context(docs_dir: Path | None) -> "AbstractDataContext":
    """A quiet ephemeral GX context, with a filesystem Data Docs site at ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            },
        )
    return context


def _exception_message(exception_info: Any) -> str | None:
    """First exception message in a GX ``exception_info`` (flat or keyed by metric)."""
    if not isinstance(exception_info, dict):
        return None
    if exception_info.get("raised_exception"):
        return str(exception_info.get("exception_message") or "unknown error")
    for value in exception_info.values():
        if isinstance(value, dict) and value.get("raised_exception", True) and (
            value.get("exception_message") or value.get("exception_traceback")
        ):
            return str(value.get("exception_message") or "unknown error")
    return None


def _pct(value: Any) -> str:
    return f"{float(value):.1f}%" if value is not None else "?"


def _examples(result: dict[str, Any], limit: int = 5) -> str:
    """``-1, 'foo'``: distinct examples from GX's sample of unexpected values."""
    values: list[str] = []
    for value in result.get("partial_unexpected_list") or []:
        text = repr(value)
        if text not in values:
            values.append(text)
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def _num(value: Any) -> str:
    """``730`` for 730.0, ``1000000`` for 1e6, other values as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(result: dict[str, Any], context: dict[str, Any]) -> tuple[str, str]:
    """``(observed, details)`` for one failed GX expectation result."""
    cfg = result["expectation_config"]
    kind, kwargs, res = cfg["type"], cfg.get("kwargs", {}), result.get("result") or {}
    error = _exception_message(result.get("exception_info"))
    if error:
        first_line = error.strip().splitlines()[0] if error.strip() else error
        return f"could not be evaluated: {first_line}", "GX raised an error; see result.json"
    described = integrity.describe(kind, kwargs, res, context)
    if described is not None:
        return described
    if kind == "expect_column_to_exist":
        present = context.get("columns", [])
        return "column is missing", f"{len(present)} columns present: {', '.join(present)}"
    if kind == "expect_column_values_to_not_be_null":
        allowed = 1.0 - float(kwargs.get("mostly", 1.0))
        observed = f"{_pct(res.get('unexpected_percent'))} null ({res.get('unexpected_count')} of {res.get('element_count')} rows)"
        return observed, f"allowed {100 * allowed:.1f}%"
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = f"[{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}]"
        observed = f"{_pct(res.get('unexpected_percent'))} of values outside {bounds}"
        return observed, f"unexpected values include {_examples(res)}"
    if kind == "expect_column_values_to_be_in_set":
        observed = f"{_pct(res.get('unexpected_percent'))} of values not in the allowed set"
        return observed, f"unexpected values include {_examples(res)}; allowed: {kwargs.get('value_set')}"
    if kind == "expect_column_values_to_be_in_type_list":
        wanted = _TYPE_NAMES.get(tuple(kwargs.get("type_list") or ()), f"one of {kwargs.get('type_list')}")
        if "observed_value" in res:
            return f"column dtype is {res['observed_value']}", f"expected {wanted}"
        observed = f"{_pct(res.get('unexpected_percent'))} of values have the wrong type"
        return observed, f"expected {wanted}; unexpected values include {_examples(res)}"
    if kind == "expect_table_row_count_to_be_between":
        high = kwargs.get("max_value")
        return f"{res.get('observed_value')} rows", f"expected {kwargs.get('min_value')} to {'any' if high is None else high}"
    if kind == "expect_column_max_to_be_between" and context.get("freshness_column") == kwargs.get("column"):
        bound = context.get("freshness_bound")
        return f"newest value is {res.get('observed_value')}", f"must be at least {bound}: {context.get('freshness_rule')}"
    if kind == "expect_column_values_to_be_unique":
        observed = f"{res.get('unexpected_count')} duplicated values ({_pct(res.get('unexpected_percent'))})"
        return observed, f"examples: {_examples(res)}"
    if "observed_value" in res:
        return f"observed {res['observed_value']}", f"kwargs {_public_kwargs(kwargs)}"
    if "unexpected_percent" in res:
        return f"{_pct(res['unexpected_percent'])} unexpected", f"examples: {_examples(res)}"
    return "failed", f"kwargs {_public_kwargs(kwargs)}"


def _public_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "batch_id"}


def _day_failures(day: date, result: dict[str, Any], context: dict[str, Any]) -> list[Failure]:
    """Failures of one day's GX result, without the noise a missing/mistyped column causes.

    When a column is missing or has the wrong type, the checks on that column that could not
    even be evaluated are folded into the root-cause failure instead of listed one by one.
    """
    failed = [r for r in result.get("results", []) if not r.get("success")]
    exist, typed = "expect_column_to_exist", "expect_column_values_to_be_in_type_list"

    def column_of(r: dict[str, Any]) -> Any:
        return r["expectation_config"].get("kwargs", {}).get("column")

    missing = {column_of(r) for r in failed if r["expectation_config"]["type"] == exist}
    mistyped = {
        column_of(r)
        for r in failed
        if r["expectation_config"]["type"] == typed and not _exception_message(r.get("exception_info"))
    }
    folded: dict[Any, int] = dict.fromkeys(missing | mistyped, 0)
    kept: list[dict[str, Any]] = []
    for r in failed:
        kind, column = r["expectation_config"]["type"], column_of(r)
        errored = _exception_message(r.get("exception_info")) is not None
        listed = [c for c in r["expectation_config"].get("kwargs", {}).get("column_list") or () if c in missing]
        if errored and column is None and listed:  # a multi-column check on a missing column
            column = listed[0]
        if (column in missing and kind != exist) or (column in mistyped and kind != typed and errored):
            folded[column] += 1
            continue
        kept.append(r)
    failures = []
    for r in kept:
        cfg = r["expectation_config"]
        column = cfg.get("kwargs", {}).get("column")
        observed, details = _describe(r, context)
        if folded.get(column) and cfg["type"] in (exist, typed):
            details += f"; {folded[column]} dependent check(s) on this column not evaluated"
            folded[column] = 0
        failures.append(Failure(day=day, expectation=cfg["type"], column=column, observed=observed, details=details))
    return failures


def validate_partitions(
    config: PipelineConfig,
    partitions: dict[date, pd.DataFrame],
    interval_end: datetime,
    settings: Settings,
    suite: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    reference: dict[date, pd.DataFrame] | None = None,
) -> ValidationOutcome:
    """Validate each day's partition with the pipeline's suite; write results and Data Docs.

    One GX validation per day, one ephemeral context for the call. The freshness parameter is
    ``interval_end - freshness_hours`` for the newest day and the day's own start for the others
    (which only checks the day is not empty/misdated). Each day's timestamps must lie inside
    the day, and a classification day's labels must hold the classes the other days (and the
    ``reference`` days, read for that only) make near-certain (:mod:`airloop.data.integrity`).
    ``suite`` defaults to the committed suite
    (:func:`load_suite`). The full GX results for all days go to
    ``validation_dir/<pipeline>/<interval_end date>/result.json`` (atomic, overwritten on a
    re-run), with ``report.html`` and GX Data Docs (``data_docs/index.html``) beside it, or to
    ``out_dir`` when given (re-validating quarantined days must not overwrite a run's results).
    Quarantining refuses days whose failures are the pipeline file's
    (:func:`airloop.data.check.config_problems`).
    """
    import great_expectations as gx

    if not partitions:
        raise ValueError(f"pipeline '{config.name}': no partitions to validate")
    for day, frame in partitions.items():
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"pipeline '{config.name}': partition {day} is {type(frame).__name__}, not a DataFrame")
    suite_dict = load_suite(config, settings) if suite is None else suite
    end = _as_utc(interval_end)
    freshness_bound = end - timedelta(hours=config.validation.freshness_hours)
    out_dir = out_dir or settings.validation_dir / config.name / end.date().isoformat()
    started = time.perf_counter()
    context, gx_suite, docs_tmp = _suite_context(config, suite_dict, out_dir)
    batch = context.data_sources.add_pandas("airloop").add_dataframe_asset(config.name)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(
            name=f"{config.name}-daily",
            data=batch.add_batch_definition_whole_dataframe("partition"),
            suite=gx_suite,
        )
    )
    from great_expectations.core.run_identifier import RunIdentifier

    newest = max(partitions)
    counts = integrity.class_counts(config, {**(reference or {}), **partitions})
    results: dict[str, Any] = {}
    failures: list[Failure] = []
    per_day: dict[str, Any] = {}
    for day in sorted(partitions):
        frame = partitions[day]
        if day == newest:
            bound = freshness_bound
            rule = f"{config.validation.freshness_hours:g}h before the interval end {end.isoformat()}"
        else:
            bound = _as_utc(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
            rule = "the start of the day (only the newest day is checked for freshness)"
        day_started = time.perf_counter()
        params = {FRESHNESS_PARAMETER: bound, **integrity.day_parameters(config, day, counts)}
        params = {k: _match_column_tz(frame, config.timestamp, v) if isinstance(v, pd.Timestamp) else v
                  for k, v in params.items()}
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=params,
            result_format=RESULT_FORMAT,
            run_id=RunIdentifier(run_name=f"{config.name}-{day.isoformat()}"),
        )
        elapsed = time.perf_counter() - day_started
        result_json = result.to_json_dict()
        results[day.isoformat()] = result_json
        context_info = {
            "columns": [str(c) for c in frame.columns],
            "freshness_column": config.timestamp,
            "freshness_bound": bound.isoformat(),
            "freshness_rule": rule,
            "day": day.isoformat(),
            "day_bounds": [b.isoformat() for b in integrity.day_bounds(day)],
            "id_column": config.id_column,
            "classes": integrity.class_context(config, day, counts) if not result.success else {},
            "expected_classes": params.get(integrity.CLASSES_PARAMETER),
            "class_absence_p": config.validation.class_absence_p,
        }
        day_failures = _day_failures(day, result_json, context_info) if not result.success else []
        failures.extend(day_failures)
        stats = result_json.get("statistics", {})
        per_day[day.isoformat()] = {
            "rows": len(frame),
            "success": bool(result.success),
            "evaluated_expectations": stats.get("evaluated_expectations"),
            "unsuccessful_expectations": stats.get("unsuccessful_expectations"),
            "duration_s": round(elapsed, 4),
        }
        logger.info(
            "%s %s: %s (%d rows, %s/%s expectations failed, %.3fs)",
            config.name, day, "passed" if result.success else "FAILED", len(frame),
            stats.get("unsuccessful_expectations"), stats.get("evaluated_expectations"), elapsed,
        )  # fmt: skip

    failed_days = sorted(date.fromisoformat(d) for d, s in per_day.items() if not s["success"])
    statistics = {
        "interval_end": end.isoformat(),
        "days": len(per_day),
        "failed_days": len(failed_days),
        "rows": sum(s["rows"] for s in per_day.values()),
        "evaluated_expectations": sum(s["evaluated_expectations"] or 0 for s in per_day.values()),
        "unsuccessful_expectations": sum(s["unsuccessful_expectations"] or 0 for s in per_day.values()),
        "duration_s": round(time.perf_counter() - started, 4),
        "per_day": per_day,
    }
    result_path = out_dir / "result.json"
    document = {
        "pipeline": config.name,
        "suite": suite_dict.get("name"),
        "interval_end": end.isoformat(),
        "freshness_min_ts": freshness_bound.isoformat(),
        "success": not failed_days,
        "failed_days": [d.isoformat() for d in failed_days],
        "failures": [f.to_json() for f in failures],
        "statistics": statistics,
        "results": results,
    }
    atomic_write(result_path, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode())
    docs_index = _build_data_docs(context, docs_tmp, out_dir / "data_docs")
    outcome = ValidationOutcome(
        success=not failed_days,
        failed_days=failed_days,
        failures=failures,
        result_path=result_path,
        statistics=statistics,
        data_docs_path=docs_index,
        suite_fingerprint=validation_fingerprint(config, suite_dict),
    )
    outcome.report_path = _write_report(config, outcome, end, out_dir / "report.html")
    if failures:
        logger.warning("%s: validation failed\n%s\n%s", config.name, format_failures(outcome), release_hint(config.name))
    logger.info("%s: validation results in %s", config.name, result_path)
    return outcome


def _build_data_docs(context: "AbstractDataContext", tmp_dir: Path, target: Path) -> Path | None:
    """Render GX Data Docs into ``tmp_dir`` then move them to ``target`` (replacing old docs).

    Static assets the pages never reference (GX ships ~4 MB of tutorial GIFs and fonts) are
    dropped. Returns the index page, or None (logged) if GX could not render them.
    """
    try:
        context.build_data_docs(site_names=[DOCS_SITE])
    except Exception:  # rendering is a convenience; the JSON results are the record
        logger.warning("could not render GX Data Docs; see report.html and result.json", exc_info=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return None
    _prune_static(tmp_dir)
    shutil.rmtree(target, ignore_errors=True)
    tmp_dir.replace(target)
    return target / "index.html"


def _prune_static(site: Path) -> None:
    """Delete files under ``site/static`` that no page or stylesheet of the site mentions."""
    static = site / "static"
    if not static.is_dir():
        return
    text = "".join(p.read_text(errors="ignore") for p in site.rglob("*") if p.suffix in {".html", ".css"})
    for path in sorted(static.rglob("*"), reverse=True):
        if path.is_file() and path.suffix != ".css" and path.name not in text:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _write_report(config: PipelineConfig, outcome: ValidationOutcome, end: pd.Timestamp, path: Path) -> Path:
    """Write a small self-contained HTML summary (per-day table and failures)."""
    esc = html.escape
    rows = "".join(
        f"<tr class='{'ok' if s['success'] else 'bad'}'><td>{esc(d)}</td><td>{'passed' if s['success'] else 'FAILED'}</td>"
        f"<td>{s['rows']}</td><td>{s['unsuccessful_expectations']}/{s['evaluated_expectations']}</td></tr>"
        for d, s in outcome.statistics["per_day"].items()
    )
    items = "".join(f"<li>{esc(f.message)}</li>" for f in outcome.failures) or "<li>none</li>"
    docs = (
        f"<p><a href='data_docs/index.html'>Great Expectations Data Docs</a> · "
        f"<a href='{esc(outcome.result_path.name)}'>result.json</a></p>"
        if outcome.data_docs_path
        else f"<p><a href='{esc(outcome.result_path.name)}'>result.json</a> (Data Docs could not be rendered)</p>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(config.name)} validation {esc(end.date().isoformat())}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.bad{background:#fdd}.ok{background:#dfd}</style></head><body>"
        f"<h1>{esc(config.name)}: {'passed' if outcome.success else 'FAILED'}</h1>"
        f"<p>Interval end {esc(end.isoformat())}</p>{docs}"
        "<table><tr><th>day</th><th>result</th><th>rows</th><th>failed/evaluated</th></tr>"
        f"{rows}</table><h2>Failures</h2><ul>{items}</ul>"
        + (f"<p>{esc(release_hint(config.name))}</p>" if outcome.failures else "") + "</body></html>\n"
    )
    atomic_write(path, page.encode())
    return path


def format_failures(outcome: ValidationOutcome) -> str:
    """One line per failure, e.g. ``2026-03-10: expect_column_values_to_not_be_null on column
    'claim_amount' failed: 40.3% null (174 of 434 rows) (allowed 1.0%)``."""
    if not outcome.failures:
        return "all expectations passed"
    return "\n".join(f.message for f in outcome.failures)


# --------------------------------------------------------------------------------------------
# Served traffic: the suite's feature expectations on one interval's logged features
# --------------------------------------------------------------------------------------------

#: Keys of expectation kwargs that name columns.
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list", "column_set")


def _expectation_columns(kwargs: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for key in _COLUMN_KWARGS:
        value = kwargs.get(key)
        names.extend([value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)])
    return names


def traffic_suite(config: PipelineConfig, suite: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The part of the pipeline's suite that applies to served traffic, and what was left out.

    Served traffic holds the features only, as requests sent them. Kept: every expectation whose
    columns are all features (exists, type, nulls, range, declared values, and explicit ones on
    features). Left out (``[{"type", "column", "why"}]``): expectations on the timestamp, id,
    target and label-timestamp columns (not served: freshness, id uniqueness, the classes) and
    table-level ones (the row count bounds a source partition, not a day's traffic: volume is
    monitored as ``volume_ratio``)."""
    features = set(config.features)
    kept, skipped = [], []
    for expectation in suite.get("expectations", []):
        columns = _expectation_columns(expectation.get("kwargs") or {})
        if columns and set(columns) <= features:
            kept.append(expectation)
            continue
        outside = [c for c in columns if c not in features]
        why = (f"not a served feature: {', '.join(outside)}" if outside
               else "table-level: bounds a source partition, not served traffic")
        skipped.append({"type": expectation.get("type"), "column": ", ".join(columns) or None, "why": why})
    return {**suite, "name": f"{suite.get('name', config.name)}.traffic", "expectations": kept}, skipped


def _suite_context(config: PipelineConfig, suite_dict: dict[str, Any], out_dir: Path):
    """(ephemeral GX context, the suite added to it, its temporary Data Docs folder) of one
    validation call writing under ``out_dir``. Raises :class:`ConfigError` when GX rejects an
    expectation of the stored suite."""
    import great_expectations as gx

    out_dir.mkdir(parents=True, exist_ok=True)
    docs_tmp = out_dir / f".data_docs.{os.getpid()}.tmp"
    shutil.rmtree(docs_tmp, ignore_errors=True)
    context = _new_context(docs_tmp)
    gx_suite = context.suites.add(gx.ExpectationSuite(**json.loads(json.dumps(suite_dict))))
    if len(gx_suite.expectations) != len(suite_dict.get("expectations", [])):
        raise ConfigError(f"pipeline '{config.name}': GX rejected some expectations of the stored suite (see log)")
    return context, gx_suite, docs_tmp


def validate_traffic(config: PipelineConfig, frame: pd.DataFrame, day: date, settings: Settings, out_dir: Path,
                     suite: dict[str, Any] | None = None) -> ValidationOutcome:
    """Validate one interval's served features (``frame``: one column per feature, values as the
    requests sent them) with the feature expectations of the pipeline's suite
    (:func:`traffic_suite`; ``suite`` defaults to the committed one, :func:`load_suite`).

    One ephemeral GX context and one validation, as :func:`validate_partitions` runs a day; the
    GX result goes to ``out_dir/result.json`` (with the left-out expectations under
    ``"skipped"``) and the Data Docs to ``out_dir/data_docs/``. ``day`` names the interval in the
    failures (:class:`Failure`)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    suite_dict, skipped = traffic_suite(config, load_suite(config, settings) if suite is None else suite)
    started = time.perf_counter()
    context, gx_suite, docs_tmp = _suite_context(config, suite_dict, out_dir)
    asset = context.data_sources.add_pandas("airloop").add_dataframe_asset(f"{config.name}-traffic")
    definition = context.validation_definitions.add(gx.ValidationDefinition(
        name=f"{config.name}-traffic", data=asset.add_batch_definition_whole_dataframe("traffic"), suite=gx_suite))
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT,
                            run_id=RunIdentifier(run_name=f"{config.name}-traffic-{day.isoformat()}"))
    result_json = result.to_json_dict()
    failures = [] if result.success else _day_failures(day, result_json, {"columns": [str(c) for c in frame.columns]})
    stats = result_json.get("statistics", {})
    statistics = {
        "rows": len(frame),
        "evaluated_expectations": stats.get("evaluated_expectations"),
        "unsuccessful_expectations": stats.get("unsuccessful_expectations"),
        "skipped_expectations": len(skipped),
        "duration_s": round(time.perf_counter() - started, 4),
    }
    result_path = out_dir / "result.json"
    document = {"pipeline": config.name, "suite": suite_dict["name"], "day": day.isoformat(),
                "success": bool(result.success), "failures": [f.to_json() for f in failures],
                "statistics": statistics, "skipped": skipped, "results": {day.isoformat(): result_json}}
    atomic_write(result_path, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode())
    docs_index = _build_data_docs(context, docs_tmp, out_dir / "data_docs")
    statistics["duration_s"] = round(time.perf_counter() - started, 4)
    logger.info("%s traffic of %s: %s (%d rows, %s/%s expectations failed, %d not applicable, %.2fs)",
                config.name, day, "passed" if result.success else "FAILED", len(frame),
                stats.get("unsuccessful_expectations"), stats.get("evaluated_expectations"), len(skipped),
                statistics["duration_s"])
    return ValidationOutcome(success=bool(result.success), failed_days=[] if result.success else [day],
                             failures=failures, result_path=result_path, statistics=statistics,
                             data_docs_path=docs_index, suite_fingerprint=validation_fingerprint(config, suite_dict))

