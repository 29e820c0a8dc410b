"""The promotion ledger and the lifecycle lock, on the real monitoring store (SQLite)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.core.pipeline import EnvironmentConfig, PipelineConfig
from airloop.registry import ledger

PIPE = "claims_fraud"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.fixture
def engine(tmp_path) -> sa.Engine:
    return store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")


def entry(key: str, action: str = "promote", to: str | None = "1", frm: str | None = None, alias: str = "champion",
          as_of: str | None = None, pipeline: str = PIPE, **extra) -> ledger.LedgerEntry:
    return ledger.LedgerEntry(idempotency_key=key, pipeline=pipeline, model_name=pipeline, action=action, alias=alias,
                              from_version=frm, to_version=to, actor="tester", reason=f"{action} {to}",
                              data_interval_end=as_of, **extra)


def move(engine: sa.Engine, config: PipelineConfig, env: EnvironmentConfig, key: str, action: str, frm, to) -> None:
    assert ledger.append_ledger(engine, entry(key, action, to, frm, alias=ledger.ledger_alias(env),
                                              environment=env.name))


# ----------------------------------------------------------------------------- append / find
def test_same_key_twice_is_one_row(engine):
    first = entry("k-1", metrics={"candidate": {"roc_auc": 0.8}, "forced": False})
    assert ledger.append_ledger(engine, first) is True
    assert ledger.append_ledger(engine, first) is False
    # a different decision under the same key is not written either: the first decision stands
    assert ledger.append_ledger(engine, entry("k-1", action="refuse", to="9")) is False
    rows = ledger.ledger_rows(engine, PIPE)
    assert len(rows) == 1
    assert (rows[0]["action"], rows[0]["to_version"]) == ("promote", "1")
    assert rows[0]["metrics"] == {"candidate": {"roc_auc": 0.8}, "forced": False}  # JSON round trip
    assert ledger.find_ledger(engine, "k-1")["id"] == rows[0]["id"]
    assert ledger.find_ledger(engine, "no-such-key") is None


def test_append_through_the_lock_connection_is_idempotent_too(engine):
    with ledger.lifecycle_lock(engine, PIPE, "t") as conn:
        assert ledger.append_ledger(conn, entry("k-conn")) is True
        assert ledger.append_ledger(conn, entry("k-conn")) is False
    with ledger.lifecycle_lock(engine, PIPE, "t") as conn:
        assert ledger.append_ledger(conn, entry("k-conn")) is False  # committed by the first block
    assert len(ledger.ledger_rows(engine, PIPE)) == 1


def test_ledger_rows_are_oldest_first_per_pipeline_and_filtered(engine):
    for i in range(3):
        ledger.append_ledger(engine, entry(f"a{i}", to=str(i + 1)))
    ledger.append_ledger(engine, entry("other", pipeline="ticket_triage"))
    ledger.append_ledger(engine, entry("dev-move", alias="dev"))
    rows = ledger.ledger_rows(engine, PIPE)
    assert [r["idempotency_key"] for r in rows] == ["a0", "a1", "a2", "dev-move"]
    champion = ledger.ledger_rows(engine, PIPE, where=lambda t: t.c.alias == "champion")
    assert [r["to_version"] for r in champion] == ["1", "2", "3"]
    assert [r["idempotency_key"] for r in ledger.ledger_rows(engine, "ticket_triage")] == ["other"]


# ------------------------------------------------------------------------------ environments
def test_serving_environment_is_recorded_as_champion_and_moves_both_aliases(claims_config):
    prod = claims_config.promotion.environment("prod")
    assert prod.serving
    assert ledger.ledger_alias(prod) == "champion"
    assert ledger.moved_aliases(prod) == ["prod", "champion"]


def test_other_environments_move_only_their_own_alias(claims_config):
    for name in ("dev", "staging"):
        env = claims_config.promotion.environment(name)
        assert not env.serving
        assert ledger.ledger_alias(env) == name
        assert ledger.moved_aliases(env) == [name]
    renamed = EnvironmentConfig(name="qa", alias="quality")
    assert ledger.ledger_alias(renamed) == "quality" and ledger.moved_aliases(renamed) == ["quality"]
    served = EnvironmentConfig(name="live", alias="live_alias", serving=True)
    assert ledger.moved_aliases(served) == ["live_alias", "champion"]


# ---------------------------------------------------------------------------------- rollback
def test_previous_version_steps_back_past_rolled_back_versions(engine, claims_config):
    prod = claims_config.promotion.environment("prod")
    dev = claims_config.promotion.environment("dev")
    assert ledger.previous_version(engine, claims_config, prod, None) is None  # nothing recorded
    move(engine, claims_config, prod, "p1", "promote", None, "1")
    assert ledger.previous_version(engine, claims_config, prod, "1") is None  # the first champion
    move(engine, claims_config, prod, "p2", "promote", "1", "2")
    move(engine, claims_config, prod, "p3", "promote", "2", "3")
    # moves of other environments and refusals are no candidates
    move(engine, claims_config, dev, "d4", "promote", "3", "4")
    move(engine, claims_config, prod, "r4", "refuse", "3", "4")
    assert ledger.previous_version(engine, claims_config, prod, "3") == "2"
    move(engine, claims_config, prod, "rb1", "rollback", "3", "2")
    assert ledger.previous_version(engine, claims_config, prod, "2") == "1"  # not back to 3
    move(engine, claims_config, prod, "rb2", "rollback", "2", "1")
    assert ledger.previous_version(engine, claims_config, prod, "1") is None  # v1 was the first
    # dev has its own history: v3 before v4 there, although prod rolled back from v3
    assert ledger.previous_version(engine, claims_config, dev, "4") == "3"


def test_a_version_promoted_again_after_its_rollback_is_still_skipped(engine, claims_config):
    """previous_version skips every version ever rolled back from, even one promoted again since."""
    prod = claims_config.promotion.environment("prod")
    move(engine, claims_config, prod, "p1", "promote", None, "1")
    move(engine, claims_config, prod, "p2", "promote", "1", "2")
    move(engine, claims_config, prod, "rb", "rollback", "2", "1")
    move(engine, claims_config, prod, "p3", "promote", "1", "3")
    assert ledger.previous_version(engine, claims_config, prod, "3") == "1"


def test_a_re_promoted_version_is_the_one_step_rollback_target(engine, claims_config):
    prod = claims_config.promotion.environment("prod")
    move(engine, claims_config, prod, "p1", "promote", None, "1")
    move(engine, claims_config, prod, "p2", "promote", "1", "2")
    move(engine, claims_config, prod, "rb", "rollback", "2", "1")
    move(engine, claims_config, prod, "p2-again", "promote", "1", "2")  # fixed, gated and promoted again
    move(engine, claims_config, prod, "p3", "promote", "2", "3")
    assert ledger.previous_version(engine, claims_config, prod, "3") == "2"


# ------------------------------------------------------------------------------------ audit
def test_version_at_business_time_vs_recorded_time(engine, claims_config):
    # A backfill: the move for as-of 2026-03-01 (v2) was recorded after the one for 2026-03-10 (v1).
    ledger.append_ledger(engine, entry("late-day", to="1", as_of="2026-03-10"), recorded_at=utc(2026, 5, 1, 12))
    ledger.append_ledger(engine, entry("early-day", to="2", as_of="2026-03-01"), recorded_at=utc(2026, 6, 1, 12))
    ledger.append_ledger(engine, entry("refused", action="refuse", to="3", as_of="2026-03-20"),
                         recorded_at=utc(2026, 6, 2))
    ledger.append_ledger(engine, entry("no-day", action="rollback", to="1", frm="2"), recorded_at=utc(2026, 7, 1))

    def at(when: datetime, business: bool) -> str | None:
        row = ledger.version_at(engine, PIPE, "champion", when, business=business)
        return row["to_version"] if row else None

    # business clock: effective at the as-of day (midnight UTC)
    assert at(utc(2026, 2, 28), True) is None
    assert at(utc(2026, 3, 1), True) == "2"
    assert at(utc(2026, 3, 9, 23), True) == "2"
    assert at(utc(2026, 3, 10), True) == "1"
    assert at(utc(2026, 3, 25), True) == "1"  # a refusal moves nothing
    # a row without an as-of day falls back to when it was recorded
    assert at(utc(2026, 6, 30), True) == "1"
    assert ledger.version_at(engine, PIPE, "champion", utc(2026, 7, 2), business=True)["action"] == "rollback"
    # recorded clock (audit): in the order things happened
    assert at(utc(2026, 4, 30), False) is None
    assert at(utc(2026, 5, 1, 12), False) == "1"
    assert at(utc(2026, 6, 1, 12), False) == "2"
    assert at(utc(2026, 7, 1), False) == "1"
    # a naive moment is UTC
    assert at(datetime(2026, 6, 1, 12), False) == "2"
    # a config is accepted in place of the pipeline name; other aliases have their own history
    assert ledger.version_at(engine, claims_config, "champion", utc(2026, 3, 1), business=True)["to_version"] == "2"
    assert ledger.version_at(engine, PIPE, "dev", utc(2027, 1, 1)) is None


def test_version_at_breaks_ties_by_ledger_order(engine):
    same = utc(2026, 3, 1)
    ledger.append_ledger(engine, entry("first", to="1", as_of="2026-03-01"), recorded_at=same)
    ledger.append_ledger(engine, entry("second", to="2", as_of="2026-03-01"), recorded_at=same)
    assert ledger.version_at(engine, PIPE, "champion", same, business=True)["to_version"] == "2"
    assert ledger.version_at(engine, PIPE, "champion", same, business=False)["to_version"] == "2"


# ------------------------------------------------------------------------------------- lock
def test_lifecycle_lock_serialises_holders_on_sqlite(engine):
    events: list[tuple[str, float]] = []
    first_inside = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with ledger.lifecycle_lock(engine, PIPE, "first holder") as conn:
                first_inside.set()
                time.sleep(0.6)
                ledger.append_ledger(conn, entry("from-first"))
                events.append(("first releases", time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            errors.append(err)

    def second() -> None:
        try:
            assert first_inside.wait(10)
            events.append(("second asks", time.monotonic()))
            with ledger.lifecycle_lock(engine, PIPE, "second holder") as conn:
                events.append(("second holds", time.monotonic()))
                # the first holder's row committed before the second got the lock
                assert ledger.find_ledger(engine, "from-first") is not None
                ledger.append_ledger(conn, entry("from-second", to="2"))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    names = [name for name, _ in events]
    assert names == ["second asks", "first releases", "second holds"], events
    times = dict(events)
    assert times["second holds"] >= times["first releases"]
    assert times["second holds"] - times["second asks"] > 0.3  # it waited for the first holder
    with engine.connect() as conn:
        holder = conn.execute(sa.select(store.lifecycle_locks.c.holder)
                              .where(store.lifecycle_locks.c.pipeline == PIPE)).scalar_one()
    assert holder == "second holder"
    assert [r["idempotency_key"] for r in ledger.ledger_rows(engine, PIPE)] == ["from-first", "from-second"]


def test_an_error_inside_the_lock_rolls_its_ledger_rows_back_and_frees_the_lock(engine):
    with pytest.raises(RuntimeError, match="boom"):
        with ledger.lifecycle_lock(engine, PIPE, "crashing holder") as conn:
            assert ledger.append_ledger(conn, entry("never-committed"))
            raise RuntimeError("boom")
    assert ledger.find_ledger(engine, "never-committed") is None
    started = time.monotonic()
    with ledger.lifecycle_lock(engine, PIPE, "next holder") as conn:  # not left locked
        assert ledger.append_ledger(conn, entry("never-committed"))
    assert time.monotonic() - started < 5
    assert ledger.find_ledger(engine, "never-committed")["actor"] == "tester"


def test_locks_of_different_pipelines_are_separate_rows(engine):
    with ledger.lifecycle_lock(engine, "a_pipeline", "holder a"):
        pass
    with ledger.lifecycle_lock(engine, "b_pipeline", "holder b" + "x" * 400):
        pass
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(store.lifecycle_locks.c.pipeline, store.lifecycle_locks.c.holder)).all())
    assert rows["a_pipeline"] == "holder a"
    assert len(rows["b_pipeline"]) == 300  # the holder is cut to the column's size
