"""A private PostgreSQL 15 cluster a test may crash and restart (never the shared server on 5432).

:class:`PgCluster` runs ``initdb`` into a temporary folder (trust authentication), starts the
server with ``pg_ctl`` on a free loopback port and a private socket folder, stops it with
``pg_ctl stop -m immediate`` (a crash: no shutdown checkpoint, connections cut) and starts it
again (crash recovery replays the WAL). PostgreSQL refuses to run as root: when the test runs as
root, every server command runs as the ``postgres`` system user (``runuser``) and the folder is
handed to it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from airloop.ops.sandbox import free_port

#: Where Debian installs the PostgreSQL 15 server binaries.
PG_BIN = Path(os.environ.get("AIRLOOP_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    """True when the PostgreSQL 15 server binaries are installed."""
    return (PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file()


class PgCluster:
    """One throw-away cluster: ``start()``, ``crash()``, ``start()`` again, ``destroy()``."""

    def __init__(self, base: Path | None = None, database: str = "airloop_monitoring") -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="airloop-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self.port = free_port()
        self.database = database
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            for path in (self.base, self.sockets):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(PG_BIN / argv[0]), *argv[1:]]
        if self._owner is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}"
                               f"\n--- server log ---\n{self.server_log()[-3000:]}")
        return result

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def init(self) -> "PgCluster":
        """``initdb`` (trust auth, UTF-8), start, create :attr:`database`."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self.start()
        admin = sa.create_engine(self.uri("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.database}"'))
        finally:
            admin.dispose()
        return self

    def start(self) -> None:
        """Start the server (after :meth:`init` or :meth:`crash`) and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=50 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "90", "-o", options, "start")

    def crash(self) -> float:
        """``pg_ctl stop -m immediate``: every backend killed, no checkpoint; returns when it is down."""
        started = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        return time.monotonic() - started

    def running(self) -> bool:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]
        if self._owner is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True).returncode == 0

    def uri(self, database: str | None = None) -> str:
        """SQLAlchemy URI (psycopg 3) of ``database`` (default :attr:`database`) over TCP loopback."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def destroy(self) -> None:
        """Stop the server if it runs (immediately) and remove the folder."""
        try:
            if self.data.exists() and self.running():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.init()

    def __exit__(self, *exc) -> None:
        self.destroy()
