"""Jinja2 rendering of the view's templates (autoescaped: pipeline names, reasons and feature
names are user input) with the value formatters the tables share."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).resolve().parent / "templates"


def fmt(value: Any) -> str:
    """A cell value as text: numbers to 4 significant digits, times to the minute (UTC), JSON
    objects and lists flattened; empty for ``None``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M") if (value.hour, value.minute) != (0, 0) else value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return fmt(json.loads(value))
        except ValueError:
            return value
    if isinstance(value, str) and len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
        try:
            return fmt(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return value
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def day(value: Any) -> str:
    """The date part of a time (``YYYY-MM-DD``)."""
    text = fmt(value)
    return text[:10]


def columns(rows: list[dict[str, Any]], preferred: list[str]) -> list[str]:
    """The ``preferred`` keys present in any row, in that order."""
    present = {k for row in rows for k, v in row.items() if v is not None}
    return [k for k in preferred if k in present]


def metric(metrics: Any, name: str) -> Any:
    """``metrics[name]`` of a dict or a JSON text; ``None`` otherwise."""
    if isinstance(metrics, str):
        try:
            metrics = json.loads(metrics)
        except ValueError:
            return None
    return metrics.get(name) if isinstance(metrics, dict) else None


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, day=day, metric=metric)
    env.globals.update(columns=columns)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
