"""``airloop check``, ``airloop suite`` and ``airloop release`` on a project folder: one bad
file never stops the others, exit code 1 when any is bad."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest

from airloop.cli.main import main
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import get_settings
from tests.unit.data.test_check import make_project


@pytest.fixture()
def project(tmp_path, monkeypatch):
    settings = make_project(tmp_path)
    for key in ("AIRLOOP_PIPELINES_DIR", "AIRLOOP_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AIRLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("AIRLOOP_STATE_DIR", str(settings.state_dir))
    get_settings.cache_clear()
    assert get_settings().pipelines_dir == settings.pipelines_dir
    yield settings
    get_settings.cache_clear()


def test_check_good_files_exits_0(project, capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "claims_fraud (include/pipelines/claims_fraud.yaml)" in out and "ticket_triage (" in out
    assert out.strip().endswith("2 of 2 pipeline file(s) OK")


def test_check_reports_every_file_and_exits_1(project, capsys):
    claims = project.pipelines_dir / "claims_fraud.yaml"
    claims.write_text(claims.read_text().replace("  claim_amount:", "  claim_amout:"))
    (project.pipelines_dir / "broken.yaml").write_text("name: broken\ntask: [")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "ERROR  features.claim_amout: column not in the source — did you mean 'claim_amount'?" in out
    assert "broken (include/pipelines/broken.yaml)" in out and "not valid YAML" in out
    assert "ticket_triage (include/pipelines/ticket_triage.yaml)" in out
    assert out.strip().endswith("1 of 3 pipeline file(s) OK; problems in: broken, claims_fraud")
    # one pipeline by name; JSON for machines
    assert main(["check", "ticket_triage"]) == 0
    capsys.readouterr()
    assert main(["check", "claims_fraud", "--json", "--no-source"]) == 1
    [report] = json.loads(capsys.readouterr().out)
    assert report["pipeline"] == "claims_fraud" and report["ok"] is False and report["sample"] is None
    assert [f["message"] for f in report["findings"] if f["level"] == "error"] == [
        "include/gx/claims_fraud.suite.json is out of date (5 expectation(s) to add, 5 to remove): run `make suite`"]


def test_suite_writes_every_good_file_and_reports_the_bad_ones(project, capsys):
    for name in ("claims_fraud", "ticket_triage"):
        (project.root / "include" / "gx" / f"{name}.suite.json").unlink()
    (project.pipelines_dir / "a_broken.yaml").write_text("name: a_broken\ntraining: {n_trials: 0}\n")
    (project.pipelines_dir / "renamed.yaml").write_text(
        (project.pipelines_dir / "ticket_triage.yaml").read_text())  # name: ticket_triage in renamed.yaml
    assert main(["suite"]) == 1
    err = capsys.readouterr().err
    assert "2 of 4 pipeline file(s) are bad; their suites were not written:" in err
    assert "a_broken.yaml: invalid pipeline configuration" in err and "training.n_trials" in err
    assert "renamed: name 'ticket_triage' must equal the file name 'renamed'" in err
    for name in ("claims_fraud", "ticket_triage"):  # written although a bad file came first
        assert (project.root / "include" / "gx" / f"{name}.suite.json").is_file()
    for path in ("a_broken.yaml", "renamed.yaml"):
        (project.pipelines_dir / path).unlink()
    assert main(["suite"]) == 0 and main(["check", "--no-source"]) == 0


def test_release_lists_releases_and_refuses_unknown_days(project, capsys):
    from airloop.data.quarantine import quarantine_partitions, quarantined_days
    from airloop.data.sources import read_days
    from airloop.data.validation import validate_partitions

    config = load_pipeline_config("claims_fraud", project)
    day = date(2026, 2, 6)
    partitions = read_days(config, [day], project)
    partitions[day] = partitions[day].head(10)  # too few rows: a real data failure
    outcome = validate_partitions(config, partitions, datetime(2026, 2, 7, tzinfo=timezone.utc), project)
    quarantine_partitions(config, partitions, outcome, project)

    assert main(["release", "claims_fraud"]) == 0
    out = capsys.readouterr().out
    assert "claims_fraud: 1 quarantined day(s):" in out and "2026-02-06  10 rows  expect_table_row_count" in out
    assert main(["release", "claims_fraud", "2026-02-05"]) == 1
    assert "2026-02-05 is not quarantined (quarantined days: 2026-02-06)" in capsys.readouterr().err
    assert main(["release", "claims_fraud", "2026-02-06", "--reason", "checked by hand"]) == 0
    assert "released 2026-02-06" in capsys.readouterr().out
    assert quarantined_days(config, project) == set()
    # --revalidate judges the day on the source as it is now (all its rows): it passes
    quarantine_partitions(config, partitions, outcome, project)
    assert main(["release", "claims_fraud", "--revalidate"]) == 0
    assert "released: 2026-02-06; still failing: none" in capsys.readouterr().out
    assert quarantined_days(config, project) == set()


def test_check_pipelines_stage_names_the_bad_pipelines(project):
    """The pipeline-check DAG's stage: fine files return a summary; a wrong one raises
    ConfigurationError naming it (the DAG maps it to a non-retried failure)."""
    from airloop.core.pipeline import ConfigurationError
    from airloop.tasks.check import check_pipelines

    assert check_pipelines(project) == {"claims_fraud": {"ok": True, "warnings": []},
                                        "ticket_triage": {"ok": True, "warnings": []}}
    tickets = project.pipelines_dir / "ticket_triage.yaml"
    tickets.write_text(tickets.read_text().replace("target: queue", "target: queu"))
    with pytest.raises(ConfigurationError, match=r"1 of 2 pipeline file\(s\) have problems: ticket_triage") as err:
        check_pipelines(project)
    assert "target 'queu': column not in the source — did you mean 'queue'?" in str(err.value)
