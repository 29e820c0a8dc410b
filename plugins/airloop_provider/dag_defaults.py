"""What every airloop DAG shares: its ``default_args`` by DAG family (one place for retries)."""

from __future__ import annotations

from datetime import timedelta

from airloop.core.settings import AIRLOOP_RETRY_DELAY_S, AIRLOOP_TASK_RETRIES

#: (retries, retry delay in seconds) by DAG family. Training and monitoring tasks are
#: transactions over their interval and safe to retry twice; a lifecycle action is retried once
#: (its idempotency key replays a recorded decision).
RETRIES: dict[str, tuple[int, int]] = {"training": (2, 30), "monitoring": (2, 30), "lifecycle": (1, 15)}


def default_args(family: str) -> dict:
    """The ``default_args`` of a DAG of ``family`` (``training``, ``monitoring``, ``lifecycle``)."""
    retries, delay_s = RETRIES[family]
    retries = AIRLOOP_TASK_RETRIES.get() if AIRLOOP_TASK_RETRIES.get() is not None else retries  # overrides:
    delay_s = AIRLOOP_RETRY_DELAY_S.get() or delay_s  # an operator's, or the chaos test's
    return {"retries": retries, "retry_delay": timedelta(seconds=delay_s), "owner": "airloop"}
