"""Fixtures of the store tests: the monitoring store on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from airloop.core import store
from tests.pg import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """An empty store database: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
        yield eng
        eng.dispose()
        return
    with fresh_database() as uri:
        eng = sa.create_engine(uri)
        yield eng
        eng.dispose()


def rewind_store(engine: sa.Engine, version: int, columns: dict[str, list[str]], tables: list[str]) -> None:
    """A store exactly at ``version - 1``: migrated to the latest, then what migration ``version``
    adds (``columns`` per table, new ``tables``) taken away and its record deleted. Only for the
    latest migrations (a later one must not depend on what is taken away)."""
    store.migrate(engine)
    with engine.begin() as conn:
        for table, names in columns.items():
            for column in names:
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        for table in tables:
            conn.exec_driver_sql(f"DROP TABLE {table}")
        conn.execute(sa.delete(store.schema_migrations).where(store.schema_migrations.c.version == version))


def column_names(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}
