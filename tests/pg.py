"""A real PostgreSQL server on loopback for the multi-worker sweep tests.

``initdb`` runs as user ``postgres`` (it refuses root) in a fresh directory; the server listens on
127.0.0.1 at a free port with a password user, and is stopped afterwards. The binaries come from
Debian's ``postgresql`` package (``make postgres`` installs it). Without them the tests are skipped,
unless ``FAMLAB_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            msg = "PostgreSQL server binaries not found (run `make postgres`)"
            if os.environ.get("FAMLAB_REQUIRE_POSTGRES") == "1":
                pytest.fail(msg)
            pytest.skip(msg)
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="famlab-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.password = "famlab-test-pw"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "famlab",
                "--pwfile",
                str(pwfile),
                "-A",
                "scram-sha-256",
            ]
        )
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200",
                "-w",
                "start",
            ]
        )
        self._dbs = 0

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg2://famlab:{self.password}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        import sqlalchemy

        self._dbs += 1
        name = f"famlab_{self._dbs}_{int(time.time())}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0)
            + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)
