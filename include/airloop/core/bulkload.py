"""Bulk loads into PostgreSQL through a temporary table: the rows are ``COPY``-ed (psycopg 3;
another DBAPI driver: ``executemany``) into ``_airloop_load_<table>`` (``LIKE`` the table, its rows
dropped at commit), then a caller's statement moves them into the table — all in one transaction,
values travelling by COPY's own protocol or as parameters (no SQL built from values). Used by the
prediction log's writers (:func:`airloop.serving.rowbatch.copy_insert`,
:func:`airloop.core.partitions.copy_new_requests`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class Load:
    """What the caller's final statement needs: the open DBAPI cursor and quoted identifiers."""

    cursor: Any
    target: str  #: the table, quoted (schema-qualified when it has one)
    temp: str  #: the temporary table holding the rows, quoted
    columns: str  #: the loaded columns, quoted, comma-separated
    names: Sequence[str]
    quote: Callable[[str], str]


def temp_load(engine: sa.Engine, table: sa.Table, names: Sequence[str], rows: Iterable[Sequence[Any]],
              finish: Callable[[Load], int | None]) -> int | None:
    """Load ``rows`` (tuples of the columns ``names``) into the temporary table, then
    ``finish(load)`` (the statement moving them; its result is returned) in the same transaction.
    A refused row raises SQLAlchemy's ``IntegrityError`` / ``DataError`` (the DBAPI error mapped by
    the dialect) and nothing is stored."""
    quote = engine.dialect.identifier_preparer.quote
    target = quote(table.name) if table.schema is None else f"{quote(table.schema)}.{quote(table.name)}"
    temp = quote(f"_airloop_load_{table.name}")
    columns = ", ".join(quote(n) for n in names)
    statement = f"COPY {temp} ({columns}) FROM STDIN"
    dbapi_error = engine.dialect.loaded_dbapi.Error
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {target} INCLUDING DEFAULTS) "
                           "ON COMMIT DELETE ROWS")
            if engine.dialect.driver == "psycopg":
                with cursor.copy(statement) as copy:
                    for values in rows:
                        copy.write_row(values)
            else:
                statement = f"INSERT INTO {temp} ({columns}) VALUES ({', '.join(['%s'] * len(names))})"
                cursor.executemany(statement, list(rows))
            statement = f"INSERT INTO {target} ... SELECT ... FROM {temp}"
            return finish(Load(cursor, target, temp, columns, names, quote))
        except dbapi_error as err:  # as SQLAlchemy's own errors: IntegrityError / DataError for refused rows
            raise sa.exc.DBAPIError.instance(statement, None, err, dbapi_error, dialect=engine.dialect) from err
        finally:
            cursor.close()
