"""Several `iodine-node serve` processes on one PostgreSQL index and one storage root behave as one
node: a study split across two of them gives one job and one result set; a node killed (-9) while it
runs the job, and nodes killed while they send the results, are taken over by the others once their
leases expired; the receiver (dcmtk storescp, which keeps every copy) gets each result object once.
"""

from __future__ import annotations

import collections
from pathlib import Path

import psycopg
import pydicom
import pytest
from psycopg.rows import dict_row

from tests.peers import NodeProcess, StoreSCP, short_pet_series, wait_for

pytestmark = pytest.mark.peer

LEASE_S = 5.0  # short leases: takeover within seconds (production default: 60 s)
FAST_EXPORT = {"retry": {"first_s": 0.3, "max_s": 1.0, "give_up_after_h": 24}, "poll_s": 0.2}
DSN_ENV = "IODINE_TEST_INDEX_DSN"


def rows(dsn: str, sql: str, params: tuple = ()) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def split_study(phantom_factory, tmp_path_factory):
    """(PET files, CT files, StudyInstanceUID): the first 40 PET slices as a complete series of their
    own (NumberOfSlices 40, PS3.3 C.8.9.4.1.9), a third of the processing time, and the whole CT."""
    ph = phantom_factory(seed=1, vendor="siemens", noise=0.15)
    pet = short_pet_series(ph.pet_files, tmp_path_factory.mktemp("short-pet"))
    return pet, list(ph.ct_files), ph.truth["study_instance_uid"]


def test_nodes_share_one_index_and_take_over_a_dead_nodes_job_and_deliveries(split_study, pg_dsn, tmp_path: Path):
    pet, ct, study_uid = split_study
    shared = tmp_path / "shared-root"
    receiver = StoreSCP(tmp_path / "scp").start()
    nodes: dict[str, NodeProcess] = {}

    def start(name: str, **env: str) -> NodeProcess:
        config = {"storage": {"root": str(shared), "min_free_gb": 0}, "export": FAST_EXPORT,
                  "ingest": {"stable_after_s": 1.0, "force_after_s": 120, "poll_s": 0.2},
                  "index": {"backend": "postgresql", "dsn_env": DSN_ENV, "node_id": name, "lease_s": LEASE_S},
                  "destinations": [receiver.destination()]}
        n = NodeProcess(tmp_path / name, config, {DSN_ENV: pg_dsn, **env})
        nodes[name] = n
        return n.start()

    try:
        # Every node dies at its first recorded delivery: whoever sends first is killed mid-batch.
        crash_at_send = {"IODINE_NODE_CRASH_AT": "export-recorded:1"}
        for name in ("node-a", "node-b", "node-c"):
            start(name, **crash_at_send)
        # The CT of the study at node B, then its PET at node A. (PET first would let a busy machine
        # see the PET complete with no CT yet: a job, superseded when the CT comes, as it should be;
        # this test wants the study's one version.)
        assert nodes["node-b"].storescu(ct).returncode == 0
        assert nodes["node-a"].storescu(pet).returncode == 0

        def running() -> dict | None:
            found = rows(pg_dsn, "SELECT * FROM jobs WHERE study_uid=%s AND state='running'", (study_uid,))
            return found[0] if found else None

        first = wait_for(running, 120, "a node to claim the study's job")
        owner = first["lease_owner"]
        nodes[owner].kill9()  # the node running the job dies; its lease runs out

        def done() -> bool:
            return bool(rows(pg_dsn, "SELECT 1 FROM jobs WHERE study_uid=%s AND state='done'", (study_uid,)))

        wait_for(done, 600, "another node to take the job over after the lease and finish it")
        jobs = rows(pg_dsn, "SELECT * FROM jobs WHERE study_uid=%s", (study_uid,))
        assert len(jobs) == 1, jobs  # one job for the study, though its series came in at two nodes
        assert jobs[0]["id"] == first["id"] and jobs[0]["attempts"] == 2
        study = rows(pg_dsn, "SELECT * FROM studies WHERE study_uid=%s", (study_uid,))
        assert len(study) == 1 and study[0]["instance_count"] == len(pet) + len(ct)
        sources = rows(pg_dsn, "SELECT i.path FROM instances i WHERE study_uid=%s", (study_uid,))
        assert all(not Path(r["path"]).is_absolute() and (shared / r["path"]).is_file() for r in sources)

        # The surviving nodes die one by one at their first delivery; a fresh node finishes the rest.
        def sender_died() -> list[str]:
            return [n for n, p in nodes.items() if n != owner and p.proc is not None and p.proc.poll() is not None]

        wait_for(sender_died, 120, "a node to die while it sends the results")
        start("node-d")

        def settled() -> bool:
            outbox = rows(pg_dsn, "SELECT state FROM outbox WHERE study_uid=%s", (study_uid,))
            return bool(outbox) and all(r["state"] == "delivered" for r in outbox)

        wait_for(settled, 180, "every result object delivered")
        delivered = {r["sop_instance_uid"] for r in rows(pg_dsn, "SELECT * FROM outbox WHERE study_uid=%s",
                                                         (study_uid,))}
        assert len(delivered) >= 3  # SEG, SR, SC
        wait_for(lambda: len(receiver.received()) >= len(delivered), 30, "the receiver's files")
        counts = collections.Counter(receiver.received())
        assert set(counts) == delivered
        assert all(c == 1 for c in counts.values()), f"result objects sent more than once: {counts}"
        assert sender_died(), "no node was killed while sending: the takeover of deliveries was not exercised"
    finally:
        for n in nodes.values():
            n.stop()
        receiver.stop()


def test_ingest_answers_retry_later_while_postgresql_is_down(phantom_factory, tmp_path: Path) -> None:
    """The index server stops: C-STOREs are refused with 0xA700 (the sender retries), nothing is left
    on disk for them, and once the server is back the same node stores again without a restart."""
    from tests.pg import postgres_server

    ph = phantom_factory(seed=1, vendor="siemens", noise=0.15)
    first, second, third = ph.ct_files[0], ph.ct_files[1], ph.ct_files[2]
    with postgres_server() as server:
        n = NodeProcess(tmp_path / "node", {"storage": {"min_free_gb": 0},
                                            "index": {"backend": "postgresql", "dsn_env": DSN_ENV}},
                        {DSN_ENV: server.dsn()}).start()
        try:
            assert n.storescu([first]).returncode == 0
            server.stop()
            refused = n.storescu([second], "-v")
            # dcmtk names the 0xA7xx statuses "Refused: OutOfResources" (PS3.4 B.2.3)
            assert "Refused: OutOfResources" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
            assert not list((n.root / "studies").rglob(f"{pydicom.dcmread(second).SOPInstanceUID}.dcm"))
            assert not any((n.root / "spool" / "tmp").iterdir())
            server.start()
            assert n.storescu([third]).returncode == 0
            assert n.proc is not None and n.proc.poll() is None
            indexed = {r["sop_instance_uid"] for r in rows(server.dsn(), "SELECT sop_instance_uid FROM instances")}
            assert indexed == {str(pydicom.dcmread(f).SOPInstanceUID) for f in (first, third)}
        finally:
            n.stop()
