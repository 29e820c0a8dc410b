"""Prediction-log rows as columns, and their bulk write.

:class:`RowBatch` holds the rows of one write as one list per table column (every column of the
table, in table order, values as the database takes them: JSON columns encoded, datetimes as
tz-aware UTC, numpy scalars as Python). :meth:`RowBatch.prepare` builds it from the logger's row
dicts one column at a time; :meth:`RowBatch.from_prepared` from rows that are prepared already
(a spool file). :func:`insert_batch` writes it with one statement per batch, skipping rows
whose key is stored (idempotent, like :func:`airloop.core.store.insert_ignore`):

* **SQLite**: one ``executemany`` of the compiled ``INSERT ... ON CONFLICT DO NOTHING``, its
  parameters zipped from the columns (each column's bind conversion applied to the column, once
  per distinct object);
* **PostgreSQL** (psycopg 3): ``COPY`` into a temporary table of the same columns, then one
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` from it, in one transaction — see
  :data:`COPY_MIN_ROWS` and ``benchmarks/README.md`` for when it beats ``executemany``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from airloop.core import bulkload, partitions, store
from airloop.core.timeutil import to_utc

#: From this many rows on, a PostgreSQL write goes through ``COPY`` (fewer: ``executemany``,
#: which skips the temporary table's round trips).
COPY_MIN_ROWS = 50


#: Value types the drivers take as they are (anything else from numpy is turned into its Python value).
PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """A numpy scalar as its Python value; anything else as it is."""
    if value.__class__ not in PLAIN_TYPES and type(value).__module__ == "numpy":
        return value.item()
    return value


class RowBatch:
    """The rows of one write, one list per column of ``table`` (table order)."""

    __slots__ = ("table", "names", "columns")

    def __init__(self, table: sa.Table, columns: list[list[Any]]) -> None:
        self.table = table
        self.names: tuple[str, ...] = tuple(c.name for c in table.columns)
        if len(columns) != len(self.names):
            raise ValueError(f"{len(columns)} columns for the {len(self.names)} of {table.name}")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def __getitem__(self, index: slice) -> "RowBatch":
        """The rows of a slice, as a batch of their own."""
        if not isinstance(index, slice):
            raise TypeError("a RowBatch is sliced; use rows() for single rows")
        return RowBatch(self.table, [col[index] for col in self.columns])

    def column(self, name: str) -> list[Any]:
        """The values of column ``name`` (empty when the table has no such column)."""
        return self.columns[self.names.index(name)] if name in self.names else []

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts of every column (what a spool file or a rejected row keeps)."""
        names = self.names
        return [dict(zip(names, values)) for values in zip(*self.columns)]

    @classmethod
    def prepare(cls, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, defaults: Mapping[str, Any],
                json_columns: frozenset[str], encode: Callable[[Any], str]) -> "RowBatch":
        """Columns of ``rows`` (dicts of column values, as handed to the logger): a column a row
        lacks gets ``defaults`` (else None), ``json_columns`` are encoded with ``encode``,
        datetimes made tz-aware UTC (:func:`airloop.core.timeutil.to_utc`, once per distinct
        value: the rows of one request share theirs), numpy scalars made Python values.
        ``TypeError`` / ``ValueError`` when a value cannot be (the caller isolates the row)."""
        columns = []
        for column in table.columns:
            name = column.name
            default = defaults.get(name)
            values = [row.get(name, default) for row in rows]
            if name in json_columns:
                values = [None if v is None else encode(v) for v in values]
            elif isinstance(column.type, sa.DateTime):
                seen: dict[int, Any] = {}
                values = [None if v is None else seen[id(v)] if id(v) in seen else seen.setdefault(id(v), to_utc(v))
                          for v in values]
            elif not PLAIN_TYPES.issuperset(map(type, values)):
                values = [_plain(v) for v in values]
            columns.append(values)
        return cls(table, columns)

    @classmethod
    def from_prepared(cls, table: sa.Table, rows: Sequence[Mapping[str, Any]],
                      defaults: Mapping[str, Any] | None = None) -> "RowBatch":
        """Columns of rows that are prepared already (JSON columns encoded: a spool file's
        rows; a column a row lacks gets ``defaults``, else None); datetimes are still made
        tz-aware UTC (a spool file keeps them as ISO text)."""
        defaults = defaults or {}
        columns = []
        for column in table.columns:
            default = defaults.get(column.name)
            values = [row.get(column.name, default) for row in rows]
            if isinstance(column.type, sa.DateTime):
                values = [None if v is None else to_utc(v) for v in values]
            columns.append(values)
        return cls(table, columns)


