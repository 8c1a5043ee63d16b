"""The PostgreSQL fixture itself: a real server, password login, isolated databases."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.peer


def test_server_runs_unprivileged_with_password_login(pg_server, pg_dsn) -> None:
    with psycopg.connect(pg_dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    assert int(version.split(".")[0]) >= 13
    assert superuser  # the cluster's own bootstrap role, inside a throw-away cluster
    wrong = pg_dsn.replace(f":{pg_server.password}@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_each_test_gets_an_empty_database(pg_dsn) -> None:
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'").fetchone()
    assert tables[0] == 0
