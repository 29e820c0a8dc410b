"""``airloop check``: a pipeline file against its source and its stored suite, on the two demo
pipelines' simulator data with deliberate typos in a copy of the file (real GX, real files)."""

from __future__ import annotations

import shutil
import time
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import yaml

from airloop.core.pipeline import ConfigurationError, load_pipeline_config, parse_pipeline_config
from airloop.core.settings import Settings, load_settings
from airloop.data.check import check_all, check_pipeline, config_problems, ensure_pipeline_ok, unparsed_values
from airloop.data.simulator import write_history

REPO = Path(__file__).resolve().parents[3]
START, DAYS = date(2026, 2, 1), 6
PIPELINES = ("claims_fraud", "ticket_triage")


def make_project(root: Path, days: int = DAYS) -> Settings:
    """A project folder: copies of the pipeline files and stored suites, ``days`` of demo data."""
    for name in PIPELINES:
        (root / "include" / "pipelines").mkdir(parents=True, exist_ok=True)
        (root / "include" / "gx").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "include" / "pipelines" / f"{name}.yaml", root / "include" / "pipelines")
        shutil.copy(REPO / "include" / "gx" / f"{name}.suite.json", root / "include" / "gx")
    settings = load_settings({"AIRLOOP_HOME": str(root), "AIRLOOP_STATE_DIR": str(root / "state")})
    for name in PIPELINES:
        config = load_pipeline_config(name, settings)
        if days:
            write_history(settings.data_dir / name, start=START, days=days, pattern=config.source.partition,
                          dataset=name)
    return settings


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Settings:
    return make_project(tmp_path_factory.mktemp("project"))


def typo(settings: Settings, tmp_path: Path, edit, name: str = "claims_fraud") -> Path:
    """A copy of the pipeline file with ``edit(text)`` applied, in its own folder."""
    text = (settings.pipelines_dir / f"{name}.yaml").read_text()
    changed = edit(text)
    assert changed != text, "the edit changed nothing"
    path = tmp_path / f"{name}.yaml"
    path.write_text(changed)
    return path


def messages(report, level: str = "error") -> list[str]:
    return [f.message for f in report.findings if f.level == level]


# ------------------------------------------------------------------------------------ good files
@pytest.mark.parametrize("name", PIPELINES)
def test_demo_pipelines_pass(project, name):
    report = check_pipeline(name, project)
    assert report.ok, report.format()
    assert not report.warnings, report.format()
    assert report.sample.startswith(f"3 partition(s) 2026-02-04..2026-02-06 of state/data/{name}/dt=")
    text = report.format()
    assert "all 17 configured columns are in the source" in text
    assert "values parse as the declared types" in text
    assert "is up to date" in text and text.endswith("=> OK")


def test_a_sample_before_a_day_reads_the_partitions_before_it(project):
    config = load_pipeline_config("claims_fraud", project)
    report = ensure_pipeline_ok(config, project, as_of=date(2026, 2, 3))
    assert "2 partition(s) 2026-02-01..2026-02-02" in report.sample


# ---------------------------------------------------------------------------------------- typos
def test_misspelled_feature_and_timestamp_name_the_column_and_the_fix(project, tmp_path):
    path = typo(project, tmp_path, lambda t: t.replace("  claim_amount:", "  claim_amout:")
                .replace("timestamp: claim_ts", "timestamp: claim_time"))
    report = check_pipeline(path, project)
    errors = messages(report)
    assert "features.claim_amout: column not in the source — did you mean 'claim_amount'?" in errors
    assert "timestamp 'claim_time': column not in the source — did you mean 'claim_ts'?" in errors
    # the file changed, so the stored suite no longer matches it
    assert any("include/gx/claims_fraud.suite.json is out of date" in m and "run `make suite`" in m for m in errors)
    assert all(f.config for f in report.errors)
    assert "=> 3 problem(s): fix" in report.format()


def test_misspelled_category_values_fail_only_when_most_rows_are_unseen(project, tmp_path):
    capitalised = typo(project, tmp_path, lambda t: t.replace(
        "values: [north, south, east, west, central]", "values: [North, South, East, West, Central]"))
    [error] = [m for m in messages(check_pipeline(capitalised, project)) if m.startswith("features.region")]
    assert "rows hold values not among the declared values ['North', 'South', 'East', 'West', 'Central']" in error
    assert "'south' (" in error

    one_missing = tmp_path / "one" / "claims_fraud.yaml"
    one_missing.parent.mkdir()
    one_missing.write_text(capitalised.read_text().replace("[North, South, East, West, Central]",
                                                           "[north, south, east, west]"))
    report = check_pipeline(one_missing, project)
    assert not [m for m in messages(report) if "features.region" in m]
    [warning] = [m for m in messages(report, "warning") if "features.region" in m]
    assert "hold values not among the declared values (validation fails their days): 'central' (" in warning


