"""Quarantine decisions: a pipeline-file mistake never quarantines data, quarantined days are
re-validated when the suite or the file changes, and a day can be released by hand.

The user's report, replayed on the claims simulator (real GX, real files): a misspelled column
quarantined every good day, and after the fix the run failed with ``no partitions`` because the
days were still quarantined.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from airloop.core.pipeline import ConfigurationError, PipelineConfig, load_pipeline_config, parse_pipeline_config
from airloop.core.settings import Settings
from airloop.data.quarantine import (
    quarantine_partitions,
    quarantine_reason,
    quarantined_days,
    release_day,
    revalidate_quarantined,
)
from airloop.data.sources import ExtractError, read_days
from airloop.data.validation import validate_partitions, validation_fingerprint, write_suite
from tests.unit.data.test_check import make_project

FIRST, AS_OF = date(2026, 3, 5), date(2026, 3, 12)
DAYS = [FIRST + timedelta(days=i) for i in range(7)]  # 03-05 .. 03-11; 03-10 is the scripted bad day
BAD_DAY = date(2026, 3, 10)
GOOD_DAYS = [d for d in DAYS if d != BAD_DAY]


@pytest.fixture()
def project(tmp_path) -> Settings:
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    settings = make_project(tmp_path, days=0)
    config = load_pipeline_config("claims_fraud", settings)
    write_history(resolve_source_path(config, settings), start=FIRST, days=len(DAYS), pattern=config.source.partition)
    return settings


def edited(settings: Settings, edit) -> PipelineConfig:
    """The claims pipeline with ``edit(raw)`` applied, its suite stored (as after `make suite`)."""
    raw = yaml.safe_load((settings.pipelines_dir / "claims_fraud.yaml").read_text())
    edit(raw)
    config = parse_pipeline_config(raw)
    write_suite(config, settings)
    return config


def run_validation(config: PipelineConfig, settings: Settings, days: list[date] = DAYS):
    partitions = read_days(config, days, settings)
    end = datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=timezone.utc)
    return partitions, validate_partitions(config, partitions, end, settings)


def test_a_column_missing_from_every_day_is_a_configuration_error_not_bad_data(project):
    def misspell(raw):
        raw["features"]["claim_amout"] = raw["features"].pop("claim_amount")

    config = edited(project, misspell)
    partitions, outcome = run_validation(config, project)
    assert outcome.failed_days == DAYS  # GX fails every day on the missing column...
    with pytest.raises(ConfigurationError) as err:
        quarantine_partitions(config, partitions, outcome, project)
    # ...but nothing is quarantined: the file is wrong, and the message names the fix
    assert quarantined_days(config, project) == set()
    text = str(err.value)
    assert "the pipeline file does not fit the data of any day, so no day was quarantined" in text
    assert "features.claim_amout: column 'claim_amout' is missing from all 7 day(s) of the window" in text
    assert "did you mean 'claim_amount'?" in text and "airloop check claims_fraud" in text


def test_a_bad_day_among_good_ones_is_still_quarantined_with_its_fingerprint(project):
    config = load_pipeline_config("claims_fraud", project)
    partitions, outcome = run_validation(config, project)
    assert outcome.failed_days == [BAD_DAY]
    [path] = quarantine_partitions(config, partitions, outcome, project)
    reason = json.loads((path.parent / "reason.json").read_text())
    assert reason["suite_fingerprint"] == outcome.suite_fingerprint
    assert outcome.suite_fingerprint == validation_fingerprint(config, json.loads(
        (project.root / "include" / "gx" / "claims_fraud.suite.json").read_text()))
    assert reason["release"] == "airloop release claims_fraud 2026-03-10"
    report = outcome.report_path.read_text()
    assert "airloop release claims_fraud &lt;day&gt;" in report


def test_days_quarantined_by_a_wrong_file_are_released_when_it_is_fixed(project):
    """A typo in a range (max 7 for 730) fails every day on the data itself, so the days are
    quarantined; once the file and its suite are fixed, the next run re-validates and releases
    them, and keeps the day that is really bad."""
    wrong = edited(project, lambda raw: raw["features"]["days_to_report"].update(max=7))
    partitions, outcome = run_validation(wrong, project)
    assert outcome.failed_days == DAYS
    quarantine_partitions(wrong, partitions, outcome, project)
    assert quarantined_days(wrong, project) == set(DAYS)

    # same file, same suite: a run does not re-validate, and says why the window is empty
    from airloop.tasks.training import extract

    assert revalidate_quarantined(wrong, project) == {"released": [], "kept": []}
    with pytest.raises(ExtractError, match=r"no partitions .*7 day\(s\) of the window are quarantined "
                                           r"\(2026-03-05..2026-03-11\).*airloop release claims_fraud <day>"):
        extract(wrong, AS_OF.isoformat(), project, window=7)

    fixed = edited(project, lambda raw: None)  # the committed file, `make suite` run again
    snapshot = extract(fixed, AS_OF.isoformat(), project, window=7)
    assert snapshot["days"] == [d.isoformat() for d in GOOD_DAYS]
    assert snapshot["excluded_days"] == [BAD_DAY.isoformat()]
    assert quarantined_days(fixed, project) == {BAD_DAY}
    # the bad day was judged again under the new suite: recorded, so it is not re-validated again
    reason = quarantine_reason(fixed, project, BAD_DAY)
    assert reason["suite_fingerprint"] != outcome.suite_fingerprint
    assert {f["column"] for f in reason["failures"]} == {"claim_amount", "police_report", "days_to_report"}
    assert revalidate_quarantined(fixed, project) == {"released": [], "kept": []}
    # released days are kept, not deleted, and the run's own results were not overwritten
    released = sorted((project.quarantine_dir / "claims_fraud" / "released").iterdir())
    assert [p.name.split("--")[0] for p in released] == [d.isoformat() for d in GOOD_DAYS]
    record = json.loads((released[0] / "release.json").read_text())
    assert record["why"].startswith("re-validated under suite fingerprint") and record["why"].endswith("passed")
    assert (released[0] / "data.parquet").is_file() and (released[0] / "reason.json").is_file()
    run_result = json.loads(outcome.result_path.read_text())
    assert run_result["failed_days"] == [d.isoformat() for d in DAYS]
    assert list((project.validation_dir / "claims_fraud").glob("revalidation-*/result.json"))


def test_extract_stops_on_a_typo_before_reading_the_window(project):
    from airloop.tasks.training import extract

    def misspell(raw):
        raw["timestamp"] = "claim_time"

    config = edited(project, misspell)
    with pytest.raises(ConfigurationError, match="timestamp 'claim_time': column not in the source — did you mean "
                                                 "'claim_ts'?"):
        extract(config, AS_OF.isoformat(), project, window=7)
    assert not project.snapshots_dir.exists()


def test_release_by_hand(project):
    config = load_pipeline_config("claims_fraud", project)
    partitions, outcome = run_validation(config, project, [date(2026, 3, 9), BAD_DAY])
    quarantine_partitions(config, partitions, outcome, project)
    with pytest.raises(KeyError, match=r"2026-03-09 is not quarantined \(quarantined days: 2026-03-10\)"):
        release_day(config, project, date(2026, 3, 9), "test")
    folder = release_day(config, project, BAD_DAY, "source fixed upstream")
    assert quarantined_days(config, project) == set()
    assert folder.parent == project.quarantine_dir / "claims_fraud" / "released"
    assert json.loads((folder / "release.json").read_text())["why"] == "source fixed upstream"
    # re-validating by hand (force) judges every quarantined day again
    quarantine_partitions(config, partitions, outcome, project)
    assert revalidate_quarantined(config, project, force=True) == {"released": [], "kept": ["2026-03-10"]}
    assert quarantined_days(config, project) == {BAD_DAY}


def test_old_quarantine_records_without_a_fingerprint_are_re_validated(project):
    """Days quarantined before fingerprints were recorded count as judged by another suite."""
    config = load_pipeline_config("claims_fraud", project)
    partitions, outcome = run_validation(config, project, [date(2026, 3, 9), BAD_DAY])
    quarantine_partitions(config, partitions, outcome, project)
    path = project.quarantine_dir / "claims_fraud" / BAD_DAY.isoformat() / "reason.json"
    old = json.loads(path.read_text())
    del old["suite_fingerprint"]
    path.write_text(json.dumps(old))
    assert revalidate_quarantined(config, project) == {"released": [], "kept": ["2026-03-10"]}
    assert quarantine_reason(config, project, BAD_DAY)["suite_fingerprint"] == outcome.suite_fingerprint
    assert Path(path).is_file()
