"""Atomic file writes: readers never see a partial file, a crash leaves at most a temp file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, *, fsync: bool = False, tmp: Path | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on a clean exit it is renamed over ``path``
    (after an ``fsync`` when asked), on an error it is removed. ``tmp`` names the temporary file
    (default: a fresh hidden ``.<name>.*.tmp`` in the same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: give the file the mode open() would
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: Path, data: bytes, *, fsync: bool = False, tmp: Path | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path, fsync=fsync, tmp=tmp) as scratch:
        scratch.write_bytes(data)
    return Path(path)
