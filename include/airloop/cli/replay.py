"""``airloop replay``: send a pipeline's own source rows of some days through serving's
``/predict`` (see :mod:`airloop.serving.replay`)."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date, timedelta

from airloop.core.pipeline import load_pipeline_config
from airloop.cli.commands import settings_with_secrets
from airloop.serving.replay import DEFAULT_BATCH, ReplayError, replay_day, replay_endpoint

DESCRIPTION = """\
Send the source rows of each day D1..D2 (inclusive) of a pipeline through serving's /predict, as
the business would have: request ids = the pipeline's id_column, event times = its timestamp
column, the admin token (AIRLOOP_ADMIN_TOKEN) and the day as the replay interval (serving accepts
event times outside its window around now only so). Prints, per day, the rows sent, accepted
and rejected (with serving's reasons). Re-running is safe: the same request ids are sent again
and serving's prediction log keeps one row per id."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``replay`` on the ``airloop`` command's subparsers."""
    p = sub.add_parser("replay", help="replay a pipeline's source rows of some days through serving",
                       description=DESCRIPTION)
    p.add_argument("--pipeline", required=True, help="pipeline name (include/pipelines/<name>.yaml)")
    p.add_argument("--from", dest="start", required=True, type=date.fromisoformat, metavar="D1",
                   help="first day (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", type=date.fromisoformat, metavar="D2",
                   help="last day, inclusive (default: D1)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"records per request (default {DEFAULT_BATCH})")
    p.add_argument("--rate", type=float, default=None, metavar="R",
                   help="at most R records per second (default: as fast as serving answers)")
    p.add_argument("--url", default=None, help="serving's base URL (default: AIRLOOP_SERVING_URL)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the days; 0 when every day was sent (rejected rows are reported, not fatal), 1 when
    serving could not be reached or kept failing, 2 on bad arguments."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    settings = settings_with_secrets()  # the admin token a replay sends (from .airloop/secrets.env)
    config = load_pipeline_config(args.pipeline, settings)
    end = args.end or args.start
    if end < args.start:
        print(f"--to {end} is before --from {args.start}", file=sys.stderr)
        return 2
    endpoint = replay_endpoint(settings, config, args.url)
    print(f"replaying {config.name} {args.start} .. {end} to {endpoint.url}/predict")
    totals = {"rows": 0, "sent": 0, "accepted": 0, "rejected": 0}
    day = args.start
    while day <= end:
        try:
            result = replay_day(settings, config, day, batch=args.batch, rate=args.rate, endpoint=endpoint)
        except ReplayError as err:
            print(err.result.summary(), file=sys.stderr)
            print(f"stopped: {err}", file=sys.stderr)
            return 1
        except ValueError as err:
            print(str(err), file=sys.stderr)
            return 2
        print(result.summary() if result.rows else f"{day} {config.name}: no source rows")
        for key in totals:
            totals[key] += getattr(result, key)
        day += timedelta(days=1)
    print("total: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
    if totals["rows"] and not totals["accepted"]:  # e.g. every request refused (401/403): not a success
        print("nothing was accepted: see the reasons above", file=sys.stderr)
        return 1
    return 0