def insert_batch(engine: sa.Engine, batch: RowBatch) -> int:
    """Write ``batch`` in one transaction, skipping rows whose primary key is stored; return the
    rows inserted (``len(batch) - result`` were duplicates). PostgreSQL batches of
    :data:`COPY_MIN_ROWS` rows or more go through ``COPY`` (:func:`copy_insert`). A day-partitioned
    table (``predictions`` on PostgreSQL) gets the partitions of the batch's days first
    (:func:`airloop.core.partitions.write_with_partitions`; known days cost nothing) and every
    batch goes through :func:`airloop.core.partitions.copy_new_requests` (a request id stored
    within a day of the batch is a duplicate, though the stored key includes ``ts``)."""
    if not len(batch):
        return 0
    def stamps() -> list[Any]:
        return batch.column(partitions.PARTITION_COLUMN)

    if partitions.is_day_partitioned(engine, batch.table):
        return partitions.write_with_partitions(engine, batch.table, stamps, lambda: partitions.copy_new_requests(
            engine, batch.table, batch.names, zip(*batch.columns), stamps()))
    if engine.dialect.name == "postgresql" and len(batch) >= COPY_MIN_ROWS and _is_psycopg(engine):
        return copy_insert(engine, batch)
    return executemany_insert(engine, batch)


def _is_psycopg(engine: sa.Engine) -> bool:
    return engine.dialect.driver == "psycopg"


def _bound_columns(engine: sa.Engine, batch: RowBatch) -> tuple[str, tuple[str, ...], list[list[Any]]]:
    """The compiled ``INSERT ... ON CONFLICT DO NOTHING`` (:func:`airloop.core.store._insert_ignore_plan`),
    its columns in placeholder order, and their values with each column's bind conversion applied
    (once per distinct object: the rows of one request share their datetime)."""
    sql, keys, processors = store._insert_ignore_plan(engine, batch.table, batch.names)
    by_name = dict(zip(batch.names, batch.columns))
    columns = [by_name[key] for key in keys]
    for i, process in processors:
        seen: dict[int, Any] = {}
        columns[i] = [seen[id(v)] if id(v) in seen else seen.setdefault(id(v), process(v)) for v in columns[i]]
    return sql, keys, columns


def executemany_insert(engine: sa.Engine, batch: RowBatch) -> int:
    """``INSERT ... ON CONFLICT DO NOTHING`` of every row with one ``executemany`` (any dialect)."""
    sql, _, columns = _bound_columns(engine, batch)
    with engine.begin() as conn:
        result = conn.exec_driver_sql(sql, list(zip(*columns)))
    return result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(batch)


def copy_insert(engine: sa.Engine, batch: RowBatch) -> int:
    """PostgreSQL: ``COPY`` the rows into a temporary table (dropped at commit), then insert them
    with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (a key sent twice in the batch is
    inserted once) — one transaction, parameterised by COPY's own protocol (no SQL built from
    values). Returns the rows inserted."""
    def insert(load: bulkload.Load) -> int | None:
        load.cursor.execute(f"INSERT INTO {load.target} ({load.columns}) SELECT {load.columns} FROM {load.temp} "
                            "ON CONFLICT DO NOTHING")
        return load.cursor.rowcount

    inserted = bulkload.temp_load(engine, batch.table, batch.names, zip(*batch.columns), insert)
    return inserted if inserted is not None and inserted >= 0 else len(batch)