def test_declared_type_no_value_has_is_an_error(project, tmp_path):
    path = typo(project, tmp_path, lambda t: t.replace(
        "region:             {type: category, values: [north, south, east, west, central]}",
        "region:             {type: float}"))
    [error] = [m for m in messages(check_pipeline(path, project)) if m.startswith("features.region")]
    assert error.startswith("features.region: declared float, but ") and "do not parse as float (e.g. '" in error


def test_classes_of_another_type_than_the_target(project, tmp_path):
    path = typo(project, tmp_path, lambda t: t.replace("classes: [0, 1]", 'classes: ["0", "1"]'))
    [error] = [m for m in messages(check_pipeline(path, project)) if m.startswith("target")]
    assert "rows hold values not among the classes ['0', '1']" in error
    assert "(the data holds numbers, the file lists text: quote or unquote them)" in error


def test_ticket_classes_with_a_missing_queue(project, tmp_path):
    path = typo(project, tmp_path, lambda t: t.replace("classes: [billing, technical, account, sales, feedback]",
                                                       "classes: [billing, technical, account, sales, feedbacks]"),
                name="ticket_triage")
    report = check_pipeline(path, project)
    assert any("target 'queue'" in m and "'feedback' (" in m for m in messages(report, "warning")), report.format()
    assert any("classes not seen in the sample: 'feedbacks'" in m for m in messages(report, "warning"))


def test_search_space_parameter_typo(project, tmp_path):
    path = typo(project, tmp_path, lambda t: t.replace("max_depth: {type: int, low: 3", "max_dept: {type: int, low: 3"))
    assert messages(check_pipeline(path, project)) == [
        "training.search_space.random_forest.max_dept: not a parameter of RandomForestClassifier — did you mean 'max_depth'?"]


def test_file_that_does_not_load_names_the_fields(project, tmp_path):
    path = typo(project, tmp_path, lambda t: t.replace("task: binary_classification", "task: regression")
                .replace("classes: [0, 1]\n", ""))
    [error] = messages(check_pipeline(path, project))
    assert error.startswith("invalid pipeline configuration\n- training: metric 'roc_auc' is a binary classification")
    assert "'logistic_regression' cannot do regression" in error


def test_forgotten_make_suite(project, tmp_path):
    """A pipeline whose suite was never written, then one whose file changed after `make suite`."""
    other = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(project.state_dir)})
    path = tmp_path / "include" / "pipelines" / "claims_fraud.yaml"
    path.parent.mkdir(parents=True)
    shutil.copy(project.pipelines_dir / "claims_fraud.yaml", path)
    assert messages(check_pipeline(path, other)) == ["no stored suite include/gx/claims_fraud.suite.json: run `make suite`"]

    from airloop.data.validation import write_suite

    write_suite(load_pipeline_config(path, other), other)
    assert check_pipeline(path, other).ok
    path.write_text(path.read_text().replace("max: 730", "max: 365"))
    assert messages(check_pipeline(path, other)) == [
        "include/gx/claims_fraud.suite.json is out of date (1 expectation(s) to add, 1 to remove): run `make suite`"]


# --------------------------------------------------------------------------- source and all files
def test_no_data_is_a_source_problem_not_a_configuration_error(tmp_path):
    settings = make_project(tmp_path, days=0)
    report = check_pipeline("claims_fraud", settings)
    [error] = report.errors
    assert not error.config and error.message.startswith("source: no partition found for ")
    assert report.format().endswith("=> the source could not be checked")
    # at the start of a run, no data is the extract's business (retried), not a configuration error
    ensure_pipeline_ok(load_pipeline_config("claims_fraud", settings), settings, as_of=date(2026, 2, 3))


