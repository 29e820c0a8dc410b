"""Tests for airloop.data.validation: the derived GX suite, per-day validation, reports, quarantine.

Real Great Expectations 1.x throughout (no mocks). Validation runs that several tests inspect
are computed once per module, since importing GX and building contexts is the slow part.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from airloop.core.pipeline import PipelineConfig, load_pipeline_config, parse_pipeline_config
from airloop.core.settings import ConfigError, Settings, load_settings
from airloop.data.quarantine import quarantine_partitions, quarantined_days
from airloop.data.simulator import generate_day
from airloop.data.validation import (
    FRESHNESS_PARAMETER,
    NUMERIC_TYPES,
    STRING_TYPES,
    ValidationOutcome,
    build_suite,
    format_failures,
    load_suite,
    suite_path,
    validate_partitions,
    write_suite,
)

REPO = Path("/work/main")
GOOD_DAY = date(2026, 2, 10)
BAD_DAY = date(2026, 3, 10)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings({"AIRLOOP_HOME": str(REPO), "AIRLOOP_STATE_DIR": str(tmp_path_factory.mktemp("state"))})


@pytest.fixture(scope="module")
def config(settings: Settings) -> PipelineConfig:
    return load_pipeline_config("claims_fraud", settings)


@pytest.fixture(scope="module")
def suite(config: PipelineConfig) -> dict:
    return build_suite(config)


def _end_of(day: date) -> datetime:
    """Midnight after ``day`` (UTC): the interval end of a daily run for ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + pd.Timedelta(days=1)


def _find(suite: dict, kind: str, column: str | None = None) -> list[dict]:
    return [
        e["kwargs"]
        for e in suite["expectations"]
        if e["type"] == kind and (column is None or e["kwargs"].get("column") == column)
    ]


def _failed(outcome: ValidationOutcome) -> set[tuple[date, str, str | None]]:
    return {(f.day, f.expectation, f.column) for f in outcome.failures}


@pytest.fixture(scope="module")
def bad_run(config: PipelineConfig, settings: Settings) -> tuple[dict[date, pd.DataFrame], ValidationOutcome]:
    """A good day followed by the scripted bad-data day, validated at the bad day's end."""
    partitions = {date(2026, 3, 9): generate_day(date(2026, 3, 9)), BAD_DAY: generate_day(BAD_DAY)}
    return partitions, validate_partitions(config, partitions, _end_of(BAD_DAY), settings)


# --------------------------------------------------------------------------------------------
# Suite
# --------------------------------------------------------------------------------------------


def test_build_suite_derives_expectations_from_config(config: PipelineConfig, suite: dict) -> None:
    assert suite["name"] == "claims_fraud"
    for column in config.features:
        assert _find(suite, "expect_column_to_exist", column), column
        assert len(_find(suite, "expect_column_values_to_not_be_null", column)) == 1, column
    for column in ("claim_ts", "claim_id", "is_fraud", "label_ts"):
        assert _find(suite, "expect_column_to_exist", column), column

    assert _find(suite, "expect_column_values_to_be_in_type_list", "claim_amount")[0]["type_list"] == list(NUMERIC_TYPES)
    assert _find(suite, "expect_column_values_to_be_in_type_list", "customer_age")[0]["type_list"] == list(NUMERIC_TYPES)
    assert _find(suite, "expect_column_values_to_be_in_type_list", "region")[0]["type_list"] == list(STRING_TYPES)
    assert _find(suite, "expect_column_values_to_not_be_null", "claim_amount") == [{"column": "claim_amount", "mostly": 0.99}]
    assert _find(suite, "expect_column_values_to_not_be_null", "customer_age") == [{"column": "customer_age"}]
    assert _find(suite, "expect_column_values_to_be_between", "days_to_report") == [
        {"column": "days_to_report", "min_value": 0.0, "max_value": 730.0}
    ]
    assert _find(suite, "expect_column_values_to_be_in_set", "police_report") == [
        {"column": "police_report", "value_set": ["yes", "no", "unknown"]}
    ]
    assert _find(suite, "expect_column_values_to_be_in_set", "is_fraud") == [{"column": "is_fraud", "value_set": [0, 1]}]
    assert _find(suite, "expect_table_row_count_to_be_between") == [{"min_value": 150, "max_value": 5000}]
    assert _find(suite, "expect_column_max_to_be_between", "claim_ts") == [
        {"column": "claim_ts", "min_value": {"$PARAMETER": FRESHNESS_PARAMETER}}
    ]
    # the explicit expectations from the YAML come last, in order
    assert [(e["type"], e["kwargs"]) for e in suite["expectations"][-2:]] == [
        ("expect_column_values_to_be_unique", {"column": "claim_id"}),
        ("expect_column_values_to_not_be_null", {"column": "claim_ts"}),
    ]


