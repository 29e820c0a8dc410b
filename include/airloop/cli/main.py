"""The ``airloop`` command line: argument parsing and dispatch."""

from __future__ import annotations

import argparse
import logging

from airloop.cli.commands import cmd_init, cmd_serve, cmd_simulate, cmd_start_serving, cmd_stop_serving
from airloop.cli.demo import cmd_demo, cmd_summary, cmd_train
from airloop.cli.processes import cmd_up
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import get_settings
from airloop.data.validation import write_suite


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
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
    p = sub.add_parser("train")
    p.add_argument("--pipeline", default="claims_fraud")
    p.add_argument("--as-of", required=True)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo")
    p.add_argument("--pipeline", default="claims_fraud")
    p.add_argument("--days", type=int, default=150)
    p.add_argument("--as-of", default="2026-03-01")
    p.add_argument("--loop-from", default="2026-04-15", help="first day of replayed traffic + monitoring")
    p.add_argument("--loop-days", type=int, default=21)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("suite", help="regenerate the GX suites in include/gx from the pipeline files")
    p.add_argument("pipelines", nargs="*", help="pipeline names (default: all under include/pipelines)")
    p.set_defaults(func=cmd_suite)
    p = sub.add_parser("summary")
    p.add_argument("--pipeline", default="claims_fraud")
    p.set_defaults(func=cmd_summary)
    args = parser.parse_args(argv)
    return args.func(args)


def cmd_suite(args) -> int:
    """Regenerate the stored suite of each named pipeline (default: every pipeline file); what
    ``make suite`` runs."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    settings = get_settings()
    names = args.pipelines or sorted(p.stem for p in settings.pipelines_dir.glob("*.yaml"))
    for name in names:
        write_suite(load_pipeline_config(name, settings), settings)
    return 0
