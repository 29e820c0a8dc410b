"""The validation gate's integrity checks (airloop.data.integrity) and unreadable source files
(airloop.data.sources.read_file, read_days, quarantine_unreadable): real GX, real files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest

from airloop.core.pipeline import PipelineConfig, load_pipeline_config, parse_pipeline_config
from airloop.core.settings import ConfigError, Settings, load_settings
from airloop.data import integrity
from airloop.data.quarantine import (
    quarantine_unreadable,
    quarantined_days,
    release_day,
    revalidate_quarantined,
)
from airloop.data.simulator import generate_day
from airloop.data.snapshot import extract_window
from airloop.data.sources import UnreadableFile, UnreadablePartitions, read_days, read_partition
from airloop.data.validation import build_suite, validate_partitions

REPO = "/work/main"
DAYS = [date(2026, 2, 1) + timedelta(days=i) for i in range(4)]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return load_settings({"AIRLOOP_HOME": REPO, "AIRLOOP_STATE_DIR": str(tmp_path_factory.mktemp("state"))})


@pytest.fixture(scope="module")
def config(settings) -> PipelineConfig:
    return load_pipeline_config("claims_fraud", settings)


@pytest.fixture()
def local(tmp_path) -> Settings:
    return load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})


def edited(config: PipelineConfig, **changes) -> PipelineConfig:
    """``config`` with dotted fields changed (``{"validation.max_duplicate_fraction": 0.05}``),
    validated as a pipeline file would be."""
    raw = config.model_dump(mode="json")
    for key, value in changes.items():
        section, _, field = key.partition(".")
        raw[section] = {**raw[section], field: value} if field else value
    return parse_pipeline_config(raw, "test.yaml")


def day_frame(day: date) -> pd.DataFrame:
    frame = generate_day(day)
    for column in ("claim_ts", "label_ts"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def end_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)


# ------------------------------------------------------------------------------------- suite
def test_every_pipeline_gains_the_integrity_expectations(config: PipelineConfig) -> None:
    suite = build_suite(config)
    kinds = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}
    assert kinds[(integrity.IN_DAY, "claim_ts")] == {
        "column": "claim_ts", "min_value": {"$PARAMETER": integrity.DAY_START_PARAMETER},
        "max_value": {"$PARAMETER": integrity.DAY_END_PARAMETER}, "strict_max": True}
    unique = kinds[(integrity.NO_DUPLICATE_ROWS, None)]
    assert unique == {"column_list": ["claim_ts", "claim_id", "is_fraud", "label_ts", *config.features]}
    assert kinds[(integrity.HAS_CLASSES, "is_fraud")] == {
        "column": "is_fraud", "value_set": {"$PARAMETER": integrity.CLASSES_PARAMETER}}

    regression = load_pipeline_config(f"{REPO}/include/pipelines/examples/nyc_weather.yaml")
    assert regression.task == "regression"
    kinds = {e["type"] for e in build_suite(regression)["expectations"]}
    assert {integrity.IN_DAY, integrity.NO_DUPLICATE_ROWS} <= kinds and integrity.HAS_CLASSES not in kinds
    tolerant = edited(config, **{"validation.max_duplicate_fraction": 0.05})
    assert [e["kwargs"].get("mostly") for e in build_suite(tolerant)["expectations"]
            if e["type"] == integrity.NO_DUPLICATE_ROWS] == [0.95]


def test_the_duplicate_fraction_is_checked(config: PipelineConfig) -> None:
    with pytest.raises(ConfigError, match="max_duplicate_fraction"):
        edited(config, **{"validation.max_duplicate_fraction": 1.5})


# ----------------------------------------------------------------------------- class shares
def _counts(shares: dict[int, int], n: int, days: int = 10) -> dict[date, pd.Series]:
    """``days`` days of ``n`` labels with ``shares`` (per 1000) of each class, and day 0 to judge."""
    rows = pd.Series({c: k * n // 1000 for c, k in shares.items()})
    counts = {DAYS[0] + timedelta(days=i): rows for i in range(1, days + 1)}
    return counts


def test_a_class_the_window_makes_near_certain_is_expected() -> None:
    counts = _counts({0: 950, 1: 50}, 400)
    counts[DAYS[0]] = pd.Series({0: 400})
    assert integrity.expected_classes(counts, DAYS[0], 1e-6) == [0, 1]  # 0.95^400 ~ 1e-9


def test_rare_positives_on_small_days_are_not_expected() -> None:
    counts = _counts({0: 995, 1: 5}, 2000)
    counts[DAYS[0]] = pd.Series({0: 100})
    assert integrity.expected_classes(counts, DAYS[0], 1e-6) == [0]  # 0.995^100 = 0.61: normal
    assert integrity.expected_classes({DAYS[0]: pd.Series({0: 100})}, DAYS[0], 1e-6) == []  # no history


def test_the_gate_fails_a_single_class_day_and_passes_a_small_one(config: PipelineConfig, settings: Settings) -> None:
    partitions = {day: day_frame(day) for day in DAYS}
    partitions[DAYS[1]] = partitions[DAYS[1]].assign(is_fraud=0)
    small = partitions[DAYS[2]]
    partitions[DAYS[2]] = small[small.is_fraud == 0].head(160).reset_index(drop=True)
    outcome = validate_partitions(config, partitions, end_of(DAYS[-1]), settings, suite=build_suite(config))
    assert outcome.failed_days == [DAYS[1]]
    [failure] = outcome.failures
    assert (failure.expectation, failure.column) == (integrity.HAS_CLASSES, "is_fraud")
    assert "missing class(es) 1" in failure.observed and "class_absence_p" in failure.details


def test_timestamps_outside_the_day_and_duplicated_rows_fail(config: PipelineConfig, settings: Settings) -> None:
    partitions = {day: day_frame(day) for day in DAYS[:3]}
    late = partitions[DAYS[0]]
    late.loc[:2, "claim_ts"] = late.loc[:2, "claim_ts"] - pd.Timedelta(days=1)  # the day before
    late.loc[3, "claim_ts"] = pd.Timestamp(DAYS[1].isoformat(), tz="UTC")  # the next day's midnight: outside
    dup = partitions[DAYS[1]]
    partitions[DAYS[1]] = pd.concat([dup, dup.iloc[[5]]], ignore_index=True)
    tolerant = edited(config, **{"validation.max_duplicate_fraction": 0.01,
                                 "validation.expectations": []})  # no id uniqueness: whole rows only
    for cfg, failed in ((config, [DAYS[0], DAYS[1]]), (tolerant, [DAYS[0]])):
        outcome = validate_partitions(cfg, partitions, end_of(DAYS[2]), settings, suite=build_suite(cfg))
        assert outcome.failed_days == failed, outcome.failures
    outcome = validate_partitions(config, partitions, end_of(DAYS[2]), settings, suite=build_suite(config))
    found = {(f.day, f.expectation): f for f in outcome.failures}
    in_day = found[(DAYS[0], integrity.IN_DAY)]
    assert in_day.column == "claim_ts" and in_day.observed.startswith("4 timestamps")
    assert "2026-02-02T00:00:00+00:00)" in in_day.observed  # the day's end is excluded
    rows = found[(DAYS[1], integrity.NO_DUPLICATE_ROWS)]
    assert rows.observed.startswith("2 rows") and dup.claim_id[5] in rows.details


def test_a_window_of_one_class_is_refused_counting_only_known_labels(config: PipelineConfig) -> None:
    frames = {day: day_frame(day) for day in DAYS}
    assert integrity.window_class_problem(config, frames, DAYS[-1] + timedelta(days=1)) is None
    # every fraud label arrives after the as-of day: training would see one class
    late = {d: f.assign(label_ts=f.label_ts.where(f.is_fraud == 0, pd.Timestamp("2027-01-01", tz="UTC")))
            for d, f in frames.items()}
    problem = integrity.window_class_problem(config, late, DAYS[-1] + timedelta(days=1))
    assert problem and "'is_fraud' has fewer than 2 classes" in problem and "0: " in problem


# ------------------------------------------------------------------------- unreadable files
def _write(local: Settings, config: PipelineConfig, day: date, data: bytes) -> None:
    path = local.data_dir / config.source.path / f"dt={day}" / config.source.partition.split("/")[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file (0 bytes)"),
    (b"claim_id,region\nC1,n\xc3rth\n", "not valid UTF-8 at byte offset 20 (byte 0xc3"),
    (b"PAR1\x00\x01\x02", "not a CSV text file: NUL byte at byte offset 4"),
])
def test_unreadable_csv_files_name_the_file_and_why(local, config, data, reason) -> None:
    _write(local, config, DAYS[0], data)
    with pytest.raises(UnreadableFile, match="source.path: .*dt=2026-02-01/claims.csv: ") as err:
        read_partition(config, DAYS[0], local)
    assert reason in err.value.reason and err.value.day == DAYS[0]


def test_truncated_and_foreign_parquet_files_are_unreadable(local, config) -> None:
    pq = edited(config, source={"kind": "files", "path": "claims", "partition": "dt={date}/part-0.parquet"})
    good = day_frame(DAYS[0]).to_parquet(index=False)
    _write(local, pq, DAYS[0], good[: len(good) // 2])
    _write(local, pq, DAYS[1], b"claim_id\nC1\n")
    unreadable: dict = {}
    assert read_days(pq, DAYS[:2], local, unreadable=unreadable) == {}
    assert sorted(unreadable) == DAYS[:2]
    assert all("cannot read parquet file: " in e.reason for e in unreadable.values())


def test_a_file_that_cannot_be_opened_is_unreadable(local, config) -> None:
    """Permission denied. Root reads any file, so as root the reader runs without the capabilities
    that bypass file permissions (``setpriv``), as an unprivileged worker would."""
    _write(local, config, DAYS[0], b"claim_id\nC1\n")
    path = local.data_dir / config.source.path / f"dt={DAYS[0]}" / "claims.csv"
    path.chmod(0)
    code = ("import sys; from airloop.core.pipeline import load_pipeline_config; "
            "from airloop.data.sources import UnreadableFile, read_file\n"
            "try:\n    read_file(load_pipeline_config('claims_fraud'), sys.argv[1])\n"
            "except UnreadableFile as err:\n    print(err)")
    command = [sys.executable, "-c", code, str(path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot deny a read")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert f"source.path: {path}: permission denied" in out.stdout, out.stdout + out.stderr


def test_header_only_is_empty_unless_the_pipeline_allows_empty_days(local, config) -> None:
    header = ",".join(day_frame(DAYS[0]).columns).encode() + b"\n"
    _write(local, config, DAYS[0], header)
    unreadable: dict = {}
    assert read_days(config, [DAYS[0]], local, unreadable=unreadable) == {}
    assert "header only, 0 data rows (validation.min_rows_per_day is 150)" in unreadable[DAYS[0]].reason
    allowing = edited(config, **{"validation.min_rows_per_day": 0})
    assert read_days(allowing, [DAYS[0]], local, unreadable=unreadable) == {}  # a day without data
    assert len(read_partition(config, DAYS[0], local)) == 0  # other readers see the empty file as before


def test_extract_reports_every_unreadable_day_then_quarantine_keeps_copies(local, config) -> None:
    for day in DAYS:
        frame = day_frame(day)
        _write(local, config, day, frame.to_csv(index=False).encode())
    _write(local, config, DAYS[1], b"")
    _write(local, config, DAYS[2], b"a,b\n\xff\n")
    with pytest.raises(UnreadablePartitions) as err:
        extract_window(config, DAYS[-1] + timedelta(days=1), local, window=4)
    assert sorted(err.value.files) == DAYS[1:3]
    assert not local.snapshots_dir.exists() or not list(local.snapshots_dir.rglob("fingerprint.json"))

    folders = quarantine_unreadable(config, err.value.files, local, "2026-02-05T00:00:00+00:00", "fp")
    assert [f.name for f in folders] == ["2026-02-02", "2026-02-03"]
    assert (folders[1] / "files" / "claims.csv").read_bytes() == b"a,b\n\xff\n"
    assert quarantined_days(config, local) == set(DAYS[1:3])
    # a re-validation (fingerprint "fp" is stale) keeps both: their files are still unreadable
    kept = revalidate_quarantined(config, local, suite=build_suite(config))
    assert kept == {"released": [], "kept": ["2026-02-02", "2026-02-03"]}
    # fixed by hand and released: the next extract reads the day again
    _write(local, config, DAYS[1], day_frame(DAYS[1]).to_csv(index=False).encode())
    target = release_day(config, local, DAYS[1], "re-exported")
    assert (target / "files" / "claims.csv").is_file()  # nothing deleted
    snapshot = extract_window(config, DAYS[-1] + timedelta(days=1), local, window=4,
                              exclude=quarantined_days(config, local))
    assert snapshot.days == [d.isoformat() for d in (DAYS[0], DAYS[1], DAYS[3])]
