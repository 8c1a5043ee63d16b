"""The store interface (node.store.base), backend-neutral: every test runs against each backend of
the `store` fixture (SQLite here; the PostgreSQL backend adds its parameter). Leases are driven
by explicit `now` values, never by sleeping."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.store import (
    Delivery,
    DeliveryState,
    InstanceRecord,
    JobState,
    LeaseLost,
    Store,
    StudyBeingDeleted,
    StudyState,
    open_store,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def open_backend(target: Path | str, node_id: str, read_only: bool = False) -> Store:
    return open_store(target, node_id=node_id, read_only=read_only)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def index_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """What open_store opens: a storage root (SQLite) or the DSN of a fresh database on a real
    PostgreSQL server (tests/pg.py)."""
    return tmp_path if backend == "sqlite" else request.getfixturevalue("pg_dsn")


@pytest.fixture
def store(index_target: Path | str) -> Iterator[Store]:
    s = open_backend(index_target, "node-a")
    yield s
    s.close()


@pytest.fixture
def second_node(index_target: Path | str) -> Iterator[Store]:
    """Another node on the same index (for SQLite: another connection to the same file)."""
    s = open_backend(index_target, "node-b")
    yield s
    s.close()


def record(study: str, series: str, sop: str, *, modality: str = "PT", image_index: int | None = None,
           patient_id: str = "P1", study_date: str = "20260101") -> InstanceRecord:
    return InstanceRecord(sop, PET_IMAGE if modality == "PT" else CT_IMAGE, series, study, EXPLICIT_LE,
                          f"studies/{study}/{series}/{sop}.dcm", 100, modality=modality, patient_id=patient_id,
                          study_date=study_date, number_of_slices=2 if modality == "PT" else None,
                          image_index=image_index, instance_number=image_index, frame_of_reference_uid="1.9")


def arrive(store: Store, study: str, sop: str, now: float | None = None, **kw: object) -> float:
    """Index one instance; returns the study's last_received (what the completion monitor assessed)."""
    store.studies.add_instance(record(study, f"{study}.1", sop, **kw), "test", "T", now=now)  # type: ignore[arg-type]
    info = store.studies.study_info(study)
    assert info is not None
    return info.last_received


def delivering(study: str, *objects: tuple[str, str], digest: str | None = None):
    def publish() -> tuple[dict, list[Delivery]]:
        return {"ok": True}, [Delivery("pacs", kind, f"outputs/{study}/v/{kind}.dcm", uid, "1.2", digest)
                              for kind, uid in objects]
    return publish


def test_instances_are_indexed_once_with_their_study_and_series(store: Store) -> None:
    assert store.studies.add_instance(record("1.2.3", "1.2.3.1", "1.2.3.1.1", image_index=2), "test", "T")
    assert not store.studies.add_instance(record("1.2.3", "1.2.3.1", "1.2.3.1.1", image_index=2), "test", "T")
    store.studies.add_instance(record("1.2.3", "1.2.3.1", "1.2.3.1.2", image_index=1), "test", "T")
    assert store.studies.has_instance("1.2.3.1.1") and not store.studies.has_instance("9.9")
    loc = store.studies.instance_location("1.2.3.1.1")
    assert loc is not None and (loc.study_uid, loc.series_uid) == ("1.2.3", "1.2.3.1")
    assert loc.path == "studies/1.2.3/1.2.3.1/1.2.3.1.1.dcm"  # relative to storage.root
    # ordered by ImageIndex: the slice order a volume is read in
    assert store.studies.series_paths("1.2.3.1") == ["studies/1.2.3/1.2.3.1/1.2.3.1.2.dcm", loc.path]
    assert store.studies.study_series("1.2.3") == ["1.2.3.1"]
    assert store.studies.instance_paths() == set(store.studies.study_instance_paths("1.2.3"))
    info = store.studies.study_info("1.2.3")
    assert info is not None and info.state == StudyState.RECEIVING and info.instance_count == 2
    snap = store.studies.study_snapshot("1.2.3")
    assert snap is not None and len(snap.series) == 1
    s = snap.series[0]
    assert (s.instance_count, s.number_of_slices, s.distinct_image_indices, s.min_image_index,
            s.max_image_index) == (2, 2, 2, 1, 2)
    assert store.studies.studies_in_state(StudyState.RECEIVING) == ["1.2.3"]


