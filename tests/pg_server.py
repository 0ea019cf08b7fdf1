"""A throw-away PostgreSQL 15 server on 127.0.0.1 and a free port, for the tests and the benchmarks.

Run as root (CI), initdb refuses to start: the server then runs as the `postgres` user in a folder it owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    """Whether this machine has the PostgreSQL server programs."""
    return (PG_BIN / "initdb").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres(max_connections: int = 200) -> Iterator[str]:
    """Start a server with a database `nas` owned by user `nas` (trust login), yield its URL, stop it after."""
    base = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    base.chmod(0o755)  # other users (a Slurm job's) may read its socket folder
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*cmd: object) -> None:
        subprocess.run([*as_postgres, *map(str, cmd)], check=True, capture_output=True)

    run(PG_BIN / "initdb", "-D", base / "data", "-A", "trust", "-U", "nas", "--no-sync")
    run(PG_BIN / "pg_ctl", "-D", base / "data", "-l", base / "log", "-w", "start", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={max_connections}")
    try:
        run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "nas", "nas")
        yield f"postgresql://nas@127.0.0.1:{port}/nas"
    finally:
        run(PG_BIN / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def connections(url: str) -> int:
    """How many client connections the server holds now (this one left out)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                           "AND pid <> pg_backend_pid()").fetchone()
    return int(row[0])
