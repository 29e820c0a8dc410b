"""Inline SVG charts drawn server-side (no JavaScript, no CDN): a drift chart per feature (one
point per monitored interval, the threshold as a line, drifted points marked) and a line chart of
live performance against the holdout. Every label is escaped; the SVG is returned as ``Markup``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from markupsafe import Markup, escape

from airloop.core.metrics import finite_or_none

WIDTH, HEIGHT = 560, 180
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 12, 12, 28


def _label(value: Any) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)[:10]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


class _Frame:
    """Maps (index, value) to SVG coordinates over ``n`` x positions and a y range."""

    def __init__(self, n: int, values: Sequence[float]):
        self.n = n
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-12:  # one value: a band around it
            pad = abs(low) * 0.1 or 0.5
            low, high = low - pad, high + pad
        margin = (high - low) * 0.08
        self.low, self.high = low - margin, high + margin

    def x(self, i: int) -> float:
        span = WIDTH - PAD_LEFT - PAD_RIGHT
        return PAD_LEFT + (span / 2 if self.n == 1 else span * i / (self.n - 1))

    def y(self, value: float) -> float:
        span = HEIGHT - PAD_TOP - PAD_BOTTOM
        return PAD_TOP + span * (1 - (value - self.low) / (self.high - self.low))


def _axes(frame: _Frame, labels: Sequence[str]) -> list[str]:
    parts = [f'<line class="axis" x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH - PAD_RIGHT}" '
             f'y2="{HEIGHT - PAD_BOTTOM}"/>',
             f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{HEIGHT - PAD_BOTTOM}"/>']
    for value in (frame.low, (frame.low + frame.high) / 2, frame.high):
        y = frame.y(value)
        parts.append(f'<text class="tick" x="{PAD_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(value)}</text>')
    if labels:
        picks = sorted({0, len(labels) - 1, (len(labels) - 1) // 2})
        for i in picks:
            anchor = "start" if i == 0 and len(labels) > 1 else ("end" if i == len(labels) - 1 and i else "middle")
            parts.append(f'<text class="tick" x="{frame.x(i):.1f}" y="{HEIGHT - 8}" '
                         f'text-anchor="{anchor}">{escape(labels[i])}</text>')
    return parts


def _path(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def drift_chart(feature: str, points: Sequence[dict[str, Any]]) -> Markup:
    """One feature's drift history: a ``circle.pt`` per stored interval (``.drifted`` when it
    drifted), the statistic as a line and the threshold as a dashed line."""
    stats = [finite_or_none(p.get("statistic")) for p in points]
    thresholds = [finite_or_none(p.get("threshold")) for p in points]
    values = [v for v in stats + thresholds if v is not None]
    frame = _Frame(len(points), values)
    labels = [_label(p.get("interval_start")) for p in points]
    parts = [f'<svg class="chart drift-chart" data-feature="{escape(feature)}" data-points="{len(points)}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="drift of {escape(feature)}">',
             f"<title>{escape(feature)}: drift statistic per monitored interval</title>", *_axes(frame, labels)]
    line = [(frame.x(i), frame.y(v)) for i, v in enumerate(stats) if v is not None]
    limit = [(frame.x(i), frame.y(v)) for i, v in enumerate(thresholds) if v is not None]
    if len(limit) == 1:
        limit = [(PAD_LEFT, limit[0][1]), (WIDTH - PAD_RIGHT, limit[0][1])]
    if limit:
        parts.append(f'<polyline class="threshold" points="{_path(limit)}"/>')
    if len(line) > 1:
        parts.append(f'<polyline class="series" points="{_path(line)}"/>')
    for i, point in enumerate(points):
        value = stats[i]
        y = frame.y(value) if value is not None else HEIGHT - PAD_BOTTOM
        drifted = bool(point.get("drifted"))
        tip = (f"{labels[i]}: {point.get('method') or 'statistic'} "
               f"{_fmt(value) if value is not None else 'n/a'} (threshold "
               f"{_fmt(thresholds[i]) if thresholds[i] is not None else 'n/a'}; "
               f"{point.get('current_rows', '?')} rows){' DRIFTED' if drifted else ''}")
        parts.append(f'<circle class="pt{" drifted" if drifted else ""}" cx="{frame.x(i):.1f}" cy="{y:.1f}" '
                     f'r="{4.5 if drifted else 3}" data-interval="{escape(labels[i])}"><title>{escape(tip)}</title>'
                     f"</circle>")
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(name: str, labels: Sequence[Any], series: dict[str, Sequence[Any]]) -> Markup:
    """Several named series over the same x labels (``None`` values leave a gap), each with a
    legend entry; a series' CSS class is the first word of its name (``live``, ``holdout``, ...)."""
    cleaned = {key: [finite_or_none(v) for v in values] for key, values in series.items()}
    values = [v for vs in cleaned.values() for v in vs if v is not None]
    frame = _Frame(len(labels), values)
    texts = [_label(v) for v in labels]
    parts = [f'<svg class="chart line-chart" data-chart="{escape(name)}" viewBox="0 0 {WIDTH} {HEIGHT + 18}" '
             f'role="img" aria-label="{escape(name)}">', f"<title>{escape(name)}</title>", *_axes(frame, texts)]
    for s, (key, vs) in enumerate(cleaned.items()):
        kind = re.sub(r"[^a-z0-9-]", "", key.split()[0].lower()) if key.split() else "series"
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(vs):
            if v is None:
                runs.append([])
            else:
                runs[-1].append((frame.x(i), frame.y(v)))
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline class="series {kind}" points="{_path(run)}"/>')
        for i, v in enumerate(vs):
            if v is not None:
                parts.append(f'<circle class="dot {kind}" cx="{frame.x(i):.1f}" cy="{frame.y(v):.1f}" r="2.5">'
                             f"<title>{escape(key)} {escape(texts[i])}: {_fmt(v)}</title></circle>")
        x = PAD_LEFT + 160 * s
        parts.append(f'<rect class="legend {kind}" x="{x}" y="{HEIGHT + 6}" width="10" height="10" rx="2"/>'
                     f'<text class="tick" x="{x + 14}" y="{HEIGHT + 15}">{escape(key)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