def test_studies_of_a_patient_respect_the_issuer(store: Store) -> None:
    store.studies.add_instance(record("1.1", "1.1.1", "1.1.1.1", patient_id="P1"), "test", "T")
    store.studies.add_instance(record("1.2", "1.2.1", "1.2.1.1", patient_id="P1"), "test", "T")
    store.studies.add_instance(record("1.3", "1.3.1", "1.3.1.1", patient_id="P2"), "test", "T")
    assert store.studies.studies_of_patient("P1", "", "1.1") == ["1.2"]
    assert store.studies.studies_of_patient("P1", "OTHER", "1.1") == []


def test_queue_supersedes_and_a_superseded_job_never_publishes(store: Store) -> None:
    study = "1.2.3"
    first = store.jobs.queue("quantify", study, {"pet_series": ["x"]}, ["w"], arrive(store, study, "1.2.3.1.1"))
    assert first is not None and store.studies.study_state(study) == StudyState.QUEUED
    # an assessment that is stale (an instance arrived since) queues nothing
    stale = store.studies.study_info(study).last_received  # type: ignore[union-attr]
    arrive(store, study, "1.2.3.1.2")
    assert store.jobs.get(first).state == JobState.SUPERSEDED  # type: ignore[union-attr]  (pending, new data)
    assert store.jobs.queue("quantify", study, {}, [], stale) is None
    second = store.jobs.queue("quantify", study, {}, [], store.studies.study_info(study).last_received)  # type: ignore[union-attr]
    claimed = store.jobs.claim("node-a")
    assert claimed is not None and claimed.id == second and claimed.state == JobState.RUNNING
    assert claimed.payload == {} and claimed.lease_owner == "node-a" and claimed.attempts == 1
    third = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.3"))  # while second runs
    assert store.jobs.get(second).superseded_by == third  # type: ignore[union-attr]

    def must_not_run() -> tuple[dict, list]:
        raise AssertionError("a superseded job must not publish")

    assert store.jobs.publish_results(second, must_not_run, node_id="node-a") is False
    assert store.jobs.get(second).state == JobState.SUPERSEDED  # type: ignore[union-attr]
    assert store.jobs.claim("node-a").id == third  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="superseded by job"):
        store.jobs.retry(second)
    counts = store.jobs.counts()
    assert counts[JobState.SUPERSEDED] == 2 and counts[JobState.RUNNING] == 1 and counts[JobState.PENDING] == 0


def test_a_new_instance_reopens_a_processed_study(store: Store) -> None:
    study = "1.2.3"
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    store.jobs.claim("node-a")
    assert store.jobs.publish_results(job, delivering(study), node_id="node-a")  # type: ignore[arg-type]
    assert store.jobs.get(job).state == JobState.DONE  # type: ignore[union-attr]
    arrive(store, study, "1.2.3.1.2")
    assert store.studies.study_state(study) == StudyState.RECEIVING
    newer = store.jobs.queue("quantify", study, {}, [], store.studies.study_info(study).last_received)  # type: ignore[union-attr]
    assert store.jobs.get(job).superseded_by == newer  # type: ignore[union-attr]


def test_an_expired_lease_is_taken_over_by_another_node(store: Store, second_node: Store) -> None:
    study = "1.2.3"
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    t0 = time.time()
    assert store.jobs.claim("node-a", lease_s=30, now=t0).id == job  # type: ignore[union-attr]
    assert second_node.jobs.claim("node-b", lease_s=30, now=t0 + 10) is None  # lease alive
    assert store.jobs.renew(job, "node-a", lease_s=30, now=t0 + 20)  # type: ignore[arg-type]  heartbeat
    assert second_node.jobs.claim("node-b", lease_s=30, now=t0 + 40) is None  # renewed until t0 + 50
    # node-a stops renewing (dead): after expiry node-b takes the job over
    taken = second_node.jobs.claim("node-b", lease_s=30, now=t0 + 51)
    assert taken is not None and taken.id == job and taken.lease_owner == "node-b" and taken.attempts == 2
    # node-a's late heartbeat and outcomes are refused: node-b's run counts
    assert not store.jobs.renew(job, "node-a", now=t0 + 52)  # type: ignore[arg-type]
    with pytest.raises(LeaseLost):
        store.jobs.publish_results(job, delivering(study, ("sr", "9.1")), node_id="node-a")  # type: ignore[arg-type]
    assert store.jobs.fail(job, "late failure", node_id="node-a") is False  # type: ignore[arg-type]
    assert store.jobs.get(job).state == JobState.RUNNING  # type: ignore[union-attr]
    assert second_node.jobs.publish_results(job, delivering(study, ("sr", "9.1")), node_id="node-b")  # type: ignore[arg-type]
    assert store.jobs.get(job).state == JobState.DONE and store.outbox.rows()[0].job_id == job  # type: ignore[union-attr]


