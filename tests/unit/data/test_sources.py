"""Data sources by configuration: CSV and Parquet files (a path, a glob, a ``{date}`` partition
pattern) and a SQL table or query through an Airflow connection, each selecting days on the
pipeline's timestamp column. The SQL source runs against the real PostgreSQL server (a fresh
database, the connection given as an ``AIRFLOW_CONN_*`` variable)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from airloop.core.pipeline import SourceConfig, parse_pipeline_config
from airloop.core.settings import ConfigError, load_settings
from airloop.data.simulator import generate_day
from airloop.data.snapshot import extract_window, load_snapshot_days
from airloop.data.sources import ExtractError, read_days, read_partition, source_files, source_query, sql_engine

DAYS = [date(2026, 2, 1), date(2026, 2, 2), date(2026, 2, 3)]


@pytest.fixture(scope="module")
def claims() -> dict[date, pd.DataFrame]:
    """Three days of the claims simulator, small."""
    return {day: generate_day(day).head(60).reset_index(drop=True) for day in DAYS}


@pytest.fixture()
def local(tmp_path):
    """Settings with their own data and state folders."""
    return load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})


def with_source(config, **source):
    """``config`` with another source (validated as a pipeline file would be)."""
    raw = config.model_dump(mode="json")
    raw["source"] = source
    return parse_pipeline_config(raw, "test.yaml")


def same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(actual.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


# ------------------------------------------------------------------------------------- files
def test_parquet_glob_partition_reads_every_part_of_the_day(local, claims_config, claims):
    config = with_source(claims_config, path="claims", partition="dt={date}/part-*.parquet")
    assert config.source.format == "parquet" and config.source.partitioned
    for day, frame in claims.items():
        folder = local.data_dir / "claims" / f"dt={day}"
        folder.mkdir(parents=True)
        frame.iloc[:25].to_parquet(folder / "part-0.parquet", index=False)
        frame.iloc[25:].to_parquet(folder / "part-1.parquet", index=False)
        (folder / "_SUCCESS").write_text("")  # not matched by the glob
    assert [p.name for p in source_files(config, local, DAYS[0])] == ["part-0.parquet", "part-1.parquet"]
    for day, frame in claims.items():
        same_rows(read_partition(config, day, local), frame)
    assert read_partition(config, date(2026, 2, 4), local) is None


def test_csv_path_glob_with_date_in_the_file_name(local, claims_config, claims):
    config = with_source(claims_config, path="exports/*/claims_{date}.csv")
    assert config.source.format == "csv"
    for i, (day, frame) in enumerate(claims.items()):
        folder = local.data_dir / "exports" / f"region-{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / f"claims_{day}.csv", index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    got = read_days(config, DAYS, local)
    assert list(got) == DAYS
    for day, frame in claims.items():
        assert got[day]["claim_ts"].dt.tz is not None  # parsed to UTC
        same_rows(got[day], frame)


def test_undated_files_are_split_by_the_timestamp_column(local, claims_config, claims):
    """Without ``{date}``, every file is read and the timestamp column selects the day (files
    here hold rows of several days, in no particular order)."""
    everything = pd.concat(claims.values(), ignore_index=True).sample(frac=1.0, random_state=3)
    folder = local.data_dir / "dump"
    folder.mkdir(parents=True)
    everything.iloc[:100].to_parquet(folder / "a.parquet", index=False)
    everything.iloc[100:].to_parquet(folder / "b.parquet", index=False)
    for source in ({"path": "dump/*.parquet"}, {"path": "dump", "format": "parquet"}):
        config = with_source(claims_config, **source)
        assert not config.source.partitioned
        got = read_days(config, DAYS[1:], local)
        assert list(got) == DAYS[1:]
        for day in DAYS[1:]:
            expected = everything[everything["claim_ts"].dt.date == day]
            same_rows(got[day].sort_values("claim_id"), expected.sort_values("claim_id"))
    snap = extract_window(config, date(2026, 2, 4), local, window=3)
    assert snap.days == [d.isoformat() for d in DAYS] and snap.rows == len(everything)


def test_unreadable_file_names_the_source_field_and_file(local, claims_config, claims):
    config = with_source(claims_config, path="broken", partition="dt={date}/part.parquet")
    bad = local.data_dir / "broken" / f"dt={DAYS[0]}" / "part.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_text("not parquet")
    with pytest.raises(ExtractError, match=r"source\.path: .*part\.parquet: cannot read parquet"):
        read_partition(config, DAYS[0], local)


@pytest.mark.parametrize(("source", "field"), [
    ({"kind": "files"}, "source.path is required"),
    ({"path": "x/{day}.csv"}, "only placeholder is {date}"),
    ({"path": "x", "conn_id": "db"}, "source.conn_id is only for kind 'sql'"),
    ({"kind": "sql", "table": "t"}, "source.conn_id is required"),
    ({"kind": "sql", "conn_id": "db"}, "exactly one of source.table and source.query"),
    ({"kind": "sql", "conn_id": "db", "table": "t", "path": "x"}, "source.path is only for kind 'files'"),
    ({"kind": "sql", "conn_id": "db", "table": "t; drop table x"}, "source.table"),
    ({"kind": "sql", "conn_id": "db", "query": "select * from t where ts >= '{start}'"}, "source.query holds the placeholder '{start}'"),
    ({"kind": "sql", "conn_id": "db", "query": "select * from t where ts >= %(start)s"}, "placeholder '%(start)s'"),
    ({"kind": "sql", "conn_id": "db", "query": "select * from t where ts < :end"}, "placeholder ':end'"),
    ({"kind": "sql", "conn_id": "db", "query": "delete from t"}, "one SELECT"),
    ({"kind": "sql", "conn_id": "db", "query": "select 1; drop table t"}, "single statement"),
])
def test_source_mistakes_name_the_field(claims_config, source, field):
    with pytest.raises(ConfigError) as err:
        with_source(claims_config, **source)
    assert "test.yaml" in str(err.value) and field in str(err.value)


def test_query_keeps_casts_and_drops_a_trailing_semicolon():
    source = SourceConfig(kind="sql", conn_id="db", query="SELECT a::date AS d, b FROM t;\n")
    assert source.query == "SELECT a::date AS d, b FROM t"


# --------------------------------------------------------------------------------------- SQL
@pytest.fixture(scope="module")
def pg_source(claims):
    """A fresh PostgreSQL database holding the claims of DAYS in ``raw."Claims"`` (a schema and a
    mixed-case name, so identifiers must be quoted), reached through ``AIRFLOW_CONN_CLAIMS_DB``."""
    from tests.pg import fresh_database

    monkeypatch = pytest.MonkeyPatch()
    with fresh_database() as uri:
        engine = sa.create_engine(uri)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE SCHEMA raw"))
            conn.execute(sa.text("CREATE TABLE raw.regions (region text PRIMARY KEY, manager text NOT NULL)"))
            conn.execute(sa.text("INSERT INTO raw.regions VALUES ('north', 'ann'), ('south', 'bo'), ('east', 'cy'), "
                                 "('west', 'di'), ('central', 'ed')"))
        # shuffled on insert: the source must order rows itself
        table = pd.concat(claims.values(), ignore_index=True).sample(frac=1.0, random_state=1)
        table.to_sql("Claims", engine, schema="raw", index=False)
        engine.dispose()
        url = sa.engine.make_url(uri)
        monkeypatch.setenv("AIRFLOW_CONN_CLAIMS_DB", f"postgres://{url.username}@{url.host}:{url.port}/{url.database}")
        yield uri
        from airloop.data import sources as data

        for engine in data._ENGINES.values():
            engine.dispose()
        data._ENGINES.clear()
    monkeypatch.undo()


def test_sql_table_source_reads_each_day_by_timestamp(pg_source, local, claims_config, claims):
    config = with_source(claims_config, kind="sql", conn_id="claims_db", table='raw.Claims')
    for day, frame in claims.items():
        got = read_partition(config, day, local)
        assert str(got["claim_ts"].dtype) == "datetime64[ns, UTC]"
        same_rows(got, frame.sort_values(["claim_ts", "claim_id"]))
    assert read_partition(config, date(2026, 1, 31), local) is None


def test_sql_window_is_one_parameterised_query_and_a_stable_snapshot(pg_source, local, claims_config, claims):
    config = with_source(claims_config, kind="sql", conn_id="claims_db", table="raw.Claims")
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    engine = sql_engine("claims_db")
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        snap = extract_window(config, date(2026, 2, 4), local, window=4)  # 01-31 has no rows
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 1
    sql, params = statements[0]
    assert "2026" not in sql  # the interval is bound, not written into the SQL
    assert params == {"start": datetime(2026, 1, 31, tzinfo=timezone.utc), "end": datetime(2026, 2, 4, tzinfo=timezone.utc)}
    assert snap.days == [d.isoformat() for d in DAYS] and snap.rows == sum(len(f) for f in claims.values())
    assert extract_window(config, date(2026, 2, 4), local, window=4).fingerprint == snap.fingerprint
    for day, frame in load_snapshot_days(snap).items():
        same_rows(frame, claims[day].sort_values(["claim_ts", "claim_id"]))


def test_sql_query_source_is_a_subquery_filtered_on_the_timestamp(pg_source, local, claims_config, claims):
    query = """
        SELECT c.*, r.manager
        FROM raw."Claims" AS c JOIN raw.regions AS r USING (region)
        WHERE c.claim_amount::numeric > 1000
    """
    config = with_source(claims_config, kind="sql", conn_id="claims_db", query=query)
    got = read_partition(config, DAYS[1], local)
    expected = claims[DAYS[1]][claims[DAYS[1]]["claim_amount"] > 1000]
    assert sorted(got["claim_id"]) == sorted(expected["claim_id"])
    assert set(got["manager"]) <= {"ann", "bo", "cy", "di", "ed"}
    assert got["claim_ts"].is_monotonic_increasing
    compiled = str(source_query(config))
    assert ":start" in compiled and ":end" in compiled and "airloop_source" in compiled


def test_sql_errors_name_the_source_field(pg_source, local, claims_config, monkeypatch):
    missing_table = with_source(claims_config, kind="sql", conn_id="claims_db", table="raw.nope")
    with pytest.raises(ExtractError, match=r"source\.table 'raw\.nope' via connection 'claims_db': .*nope"):
        read_partition(missing_table, DAYS[0], local)
    no_conn = with_source(claims_config, kind="sql", conn_id="no_such_db", table="raw.Claims")
    with pytest.raises(ExtractError, match=r"source\.conn_id 'no_such_db': no such Airflow connection .*AIRFLOW_CONN_NO_SUCH_DB"):
        read_partition(no_conn, DAYS[0], local)
    wrong_ts = with_source(claims_config.model_copy(update={"timestamp": "label_ts", "label_timestamp": None}),
                           kind="sql", conn_id="claims_db", query="SELECT claim_id, claim_amount FROM raw.\"Claims\"")
    with pytest.raises(ExtractError, match=r"source\.query via connection 'claims_db': .*label_ts"):
        read_partition(wrong_ts, DAYS[0], local)
    with pytest.raises(ConfigError, match="source.path: a sql source has no file path"):
        from airloop.core.pipeline import resolve_source_path

        resolve_source_path(missing_table, local)
