"""A promotion or rollback in a process of its own that a fault point kills (imported by spawned
children: no test imports here)."""

from __future__ import annotations

import os


def promote_with_fault(config, settings, version: str, environment: str, fault_dir: str, key: str,
                       evidence: dict) -> None:
    """Promote ``version`` into ``environment`` with the fault points of ``fault_dir`` armed."""
    os.environ["AIRLOOP_FAULT_AT"] = fault_dir
    from airloop.registry import lifecycle

    lifecycle.promote_version(config, settings, version, environment, actor="faulted", reason="chaos",
                              idempotency_key=key, evidence=evidence)


def rollback_with_fault(config, settings, environment: str, target: str, fault_dir: str, key: str) -> None:
    """Roll ``environment`` back to ``target`` with the fault points of ``fault_dir`` armed."""
    os.environ["AIRLOOP_FAULT_AT"] = fault_dir
    from airloop.registry import lifecycle

    lifecycle.rollback(config, settings, environment, target, actor="faulted", reason="chaos", idempotency_key=key)