def test_a_node_never_takes_over_its_own_live_job_and_release_requeues(store: Store) -> None:
    study = "1.2.3"
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    t0 = time.time()
    store.jobs.claim("node-a", lease_s=5, now=t0)
    assert store.jobs.claim("node-a", lease_s=5, now=t0 + 100) is None  # its own job: it is running it
    assert not store.jobs.release(job, "node-b")  # type: ignore[arg-type]
    assert store.jobs.release(job, "node-a")  # type: ignore[arg-type]
    again = store.jobs.claim("node-b")
    assert again is not None and again.id == job and again.attempts == 2


def test_recover_after_restart_requeues_running_jobs(store: Store) -> None:
    study = "1.2.3"
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    store.jobs.claim("node-a")
    assert store.jobs.recover_after_restart("node-a") == 1
    j = store.jobs.get(job)  # type: ignore[arg-type]
    assert j is not None and j.state == JobState.PENDING and j.lease_owner is None and "restart" in (j.error or "")


def test_concurrent_claims_never_hand_out_a_job_twice(store: Store, second_node: Store) -> None:
    for k in range(20):
        study = f"1.2.{k + 1}"
        store.jobs.queue("quantify", study, {}, [], arrive(store, study, f"{study}.1.1"))
    got: dict[str, list[int]] = {"node-a": [], "node-b": []}

    def worker(s: Store, node: str) -> None:
        while (job := s.jobs.claim(node)) is not None:
            got[node].append(job.id)

    threads = [threading.Thread(target=worker, args=(s, n)) for s, n in ((store, "node-a"), (second_node, "node-b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    claimed = got["node-a"] + got["node-b"]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 20


def test_outbox_claim_outcome_and_supersession(store: Store, second_node: Store) -> None:
    study = "1.2.3"
    digest = hashlib.sha256(b"sr").hexdigest()
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    store.jobs.claim("node-a")
    committed: list[bool] = []
    assert store.jobs.publish_results(job, delivering(study, ("sr", "9.1"), ("seg", "9.2"), digest=digest),  # type: ignore[arg-type]
                                      node_id="node-a", on_committed=lambda: committed.append(True))
    assert committed == [True]
    rows = {r.sop_instance_uid: r for r in store.outbox.rows(job)}
    assert {r.state for r in rows.values()} == {DeliveryState.PENDING} and rows["9.1"].sha256 == digest
    t0 = time.time()
    due = store.outbox.claim("node-a", limit=10, lease_s=30, now=t0)
    assert [i.sop_instance_uid for i in due["pacs"]] == ["9.1", "9.2"] and due["pacs"][0].sha256 == digest
    assert second_node.outbox.claim("node-b", limit=10, now=t0 + 1) == {}  # leased by node-a
    store.outbox.record_outcome(rows["9.1"].id, DeliveryState.DELIVERED, node_id="node-a")
    # node-a dies before 9.2's outcome: node-b takes it over after the lease
    taken = second_node.outbox.claim("node-b", limit=10, now=t0 + 31)
    assert [i.sop_instance_uid for i in taken["pacs"]] == ["9.2"]
    store.outbox.record_outcome(rows["9.2"].id, DeliveryState.PENDING, "late", next_attempt_at=t0, node_id="node-a")
    assert store.outbox.rows(job)[1].lease_owner == "node-b"  # the dead node's late outcome is ignored
    second_node.outbox.record_outcome(rows["9.2"].id, DeliveryState.DEAD, "refused", node_id="node-b")
    assert store.outbox.counts()[DeliveryState.DEAD] == 1
    assert store.outbox.needed_paths(study) == [rows["9.2"].path]
    assert store.outbox.resend_dead(job) == 1  # type: ignore[arg-type]
    # the job again with other content: 9.2 is stale now, 9.1 was delivered already
    store.jobs.retry(job)  # type: ignore[arg-type]
    store.jobs.claim("node-a")
    store.jobs.publish_results(job, delivering(study, ("sr", "9.1"), ("sc", "9.3")), node_id="node-a")  # type: ignore[arg-type]
    states = {r.sop_instance_uid: r.state for r in store.outbox.rows()}
    assert states == {"9.1": DeliveryState.DELIVERED, "9.2": DeliveryState.SUPERSEDED, "9.3": DeliveryState.PENDING}
    store.outbox.record_outcome(rows["9.2"].id, DeliveryState.PENDING, "connection refused")  # was in flight
    assert {r.sop_instance_uid: r.state for r in store.outbox.rows()}["9.2"] == DeliveryState.SUPERSEDED
    assert store.outbox.release_leases("node-a") == 0  # every outcome ended its lease


def test_outbox_leases_renew_per_owner_and_restart_releases_by_index_kind(store: Store, second_node: Store) -> None:
    """renew extends only the caller's pending rows of the ids given; at a restart a shared index
    (PostgreSQL) releases only the restarting node's leases, a one-node index (SQLite) every lease."""
    study = "1.2.3"
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    store.jobs.claim("node-a")
    store.jobs.publish_results(job, delivering(study, ("sr", "9.1"), ("seg", "9.2"), ("sc", "9.3")))  # type: ignore[arg-type]
    t0 = time.time()
    mine = [i.id for i in store.outbox.claim("node-a", limit=2, lease_s=30, now=t0)["pacs"]]
    theirs = [i.id for i in second_node.outbox.claim("node-b", limit=10, lease_s=30, now=t0)["pacs"]]
    assert len(mine) == 2 and len(theirs) == 1
    assert store.outbox.renew([], "node-a") == 0
    assert store.outbox.renew(mine + theirs, "node-a", lease_s=100, now=t0 + 10) == 2
    expiry = {r.id: (r.lease_owner, r.lease_expires_at) for r in store.outbox.rows(job)}
    assert expiry[mine[0]] == expiry[mine[1]] == ("node-a", pytest.approx(t0 + 110))
    assert expiry[theirs[0]] == ("node-b", pytest.approx(t0 + 30))
    released = store.outbox.release_leases("node-a")
    left = {r.id: r.lease_owner for r in store.outbox.rows(job)}
    if store.shared:
        assert released == 2 and left == {mine[0]: None, mine[1]: None, theirs[0]: "node-b"}
    else:
        assert released == 3 and set(left.values()) == {None}


def test_outbox_waits_for_the_next_attempt_time(store: Store) -> None:
    study = "1.2.3"
    job = store.jobs.queue("quantify", study, {}, [], arrive(store, study, "1.2.3.1.1"))
    store.jobs.claim("node-a")
    store.jobs.publish_results(job, delivering(study, ("sr", "9.1")))  # type: ignore[arg-type]
    item = store.outbox.claim("node-a", limit=10)["pacs"][0]
    t0 = time.time()
    store.outbox.record_outcome(item.id, DeliveryState.PENDING, "busy", next_attempt_at=t0 + 60, node_id="node-a")
    assert store.outbox.claim("node-a", limit=10, now=t0 + 1) == {}
    again = store.outbox.claim("node-a", limit=10, now=t0 + 61)["pacs"][0]
    assert again.id == item.id and again.attempts == 1


def test_retention_claim_keeps_busy_and_recent_studies(store: Store) -> None:
    old, busy = "1.2.3", "1.2.4"
    t_old = time.time() - 40 * 86400
    arrive(store, old, "1.2.3.1.1", now=t_old)
    last = arrive(store, busy, "1.2.4.1.1", now=t_old)
    store.jobs.queue("quantify", busy, {}, [], last)
    cutoff = time.time() - 30 * 86400
    assert set(store.studies.studies_received_before(cutoff)) == {old, busy}
    assert store.studies.is_busy(busy) and not store.studies.is_busy(old)
    assert store.studies.claim_for_deletion(busy, cutoff, "retention") is None
    assert store.studies.claim_for_deletion(old, t_old - 1, "retention") is None  # received after that cut-off
    paths = store.studies.claim_for_deletion(old, cutoff, "retention")
    assert paths == ["studies/1.2.3/1.2.3.1/1.2.3.1.1.dcm"] and store.studies.study_state(old) == StudyState.DELETING
    with pytest.raises(StudyBeingDeleted):
        store.studies.add_instance(record(old, f"{old}.1", "1.2.3.1.2"), "test", "T")
    assert store.studies.studies_in_state(StudyState.DELETING) == [old]
    store.studies.drop_study_inputs(old, "retention")
    assert store.studies.study_state(old) == StudyState.DELETED and store.studies.study_instance_paths(old) == []
    assert store.studies.studies_received_before(cutoff) == [busy]
    ran: list[str] = []
    assert not store.studies.delete_results_if_idle(busy, lambda: ran.append(busy))
    assert store.studies.delete_results_if_idle(old, lambda: ran.append(old)) and ran == [old]


def test_set_study_state_only_when_unchanged(store: Store) -> None:
    last = arrive(store, "1.2.3", "1.2.3.1.1")
    assert not store.studies.set_study_state("1.2.3", StudyState.NO_PET, "no PET", last - 1)
    assert store.studies.set_study_state("1.2.3", StudyState.NO_PET, "no PET", last)
    assert store.studies.study_info("1.2.3").note == "no PET"  # type: ignore[union-attr]


def test_a_worker_reads_through_a_read_only_store(store: Store, index_target: Path | str) -> None:
    arrive(store, "1.2.3", "1.2.3.1.1", image_index=1)
    ro = open_backend(index_target, "worker", read_only=True)
    try:
        assert ro.studies.series_paths("1.2.3.1") == ["studies/1.2.3/1.2.3.1/1.2.3.1.1.dcm"]
        with pytest.raises(Exception, match=r"(?i)read.?only"):
            ro.studies.set_study_state("1.2.3", StudyState.NO_PET, "a worker must not write")
    finally:
        ro.close()


def test_the_backend_implements_the_whole_interface(store: Store) -> None:
    from node.store import JobStore, OutboxStore, StudyStore

    assert isinstance(store, Store) and isinstance(store.studies, StudyStore)
    assert isinstance(store.jobs, JobStore) and isinstance(store.outbox, OutboxStore)


def test_ping_and_location_carry_no_secret(store: Store) -> None:
    store.ping()
    assert store.node_id == "node-a" and "password" not in store.location


def _open_and_close(root: str) -> int:
    store = open_store(Path(root))
    try:
        return store.jobs.counts()[JobState.PENDING]
    finally:
        store.close()


def test_sqlite_index_created_by_several_processes_at_once(tmp_path: Path) -> None:
    """Listener processes open a fresh index together: each migration is applied exactly once."""
    import multiprocessing
    import sqlite3
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import closing

    from node.store.sqlite.schema import MIGRATIONS

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(_open_and_close, [str(tmp_path)] * 8)) == [0] * 8
    with closing(sqlite3.connect(tmp_path / "index.sqlite3")) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_no_database_access_outside_the_store() -> None:
    """node/store owns persistence: no other module of the node imports a database driver or runs SQL."""
    import ast
    import re

    node_dir = Path(__file__).resolve().parent.parent / "node"
    drivers = {"sqlite3", "psycopg", "psycopg2", "psycopg_pool"}
    sql = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE|BEGIN|COMMIT)\b", re.I)
    offenders = []
    for path in sorted(node_dir.rglob("*.py")):
        if (node_dir / "store") in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for n in ast.walk(tree):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{n.lineno} imports {m}" for m in names if m.split(".")[0] in drivers]
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and sql.match(n.value):
                offenders.append(f"{path.name}:{n.lineno} holds SQL {n.value[:40]!r}")
            if isinstance(n, ast.Attribute) and n.attr in ("execute", "executemany", "executescript"):
                offenders.append(f"{path.name}:{n.lineno} calls .{n.attr}()")
    assert offenders == []
