"""The real PostgreSQL server for tests: a fresh database per use, dropped afterwards.

``AIRLOOP_TEST_PG_ADMIN_URI`` points at a database the tests may connect to as a superuser
(default: the local server with trust auth, as on the dev machines and in CI).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

PG_ADMIN = os.environ.get("AIRLOOP_TEST_PG_ADMIN_URI", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def pg_uri(name: str, host: str | None = None, port: int | None = None) -> str:
    """URI of database ``name`` on the test server (or on ``host:port``, e.g. a proxy)."""
    url = sa.engine.make_url(PG_ADMIN).set(database=name)
    if host is not None:
        url = url.set(host=host, port=port)
    return url.render_as_string(hide_password=False)


def admin_sql(sql: str) -> None:
    """Run one statement on the admin database, outside a transaction (CREATE/DROP DATABASE)."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        admin.dispose()


def new_database_name() -> str:
    """A unique name for a throw-away test database."""
    return f"airloop_test_{uuid.uuid4().hex[:12]}"


def drop_database(name: str) -> None:
    """Drop a test database, forcing out connections left open (the store's cached engines too)."""
    from airloop.core import store

    store.get_engine.cache_clear()
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database, yield its URI, drop it afterwards."""
    name = new_database_name()
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield pg_uri(name)
    finally:
        drop_database(name)