def test_committed_suite_equals_build_suite(config: PipelineConfig, settings: Settings, suite: dict) -> None:
    path = suite_path(config, settings)
    assert path == REPO / "include" / "gx" / "claims_fraud.suite.json"
    stored = json.loads(path.read_text())
    assert stored == suite, "include/gx/claims_fraud.suite.json is stale: run `make suite`"
    assert path.read_text() == json.dumps(suite, indent=2, sort_keys=True) + "\n"
    assert load_suite(config, settings) == suite


def test_load_suite_rejects_missing_and_stale_suites(config: PipelineConfig, tmp_path: Path) -> None:
    other = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    with pytest.raises(ConfigError, match="not found: run `make suite`"):
        load_suite(config, other)
    path = write_suite(config, other)
    assert path == tmp_path / "include" / "gx" / "claims_fraud.suite.json"
    assert load_suite(config, other)["name"] == "claims_fraud"
    stale = json.loads(path.read_text())
    stale["expectations"] = stale["expectations"][:-1]
    path.write_text(json.dumps(stale))
    with pytest.raises(ConfigError, match="suite out of date: run `make suite`"):
        load_suite(config, other)


def _config_with_expectations(expectations: list) -> PipelineConfig:
    raw = yaml.safe_load((REPO / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    raw["validation"]["expectations"] = expectations
    return parse_pipeline_config(raw)


def test_unknown_explicit_expectation_type_raises_config_error() -> None:
    config = _config_with_expectations(
        [{"type": "expect_column_values_to_be_unique", "kwargs": {"column": "claim_id"}},
         {"type": "expect_column_to_be_awesome", "kwargs": {"column": "claim_id"}}]
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"claims_fraud.*expectations\[1\].*expect_column_to_be_awesome"):
        build_suite(config)


def test_explicit_expectation_with_bad_kwargs_raises_config_error() -> None:
    config = _config_with_expectations([{"type": "expect_column_values_to_be_unique", "kwargs": {"colum": "claim_id"}}])
    with pytest.raises(ConfigError, match=r"expectations\[0\].*expect_column_values_to_be_unique.*invalid kwargs"):
        build_suite(config)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_good_day_passes(config: PipelineConfig, settings: Settings) -> None:
    frame = generate_day(GOOD_DAY)
    outcome = validate_partitions(config, {GOOD_DAY: frame}, _end_of(GOOD_DAY), settings)
    assert outcome.success, format_failures(outcome)
    assert outcome.failed_days == [] and outcome.failures == []
    assert outcome.result_path == settings.validation_dir / "claims_fraud" / "2026-02-11" / "result.json"
    document = json.loads(outcome.result_path.read_text())
    assert document["success"] is True and list(document["results"]) == ["2026-02-10"]
    day_stats = outcome.statistics["per_day"]["2026-02-10"]
    assert day_stats["rows"] == len(frame) and day_stats["unsuccessful_expectations"] == 0
    assert day_stats["evaluated_expectations"] == len(load_suite(config, settings)["expectations"])
    assert format_failures(outcome) == "all expectations passed"


def test_bad_day_fails_naming_columns(bad_run: tuple, settings: Settings) -> None:
    _, outcome = bad_run
    assert not outcome.success
    assert outcome.failed_days == [BAD_DAY]
    assert _failed(outcome) == {
        (BAD_DAY, "expect_column_values_to_not_be_null", "claim_amount"),
        (BAD_DAY, "expect_column_values_to_not_be_null", "police_report"),
        (BAD_DAY, "expect_column_values_to_be_between", "days_to_report"),
    }
    lines = format_failures(outcome).splitlines()
    assert len(lines) == 3
    claim = next(line for line in lines if "'claim_amount'" in line)
    assert claim.startswith("2026-03-10: expect_column_values_to_not_be_null on column 'claim_amount' failed: ")
    assert "% null" in claim and "allowed 1.0%" in claim
    null_pct = float(claim.split("failed: ")[1].split("%")[0])
    assert 30 < null_pct < 50
    days_line = next(line for line in lines if "'days_to_report'" in line)
    assert "outside [0, 730]" in days_line and "-1" in days_line


def test_bad_day_writes_result_json_and_reports(bad_run: tuple, settings: Settings) -> None:
    _, outcome = bad_run
    folder = settings.validation_dir / "claims_fraud" / "2026-03-11"
    assert outcome.result_path == folder / "result.json"
    document = json.loads(outcome.result_path.read_text())
    assert document["success"] is False and document["failed_days"] == ["2026-03-10"]
    assert set(document["results"]) == {"2026-03-09", "2026-03-10"}
    assert document["results"]["2026-03-09"]["success"] is True
    assert document["results"]["2026-03-10"]["success"] is False
    assert outcome.report_path == folder / "report.html"
    report = outcome.report_path.read_text()
    assert "claim_amount" in report and "FAILED" in report
    # GX Data Docs render from the ephemeral context into the interval's folder
    assert outcome.data_docs_path == folder / "data_docs" / "index.html"
    assert outcome.data_docs_path.is_file()
    assert list((folder / "data_docs" / "validations").rglob("*.html"))
    assert not list(folder.glob(".*tmp*"))


def test_rerun_overwrites_same_files(config: PipelineConfig, settings: Settings, bad_run: tuple) -> None:
    partitions, first = bad_run
    folder = first.result_path.parent
    before = sorted(p.relative_to(folder) for p in folder.rglob("*") if "validations" not in p.parts)
    again = validate_partitions(config, partitions, _end_of(BAD_DAY), settings)
    after = sorted(p.relative_to(folder) for p in folder.rglob("*") if "validations" not in p.parts)
    assert again.result_path == first.result_path and before == after
    assert len(list((folder / "data_docs" / "validations").rglob("*.html"))) == 2  # one page per day
    assert [f.message for f in again.failures] == [f.message for f in first.failures]


@pytest.mark.parametrize(
    ("breakage", "expectation", "column", "fragment", "n_failures"),
    [
        (lambda f: f.drop(columns=["claim_amount"]), "expect_column_to_exist", "claim_amount", "column is missing", 1),
        (lambda f: f.drop(columns=["claim_ts"]), "expect_column_to_exist", "claim_ts", "column is missing", 1),
        (
            lambda f: f.assign(customer_age=f["customer_age"].astype(str)),
            "expect_column_values_to_be_in_type_list",
            "customer_age",
            "100.0% of values have the wrong type (expected numeric",
            1,
        ),
        (
            lambda f: f.assign(region=1),
            "expect_column_values_to_be_in_type_list",
            "region",
            "column dtype is int64 (expected strings)",
            2,  # plus expect_column_values_to_be_in_set, which still ran and failed
        ),
    ],
    ids=["dropped-feature", "dropped-timestamp", "numeric-as-strings", "category-as-int"],
)
def test_broken_column_fails_naming_it(
    config: PipelineConfig,
    settings: Settings,
    breakage,
    expectation: str,
    column: str,
    fragment: str,
    n_failures: int,
) -> None:
    frame = breakage(generate_day(GOOD_DAY))
    outcome = validate_partitions(config, {GOOD_DAY: frame}, _end_of(GOOD_DAY), settings)
    assert outcome.failed_days == [GOOD_DAY]
    root = [f for f in outcome.failures if f.expectation == expectation and f.column == column]
    assert len(root) == 1, format_failures(outcome)
    assert fragment in root[0].message
    assert f"on column '{column}'" in format_failures(outcome)
    # checks that could not even run on the broken column are folded into the root failure
    assert len(outcome.failures) == n_failures, format_failures(outcome)
    assert all(f.column == column for f in outcome.failures), format_failures(outcome)
    if n_failures == 1:
        assert "dependent check(s) on this column not evaluated" in root[0].details


def test_too_small_partition_fails_row_count(config: PipelineConfig, settings: Settings) -> None:
    frame = generate_day(GOOD_DAY).head(40)
    outcome = validate_partitions(config, {GOOD_DAY: frame}, _end_of(GOOD_DAY), settings)
    assert _failed(outcome) == {(GOOD_DAY, "expect_table_row_count_to_be_between", None)}
    assert "failed: 40 rows (expected 150 to 5000)" in format_failures(outcome)


@pytest.mark.parametrize("naive", [False, True], ids=["utc-timestamps", "naive-timestamps"])
def test_stale_data_fails_freshness_only_on_newest_day(config: PipelineConfig, settings: Settings, naive: bool) -> None:
    older, newest = date(2026, 2, 9), GOOD_DAY
    partitions = {older: generate_day(older), newest: generate_day(newest)}
    if naive:  # naive timestamps are UTC wall time; comparing must not raise tz errors
        for frame in partitions.values():
            frame["claim_ts"] = frame["claim_ts"].dt.tz_localize(None)
    # 2026-02-10 23:5x is more than 48h before the interval end: only the newest day is
    # checked for freshness; the older day is only checked against its own start.
    stale = validate_partitions(config, partitions, datetime(2026, 2, 13, 6, tzinfo=timezone.utc), settings)
    assert _failed(stale) == {(newest, "expect_column_max_to_be_between", "claim_ts")}, format_failures(stale)
    assert "must be at least 2026-02-11T06:00:00" in stale.failures[0].details
    assert "48h before the interval end" in stale.failures[0].details


def test_no_partitions_is_an_error(config: PipelineConfig, settings: Settings) -> None:
    with pytest.raises(ValueError, match="no partitions"):
        validate_partitions(config, {}, _end_of(GOOD_DAY), settings)


# --------------------------------------------------------------------------------------------
# Quarantine
# --------------------------------------------------------------------------------------------


def test_quarantine_copies_failed_day_and_leaves_source(config: PipelineConfig, settings: Settings, bad_run: tuple) -> None:
    partitions, outcome = bad_run
    before = {day: frame.copy(deep=True) for day, frame in partitions.items()}
    assert quarantined_days(config, settings) == set()

    written = quarantine_partitions(config, partitions, outcome, settings)
    folder = settings.quarantine_dir / "claims_fraud" / "2026-03-10"
    assert written == [folder / "data.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(written[0]), partitions[BAD_DAY])
    reason = json.loads((folder / "reason.json").read_text())
    assert reason["day"] == "2026-03-10" and reason["result_path"] == str(outcome.result_path)
    assert reason["interval_end"] == "2026-03-11T00:00:00+00:00"
    assert {f["column"] for f in reason["failures"]} == {"claim_amount", "police_report", "days_to_report"}
    assert quarantined_days(config, settings) == {BAD_DAY}

    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert quarantine_partitions(config, partitions, outcome, settings) == written
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    for day, frame in partitions.items():
        pd.testing.assert_frame_equal(frame, before[day])
    pd.testing.assert_frame_equal(partitions[BAD_DAY], generate_day(BAD_DAY))


def test_quarantine_keeps_rows_pyarrow_cannot_type(config: PipelineConfig, tmp_path: Path) -> None:
    settings = load_settings({"AIRLOOP_HOME": str(REPO), "AIRLOOP_STATE_DIR": str(tmp_path)})
    frame = generate_day(GOOD_DAY)
    frame["claim_amount"] = frame["claim_amount"].astype(object).where(frame.index % 2 == 0, "n/a")
    outcome = validate_partitions(config, {GOOD_DAY: frame}, _end_of(GOOD_DAY), settings)
    assert "'claim_amount'" in format_failures(outcome)
    [path] = quarantine_partitions(config, {GOOD_DAY: frame}, outcome, settings)
    stored = pd.read_parquet(path)
    assert len(stored) == len(frame) and (stored["claim_amount"] == "n/a").sum() == (frame["claim_amount"] == "n/a").sum()
    assert json.loads((path.parent / "reason.json").read_text())["stringified_columns"] == ["claim_amount"]
    assert quarantined_days(config, settings) == {GOOD_DAY}
