"""The ``airloop`` command line: argument parsing and dispatch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from airloop.cli.commands import cmd_init, cmd_serve, cmd_simulate, cmd_start_serving, cmd_stop_serving, cmd_token
from airloop.cli.demo import cmd_demo, cmd_summary, cmd_train
from airloop.cli.processes import cmd_up
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import ConfigError, get_settings
from airloop.data.validation import write_suite


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    # The state folder holds databases, models, logs and secrets: whatever this process and the
    # ones it starts (Airflow, MLflow, serving) create there is readable by its owner only.
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="airloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init").set_defaults(func=cmd_init)
    p = sub.add_parser("simulate")
    p.add_argument("--pipeline", default="claims_fraud", help="a pipeline with a simulated dataset")
    p.add_argument("--days", type=int, default=None, help="days of history (default: the dataset's)")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_simulate)
    sub.add_parser("serve").set_defaults(func=cmd_serve)
    sub.add_parser("start-serving").set_defaults(func=cmd_start_serving)
    sub.add_parser("up").set_defaults(func=cmd_up)
    sub.add_parser("stop-serving").set_defaults(func=cmd_stop_serving)
    p = sub.add_parser("token", help="print a serving token (curl -H \"Authorization: Bearer $(make -s token)\")")
    p.add_argument("tenant", nargs="?", default="default")
    p.add_argument("--admin", action="store_true", help="the admin token (reload, corrections, replays)")
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("train")
    p.add_argument("--pipeline", default="claims_fraud")
    p.add_argument("--as-of", required=True)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo")
    p.add_argument("--pipeline", default="claims_fraud")
    p.add_argument("--days", type=int, default=150)
    p.add_argument("--as-of", default="2026-03-01")
    p.add_argument("--loop-from", default="2026-04-17", help="first day of replayed traffic + monitoring")
    p.add_argument("--loop-days", type=int, default=40, help="days of the loop (default: to 05-26, past the "
                   "covariate shift of 04-20, the concept drift of 04-30, the retrain that follows it and "
                   "the new version's recovery in its trailing realized figure)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("suite", help="regenerate the GX suites in include/gx from the pipeline files")
    p.add_argument("pipelines", nargs="*", help="pipeline names (default: all under include/pipelines)")
    p.set_defaults(func=cmd_suite)
    p = sub.add_parser("check", help="check pipeline files against their source and suite (exit 1 on a problem)")
    p.add_argument("pipelines", nargs="*", help="pipeline names or files (default: all under include/pipelines)")
    p.add_argument("--no-source", action="store_true", help="check the file and its suite only, not the data")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("release", help="release quarantined days of a pipeline (list them without a day)")
    p.add_argument("pipeline")
    p.add_argument("days", nargs="*", help="days (YYYY-MM-DD) to release")
    p.add_argument("--revalidate", action="store_true",
                   help="re-validate every quarantined day with the current suite and release those that pass")
    p.add_argument("--reason", default="released by hand", help="recorded in release.json")
    p.set_defaults(func=cmd_release)
    from airloop.cli import replay  # `airloop replay`: own source rows through serving

    replay.add_parser(sub)
    p = sub.add_parser("summary")
    p.add_argument("--pipeline", default="claims_fraud")
    p.set_defaults(func=cmd_summary)
    from airloop.cli.datasets import add_dataset_parser  # `airloop dataset list|export` (public datasets)

    add_dataset_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def cmd_suite(args) -> int:
    """Regenerate the stored suite of each named pipeline (default: every pipeline file); what
    ``make suite`` runs. A bad file never stops the others: every good pipeline's suite is
    written, the bad files are reported at the end and the exit code is 1."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    settings = get_settings()
    names = args.pipelines or sorted(p.stem for p in settings.pipelines_dir.glob("*.yaml"))
    bad: dict[str, str] = {}
    for name in names:
        try:
            config = load_pipeline_config(name, settings)
            stem = Path(name).stem
            if config.name != stem:
                raise ConfigError(f"{name}: name {config.name!r} must equal the file name {stem!r}")
            write_suite(config, settings)
        except ConfigError as err:
            bad[name] = str(err)
    if bad:
        print(f"\n{len(bad)} of {len(names)} pipeline file(s) are bad; their suites were not written:", file=sys.stderr)
        for message in bad.values():
            print(message, file=sys.stderr)
        return 1
    return 0


def cmd_check(args) -> int:
    """``airloop check``: one report per pipeline file (:func:`airloop.data.check.check_all`);
    exit 1 when any has a problem."""
    import json

    from airloop.data.check import check_all

    for name in ("great_expectations", "airloop.data.validation"):
        logging.getLogger(name).setLevel(logging.ERROR)
    reports = check_all(get_settings(), names=args.pipelines or None, source=not args.no_source)
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2, default=str))
    else:
        print("\n\n".join(r.format() for r in reports))
        bad = [r.pipeline for r in reports if not r.ok]
        print(f"\n{len(reports) - len(bad)} of {len(reports)} pipeline file(s) OK"
              + (f"; problems in: {', '.join(bad)}" if bad else ""))
    return 0 if all(r.ok for r in reports) else 1


def cmd_release(args) -> int:
    """``airloop release <pipeline> [day ...] [--revalidate]``: take days out of quarantine (the
    next run validates them again), re-validate them all, or list them."""
    from datetime import date

    from airloop.data.quarantine import quarantine_reason, quarantined_days, release_day, revalidate_quarantined

    settings = get_settings()
    config = load_pipeline_config(args.pipeline, settings)
    if args.revalidate:
        result = revalidate_quarantined(config, settings, days=[date.fromisoformat(d) for d in args.days] or None,
                                        force=True)
        print(f"released: {', '.join(result['released']) or 'none'}; still failing: {', '.join(result['kept']) or 'none'}")
        return 0
    if not args.days:
        days = sorted(quarantined_days(config, settings))
        print(f"{config.name}: {len(days)} quarantined day(s)" + (":" if days else ""))
        for day in days:
            reason = quarantine_reason(config, settings, day)
            failures = "; ".join(f.get("message", "").split(" failed: ")[0].split(": ", 1)[-1]
                                 for f in reason.get("failures", []))
            print(f"  {day}  {reason.get('rows', '?')} rows  {failures}")
        return 0
    status = 0
    for text in args.days:
        try:
            folder = release_day(config, settings, date.fromisoformat(text), args.reason)
            print(f"released {text} (kept in {folder}); the next run validates it again")
        except (KeyError, ValueError) as err:
            print(str(err).strip("'\""), file=sys.stderr)
            status = 1
    return status