def test_ensure_pipeline_ok_stops_a_typo_in_seconds(project):
    raw = yaml.safe_load((project.pipelines_dir / "claims_fraud.yaml").read_text())
    raw["features"]["claim_amout"] = raw["features"].pop("claim_amount")
    config = parse_pipeline_config(raw)
    started = time.perf_counter()
    with pytest.raises(ConfigurationError) as err:
        ensure_pipeline_ok(config, project, as_of=date(2026, 2, 7))
    assert time.perf_counter() - started < 30
    text = str(err.value)
    assert "the pipeline file does not fit its data (no retry: fix the file)" in text
    assert "did you mean 'claim_amount'?" in text and "run `make suite`" in text


def test_one_bad_file_never_hides_the_others(tmp_path):
    settings = make_project(tmp_path)
    (settings.pipelines_dir / "broken.yaml").write_text("name: [unclosed")
    text = (settings.pipelines_dir / "claims_fraud.yaml").read_text()
    (settings.pipelines_dir / "claims_fraud.yaml").write_text(text.replace("  customer_age:", "  customer_agee:"))
    reports = {r.pipeline: r for r in check_all(settings)}
    assert sorted(reports) == ["broken", "claims_fraud", "ticket_triage"]
    assert reports["ticket_triage"].ok, reports["ticket_triage"].format()
    assert "not valid YAML" in messages(reports["broken"])[0]
    assert any("did you mean 'customer_age'?" in m for m in messages(reports["claims_fraud"]))


def test_undated_csv_files_sample_the_newest_days(tmp_path):
    settings = make_project(tmp_path, days=0)
    raw = yaml.safe_load((settings.pipelines_dir / "claims_fraud.yaml").read_text())
    raw["source"] = {"kind": "files", "path": "flat/*.csv"}
    config = parse_pipeline_config(raw)
    folder = settings.data_dir / "flat"
    folder.mkdir(parents=True)
    from airloop.data.simulator import generate_day

    pd.concat([generate_day(date(2026, 2, d)) for d in range(1, 6)]).to_csv(folder / "all.csv", index=False)
    from airloop.data.check import check_config

    report = check_config(config, settings, before=date(2026, 2, 5))
    assert report.sample.startswith("newest ") and "of 1 file(s)" in report.sample
    assert not [m for m in messages(report) if "suite" not in m], report.format()


# ------------------------------------------------------------------------------- type-parse rules
@pytest.mark.parametrize(
    "kind, values, bad",
    [
        ("float", [1.5, None, 2], 0),
        ("int", ["1", " 2", "x", None], 1),  # CSV text: numbers parse, 'x' does not
        ("float", [True, False], 2),
        ("bool", [True, False, None], 0),
        ("bool", [0, 1, 2], 1),
        ("bool", ["true", "FALSE", "yes"], 1),
        ("category", ["a", "b", None], 0),
        ("category", ["a", 1, 2.5], 2),
        ("datetime", ["2026-02-01T10:00:00Z", "2026-02-01", "soon", None], 1),
        ("datetime", [1767225600, "2026-02-01"], 1),  # epoch numbers are not read as datetimes
    ],
)
def test_unparsed_values(kind, values, bad):
    found, present, examples = unparsed_values(kind, pd.Series(values, dtype=object))
    assert (found, present) == (bad, sum(v is not None for v in values))
    assert len(examples) == min(bad, 5)


def test_config_problems_tell_the_file_from_a_bad_day(project):
    """A column missing on one day is that day's data; missing on every day, the file's."""
    config = load_pipeline_config("claims_fraud", project)
    from airloop.data.sources import read_days

    days = read_days(config, [date(2026, 2, d) for d in (1, 2, 3)], project)
    assert config_problems(config, days) == []
    one = dict(days) | {date(2026, 2, 2): days[date(2026, 2, 2)].drop(columns=["claim_amount"])}
    assert config_problems(config, one) == []
    every = {d: f.rename(columns={"claim_amount": "claim_amnt"}) for d, f in days.items()}
    assert config_problems(config, every) == [
        "features.claim_amount: column 'claim_amount' is missing from all 3 day(s) of the window"
        " — did you mean 'claim_amnt'?"]
    words = {d: f.assign(customer_age="forty") for d, f in days.items()}
    [problem] = config_problems(config, words)
    assert problem.startswith("features.customer_age: column 'customer_age' on all 3 day(s): 100% of values do not "
                              "parse as int (e.g. 'forty')")
    half = dict(days) | {date(2026, 2, 1): days[date(2026, 2, 1)].assign(customer_age="forty")}
    assert config_problems(config, half) == []
