"""The pipeline-check DAG's stage: check every pipeline file against its source and suite."""

from __future__ import annotations

import logging
from typing import Any

from airloop.core.pipeline import ConfigurationError
from airloop.core.settings import Settings
from airloop.data.check import check_all

log = logging.getLogger(__name__)

__all__ = ["ConfigurationError", "SourceUnavailable", "check_pipelines"]


class SourceUnavailable(RuntimeError):
    """A pipeline's source could not be read (no data yet, database down): worth a retry."""


def check_pipelines(settings: Settings) -> dict[str, Any]:
    """Run :func:`airloop.data.check.check_all` and log every report. Raise
    :class:`ConfigurationError` naming the pipelines whose file is wrong (not worth a retry),
    else :class:`SourceUnavailable` naming those whose source could not be read; return
    ``{pipeline: {"ok": ..., "warnings": [...]}}`` when all are fine."""
    reports = check_all(settings)
    for report in reports:
        (log.info if report.ok else log.error)("\n%s", report.format())
    wrong = [r for r in reports if r.config_errors]
    if wrong:
        raise ConfigurationError(
            f"{len(wrong)} of {len(reports)} pipeline file(s) have problems: {', '.join(r.pipeline for r in wrong)}\n"
            + "\n\n".join(r.format() for r in wrong))
    unreadable = [r for r in reports if r.errors]
    if unreadable:
        raise SourceUnavailable(f"source not readable for {', '.join(r.pipeline for r in unreadable)}:\n"
                                + "\n".join(f"{r.pipeline}: {e.message}" for r in unreadable for e in r.errors))
    return {r.pipeline: {"ok": r.ok, "warnings": [w.message for w in r.warnings]} for r in reports}
