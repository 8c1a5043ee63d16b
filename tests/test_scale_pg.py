"""The PostgreSQL fixture itself: a real server, password login, isolated databases."""

from __future__ import annotations

import threading

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


def _record(study: str, sop: str):
    from node.store import InstanceRecord

    return InstanceRecord(sop, "1.2.840.10008.5.1.4.1.1.128", f"{study}.1", study, "1.2.840.10008.1.2.1",
                          f"studies/{study}/{sop}.dcm", 100, modality="PT", number_of_slices=1, image_index=1)


def test_nodes_starting_at_once_migrate_the_schema_once(pg_dsn) -> None:
    from node.store import open_store
    from node.store.postgres.schema import MIGRATIONS
    from node.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS

    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    stores = []

    def start(n: int) -> None:
        barrier.wait()
        try:
            stores.append(open_store(pg_dsn, node_id=f"node-{n}"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 4
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    assert len(MIGRATIONS) == len(SQLITE_MIGRATIONS)  # one schema version for both backends
    for s in stores:
        s.close()


def test_completion_monitors_on_every_node_queue_one_job(pg_dsn) -> None:
    """Four nodes assess the same complete study at the same moment: exactly one queues its job."""
    from node.store import JobState, open_store

    stores = [open_store(pg_dsn, node_id=f"node-{n}") for n in range(4)]
    try:
        for n in range(3):
            stores[n].studies.add_instance(_record("1.2.3", f"1.2.3.9.{n}"), "test", "T")
        last = stores[0].studies.study_info("1.2.3").last_received
        barrier = threading.Barrier(4)
        ids: list[int | None] = []

        def monitor(s) -> None:
            barrier.wait()
            ids.append(s.jobs.queue("quantify", "1.2.3", {}, [], expect_last_received=last))

        threads = [threading.Thread(target=monitor, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(ids) == 4 and len([i for i in ids if i is not None]) == 1, ids
        assert stores[1].jobs.counts()[JobState.PENDING] == 1
    finally:
        for s in stores:
            s.close()


def test_leases_run_on_the_server_clock_and_secrets_stay_out_of_messages(pg_server, pg_dsn) -> None:
    from node.store import StoreUnavailable, open_store

    s = open_store(pg_dsn, node_id="node-a")
    try:
        s.studies.add_instance(_record("1.2.4", "1.2.4.9.1"), "test", "T")
        s.jobs.queue("quantify", "1.2.4", {}, [], expect_last_received=s.studies.study_info("1.2.4").last_received)
        with psycopg.connect(pg_dsn) as conn:
            server_now = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()[0]
        job = s.jobs.claim("node-a", lease_s=30)
        assert job is not None and job.lease_owner == "node-a"
        assert abs(job.lease_expires_at - (server_now + 30)) < 10
        assert pg_server.password not in s.location and s.location.startswith("postgresql://iodine@127.0.0.1:")
    finally:
        s.close()
    wrong = pg_dsn.replace(f":{pg_server.password}@", ":wrong-secret-pw@")
    with pytest.raises(StoreUnavailable) as info:
        open_store(wrong, node_id="node-b")
    assert "wrong-secret-pw" not in str(info.value) and "cannot connect to the index postgresql://" in str(info.value)


def test_a_dropped_connection_is_replaced_at_the_next_call(pg_dsn) -> None:
    from node.store import StoreUnavailable, open_store

    s = open_store(pg_dsn, node_id="node-a")
    try:
        s.studies.add_instance(_record("1.2.5", "1.2.5.9.1"), "test", "T")
        with psycopg.connect(pg_dsn, autocommit=True) as admin:  # the server (or a failover) drops it
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name='iodine-node' AND pid<>pg_backend_pid()")
        with pytest.raises(StoreUnavailable):  # the caller answers "retry later"
            s.studies.has_instance("1.2.5.9.1")
        assert s.studies.has_instance("1.2.5.9.1")  # reconnected; the committed row is there
    finally:
        s.close()


def test_a_postgresql_index_is_shared(pg_dsn) -> None:
    """Nodes on one PostgreSQL share the storage root: a starting node keeps files younger than a day."""
    from node.store import open_store

    store = open_store(pg_dsn, node_id="node-a")
    try:
        assert store.shared is True
    finally:
        store.close()
