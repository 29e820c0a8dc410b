"""A promotion run in a process of its own (imported by spawned children: no test imports here)."""

from __future__ import annotations


def promote_when_released(config, settings, version: str, environment: str, barrier, results) -> None:
    """Wait at ``barrier`` with the other racer, then promote ``version`` into ``environment``."""
    from airloop.registry import lifecycle

    barrier.wait(timeout=120)
    outcome = lifecycle.promote_version(config, settings, version, environment, actor=f"racer-{version}",
                                        reason="race")
    results.put((version, outcome["promoted"], outcome["previous"]))
