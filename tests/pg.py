"""A real PostgreSQL server for tests: Debian's `postgresql`, initdb'd in a temp dir, on 127.0.0.1.

PostgreSQL refuses to run as root, and CI runs as root: the cluster is then owned by and run as the
Debian package's `postgres` system user (else `nobody`) through runuser. Password authentication
(scram-sha-256) is on, so the tests exercise a DSN with a password as production uses it.
Each test gets its own database on the session's server (`pg_dsn`), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require_peer_marker
from tests.peers import free_port, wait_for

PG_PASSWORD_LENGTH = 24


def pg_bindir() -> Path:
    """Folder of initdb/pg_ctl: Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH.
    Missing: a failure in CI (the project's `make peers` installs `postgresql`), a skip elsewhere."""
    require_peer_marker("a PostgreSQL server")
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    message = "PostgreSQL is not installed (make test installs the Debian package `postgresql` when run as root)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _run_as() -> tuple[list[str], int | None, int | None]:
    """Command prefix and uid/gid to run the server as: root may not run PostgreSQL."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", name, "--"], pw.pw_uid, pw.pw_gid
    raise AssertionError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


@dataclass
class PostgresServer:
    """One running cluster; `dsn(dbname)` names a database on it."""

    bindir: Path
    datadir: Path
    port: int
    user: str
    password: str
    prefix: list[str]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        path = self.datadir.parent / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                        "stop"], capture_output=True, check=False, timeout=60)

    def start(self) -> None:
        """(Re)start the stopped server on its port; returns once it accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.datadir} " \
                  "-c max_connections=200 -c fsync=on"
        started = subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                                  str(self.datadir.parent / "server.log"), "-o", options, "-w", "-t", "120", "start"],
                                 capture_output=True, text=True, check=False, timeout=180)
        if started.returncode != 0:
            raise AssertionError(f"pg_ctl start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}\n"
                                 f"{self.log()}")


def start_postgres(base: Path) -> PostgresServer:
    """initdb + start on a free loopback port; waits until the server accepts a login."""
    import psycopg

    bindir = pg_bindir()
    prefix, uid, gid = _run_as()
    base.mkdir(parents=True, exist_ok=True)
    datadir = base / "data"
    password = secrets.token_urlsafe(PG_PASSWORD_LENGTH)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if uid is not None:
        os.chown(base, uid, gid)
        os.chown(pwfile, uid, gid)
    pwfile.chmod(0o600)
    user = "iodine"
    init = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(datadir), "-U", user, "--pwfile", str(pwfile),
                           "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync"],
                          capture_output=True, text=True, check=False, timeout=180)
    pwfile.unlink()
    if init.returncode != 0:
        raise AssertionError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    # Loopback TCP only, the socket in the data dir (not /var/run/postgresql, absent on a fresh machine).
    server = PostgresServer(bindir, datadir, free_port(), user, password, prefix)
    server.start()
    port = server.port

    def accepts() -> bool:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    wait_for(accepts, 60, f"PostgreSQL on 127.0.0.1:{port} to accept a login")
    return server


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A server in a fresh temp dir under /tmp (pytest's own temp dirs are root-only: the server's
    user could not enter them); stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="iodine-pg-"))
    base.chmod(0o711)  # the server's user passes through to its own folder below
    server: PostgresServer | None = None
    try:
        server = start_postgres(base / "pg")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def create_database(server: PostgresServer, prefix: str = "t") -> str:
    """A new empty database on the server; returns its DSN."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.dsn(name)
