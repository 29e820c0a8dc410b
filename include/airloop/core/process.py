"""Which process owns something: a ``(host, pid)`` pair, and whether that process is gone.

Work a killed process leaves behind (an Optuna trial or an MLflow run still ``RUNNING``) carries
its owner's host and pid; a retry on the same host ends what a dead process owned.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (signal 0; a process of another user counts)
    and is not a zombie: a killed process its parent has not reaped yet answers signal 0 but is gone."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        pass
    except (OSError, ValueError, OverflowError):
        return False
    try:
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux) or a race with its exit: signal 0 said it exists
    return state not in ("Z", "X")


def owner() -> dict[str, str]:
    """This process as an owner: ``{"host", "pid"}`` (strings, as tags store them)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def owner_gone(host: str | None, pid: str | int | None) -> bool:
    """True when ``(host, pid)`` names a process of this host, other than this one, that is gone.
    Unknown owners and other hosts' processes are never judged gone."""
    if not host or pid in (None, "") or host != socket.gethostname():
        return False
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    return pid != os.getpid() and not pid_alive(pid)
