"""Nothing accepted is lost, nothing stale or torn is sent: kill -9 of `serve` at named points
(IODINE_NODE_CRASH_AT, node/crashpoints.py), a real full disk, duplicates, torn result files,
superseded jobs. Results are counted at a dcmtk storescp, which keeps every copy it receives."""

from __future__ import annotations

import collections
import contextlib
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage

from node.crashpoints import CRASH_ENV
from tests.conftest import IN_CI
from tests.peers import PEER_ENV, NodeProcess, StoreSCP, pid_children, short_pet_series, wait_for
from tests.test_ingest import acknowledged, dataset_bytes

peer = pytest.mark.peer  # every test here but the in-process ones runs real processes

FAST_EXPORT = {"retry": {"first_s": 0.3, "max_s": 1.0, "give_up_after_h": 24}, "poll_s": 0.2}


@pytest.fixture(scope="module")
def study(phantom_factory):
    return phantom_factory(seed=31, noise=0.15)  # made once per session (tests/test_operations.py's too)


@pytest.fixture(scope="module")
def short(study, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The first 40 PET slices as a complete series of their own (NumberOfSlices 40, PS3.3
    C.8.9.4.1.9): a third of the processing time of the whole series, for tests that run a job
    more than once."""
    return short_pet_series(study.pet_files, tmp_path_factory.mktemp("short"))


@pytest.fixture
def receiver(tmp_path: Path):
    scp = StoreSCP(tmp_path / "scp").start()
    yield scp
    scp.stop()


@pytest.fixture
def nodes():
    made: list[NodeProcess] = []
    yield made
    for n in made:
        n.stop()


def make_node(nodes: list[NodeProcess], path: Path, receiver: StoreSCP | None, env: dict | None = None,
              **config: dict) -> NodeProcess:
    base: dict = {"export": FAST_EXPORT, "storage": {"min_free_gb": 0}}
    if receiver is not None:
        base["destinations"] = [receiver.destination()]
    for key, value in config.items():
        base[key] = {**base.get(key, {}), **value}
    n = NodeProcess(path, base, env)
    nodes.append(n)
    return n


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_for_workers(n: NodeProcess) -> list[int]:
    assert n.proc is not None
    return wait_for(lambda: [p for p in pid_children(n.proc.pid)
                             if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()], 30, "worker processes")


def unindexed_files(n: NodeProcess) -> tuple[set[str], set[str]]:
    """(files under studies/ that no index row names, index rows whose file is missing)."""
    on_disk = {str(p.relative_to(n.root)) for p in (n.root / "studies").rglob("*") if p.is_file()}
    indexed = {r["path"] for r in n.db("SELECT path FROM instances")}
    return on_disk - indexed, indexed - on_disk


def settled(n: NodeProcess) -> bool:
    jobs = n.jobs()
    outbox = n.db("SELECT state FROM outbox")
    return (bool(jobs) and all(j["state"] in ("done", "superseded") for j in jobs) and bool(outbox)
            and all(r["state"] in ("delivered", "superseded") for r in outbox))


def assert_delivered_exactly_once(n: NodeProcess, receiver: StoreSCP) -> None:
    delivered = {r["sop_instance_uid"] for r in n.db("SELECT * FROM outbox WHERE state='delivered'")}
    wait_for(lambda: len(receiver.received()) >= len(delivered), 10, "the receiver's files")
    counts = collections.Counter(receiver.received())
    assert set(counts) == delivered, "the receiver got other objects than the outbox delivered"
    assert all(c == 1 for c in counts.values()), f"objects sent more than once: {counts}"
    assert len(delivered) >= 2  # SR and SC at least (SEG when there are foci)


def assert_clean(n: NodeProcess) -> None:
    extra, missing = unindexed_files(n)
    assert not extra, f"un-indexed files: {sorted(extra)[:3]}"
    assert not missing, f"indexed instances without a file: {sorted(missing)[:3]}"
    assert list((n.root / "spool" / "tmp").iterdir()) == []
    staging = n.root / "outputs" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


# -- the crash matrix --------------------------------------------------------------------------

# (point, what happens there). A count after ':' picks the n-th pass (receive-write: per write into
# the receive file, the Part 10 header in one and each P-DATA fragment in one; a PET slice of the
# short series takes two, so the 12th lands inside about the sixth instance of the push).
INGEST_AND_JOB_POINTS = [
    ("receive-write:12", "mid-receive: a data set half written to spool/tmp"),
    ("ingest-linked:5", "after fsync and link, before the index commit"),
    ("ingest-indexed:5", "after fsync and index commit, before the acknowledgement"),
    ("job-running", "mid-job (the worker kills serve and must exit by itself)"),
    ("job-staged", "results staged and fsynced, not published"),
    ("results-published", "results renamed into place, outbox not committed"),
    ("outbox-committed", "outbox committed, nothing sent"),
    ("export-recorded:1", "mid-send: the first C-STORE response recorded, two objects unsent"),
]


def crash_landed(point: str, n: NodeProcess, receiver: StoreSCP, acked: list[str]) -> None:
    """The state the dead node left proves the kill hit the intended place."""
    name = point.split(":")[0]
    rows = n.db("SELECT COUNT(*) FROM instances")[0][0]
    outbox = collections.Counter(r["state"] for r in n.db("SELECT state FROM outbox"))
    partial = list((n.root / "spool" / "tmp").iterdir())
    if name == "receive-write":
        assert len(partial) == 1 and rows == len(acked) and 1 <= len(acked) < 10
    elif name == "ingest-linked":
        assert len(acked) == 4 and rows == 4 and len(unindexed_files(n)[0]) == 1
    elif name == "ingest-indexed":
        assert len(acked) == 4 and rows == 5
    elif name in ("job-running", "job-staged", "results-published"):
        assert [j["state"] for j in n.jobs()] == ["running"] and not outbox
        staged = list((n.root / "outputs" / ".staging").glob("*"))
        published = (n.root / "results").exists()
        assert (len(staged), published) == {"job-running": (0, False), "job-staged": (1, False),
                                             "results-published": (0, True)}[name]
    elif name == "outbox-committed":
        assert outbox == {"pending": len(outbox and n.db("SELECT * FROM outbox"))} and receiver.received() == []
    elif name == "export-recorded":
        assert outbox["delivered"] == 1 and outbox["pending"] >= 1 and len(receiver.received()) == 1


@peer
@pytest.mark.parametrize("point", [p for p, _ in INGEST_AND_JOB_POINTS])
def test_crash_point(point: str, study, short, receiver, nodes, tmp_path: Path) -> None:
    files = short
    n = make_node(nodes, tmp_path / "node", receiver, env={CRASH_ENV: point}).start()
    workers = wait_for_workers(n)
    first = n.storescu(files, "-v")
    assert n.proc is not None
    wait_for(lambda: n.proc.poll() is not None, 120, f"the node to die at {point}")
    acked = acknowledged(first.stdout + first.stderr)
    crash_landed(point, n, receiver, acked)
    # No orphan: every child of the dead node exits by itself (parent-death watchdog).
    wait_for(lambda: not any(alive(p) for p in workers), 20, "the workers to exit with their parent")
    n.env.pop(CRASH_ENV)
    n.start()
    # Every acknowledged instance is there, byte for byte, before any sender retries.
    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in acked}
    for sop, original in by_sop.items():
        rows = n.db("SELECT path FROM instances WHERE sop_instance_uid=?", (sop,))
        assert rows, f"acknowledged instance {sop} lost at {point}"
        assert dataset_bytes(n.root / rows[0]["path"]) == dataset_bytes(Path(original))
    assert_clean(n)
    # The sender retries the whole push: what is stored again is a success that stores nothing new.
    again = n.storescu(files)
    assert again.returncode == 0, again.stdout + again.stderr
    assert n.instance_count() == len(files)
    wait_for(lambda: settled(n), 180, "the job done and its results delivered")
    done = [j for j in n.jobs() if j["state"] == "done"]
    assert len(done) == 1
    assert_delivered_exactly_once(n, receiver)
    assert_clean(n)
    versions = list((n.root / "outputs" / study.truth["study_instance_uid"]).iterdir())
    assert [v.name for v in versions] == [(n.root / "results" / study.truth["study_instance_uid"]).resolve().name]


@peer
@pytest.mark.parametrize(("point", "processed"), [("retention-claimed", False), ("retention-files-deleted", True)])
def test_crash_during_retention_never_resurrects(point: str, processed: bool, study, short, receiver, nodes,
                                                 tmp_path: Path) -> None:
    """processed: the study was quantified and its results delivered first (else it only holds
    inputs: quicker, and a resurrected study would show as indexed instances all the same)."""
    quiet = {} if processed else {"stable_after_s": 600, "force_after_s": 1200}
    n = make_node(nodes, tmp_path / "node", receiver, ingest=quiet).start()
    assert n.storescu(short).returncode == 0
    if processed:
        wait_for(lambda: settled(n), 180, "the job done and its results delivered")
    n.stop()
    uid = study.truth["study_instance_uid"]
    n2 = make_node(nodes, tmp_path / "node", receiver, env={CRASH_ENV: point}, ingest=quiet,
                   storage={"min_free_gb": 0, "retention": {"inputs_days": 1e-5}})
    n2.start(may_exit=True)  # retention runs at once and kills the node at the point
    assert n2.proc is not None
    wait_for(lambda: n2.proc.poll() is not None, 60, f"the node to die at {point}")
    assert n2.db("SELECT state FROM studies WHERE study_uid=?", (uid,))[0]["state"] == "deleting"
    assert n2.instance_count(uid) == len(short)  # rows go last
    left = list((n2.root / "studies" / uid).rglob("*.dcm"))
    assert len(left) == (len(short) if point == "retention-claimed" else 0)  # files go first
    # Restart WITHOUT retention: start-up must finish the deletion, and reconciliation must not
    # re-index what is left.
    n3 = make_node(nodes, tmp_path / "node", receiver).start()
    assert "1 interrupted retention deletion(s) completed" in n3.log()
    assert n3.db("SELECT state FROM studies WHERE study_uid=?", (uid,))[0]["state"] == "deleted"
    assert n3.instance_count(uid) == 0
    assert not (n3.root / "studies" / uid).exists()
    assert unindexed_files(n3) == (set(), set())
    if processed:
        assert [j["state"] for j in n3.jobs()] == ["done"]  # nothing re-quantified
        assert_delivered_exactly_once(n3, receiver)  # nothing re-sent
    else:
        assert n3.jobs() == []


# -- a real full disk ---------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = f"cannot mount a tmpfs (root needed): {result.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _send(port: int, ae_title: str, items: list, sop_class: str = PositronEmissionTomographyImageStorage
          ) -> list[int]:
    """C-STORE every item on ONE association; the statuses (-1: no response)."""
    ae = AE(ae_title="DISKTEST")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    statuses = []
    try:
        for item in items:
            _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)
            status = assoc.send_c_store(str(item) if isinstance(item, Path) else item)
            statuses.append(int(status.Status) if status else -1)
        assert assoc.is_established, "the association must go on after a refusal"
        echo = assoc.send_c_echo()
        assert echo and echo.Status == 0
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        if assoc.is_established:
            assoc.release()
    return statuses


@peer
def test_disk_full_answers_a700_and_recovers(study, nodes, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "1500k")
    try:
        n = make_node(nodes, tmp_path / "node", None, storage={"root": str(disk / "var"), "min_free_gb": 0},
                      ingest={"stable_after_s": 600, "force_after_s": 1200})  # no job: only ingest is under test
        n.root = disk / "var"
        n.start()
        files = study.pet_files[:40]
        statuses = _send(n.port, n.ae_title, files)
        assert statuses[0] == 0x0000
        assert 0xA700 in statuses, f"a 1.5 MB disk should fill: {statuses}"
        assert set(statuses) <= {0x0000, 0xA700}, statuses
        assert "cannot store the data set: No space left on device" in n.log()  # hit while receiving
        assert list((n.root / "spool" / "tmp").iterdir()) == []  # every partial file removed at once
        assert unindexed_files(n) == (set(), set())
        stored = {r["sop_instance_uid"] for r in n.db("SELECT sop_instance_uid FROM instances")}
        assert len(stored) == statuses.count(0x0000)
        # Space comes back: the sender's retry stores everything; nothing stored earlier changes.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert _send(n.port, n.ae_title, files) == [0x0000] * len(files)
        assert n.instance_count() == len(files)
        for f in files:
            sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            (row,) = n.db("SELECT path FROM instances WHERE sop_instance_uid=?", (sop,))
            assert dataset_bytes(n.root / row["path"]) == dataset_bytes(f)
        assert unindexed_files(n) == (set(), set())
    finally:
        for node in nodes:
            node.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- duplicates, incomplete data, aborted transfers ---------------------------------------------

@peer
def test_duplicates_are_honest(study, nodes, tmp_path: Path) -> None:
    n = make_node(nodes, tmp_path / "node", None, ingest={"stable_after_s": 600, "force_after_s": 1200}).start()
    original = study.pet_files[0]
    ds = pydicom.dcmread(original)
    changed = pydicom.dcmread(original)
    changed.PatientWeight = float(changed.get("PatientWeight", 70) or 70) + 5  # same UID, other content
    moved = pydicom.dcmread(original)
    moved.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.777"  # same UID, another study
    moved.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.778"
    statuses = _send(n.port, n.ae_title, [original, original, ds, changed, moved])
    assert statuses == [0x0000, 0x0000, 0x0000, 0xC000, 0xA900]
    log = n.log()
    assert "already stored with different content" in log
    assert "is already stored in study" in log and "refused under study 1.2.826.0.1.3680043.8.498.777" in log
    (row,) = n.db("SELECT path FROM instances")
    assert dataset_bytes(n.root / row["path"]) == dataset_bytes(original)  # the first copy, untouched
    assert n.db("SELECT instance_count FROM studies")[0][0] == 1
    assert not (n.root / "studies" / "1.2.826.0.1.3680043.8.498.777").exists()
    assert unindexed_files(n) == (set(), set())
    assert list((n.root / "spool" / "tmp").iterdir()) == []


@peer
def test_incomplete_pixel_data_is_refused(study, nodes, tmp_path: Path) -> None:
    n = make_node(nodes, tmp_path / "node", None, ingest={"stable_after_s": 600, "force_after_s": 1200}).start()
    short = pydicom.dcmread(study.pet_files[1])
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    good = pydicom.dcmread(study.pet_files[2])
    assert _send(n.port, n.ae_title, [short, good]) == [0xC000, 0x0000]
    assert "pixel data incomplete" in n.log()
    assert n.instance_count() == 1


@peer
def test_aborted_transfer_leaves_no_partial_file(study, nodes, tmp_path: Path) -> None:
    n = make_node(nodes, tmp_path / "node", None, ingest={"stable_after_s": 600, "force_after_s": 1200}).start()
    big = tmp_path / "big.dcm"
    ds = pydicom.dcmread(study.pet_files[0])
    frames = 400  # ~50 MB: long enough to be cut off in the middle
    ds.PixelData = ds.PixelData * frames
    ds.NumberOfFrames = frames
    ds.save_as(big)
    exe = shutil.which("storescu")
    assert exe is not None
    proc = subprocess.Popen([exe, "--max-pdu", "4096", "-aec", n.ae_title, "127.0.0.1", str(n.port), str(big)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV)
    tmp = n.root / "spool" / "tmp"

    def partial() -> bool:
        sizes = []
        for p in tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                sizes.append(p.stat().st_size)
        return any(s > 1_000_000 for s in sizes)

    try:
        wait_for(partial, 60, "a partial file in spool/tmp", interval=0.02)
    finally:
        proc.kill()  # the sender dies mid-transfer: the connection drops
        proc.wait(timeout=10)
    wait_for(lambda: list(tmp.iterdir()) == [], 30, "the partial file to be removed")
    assert "partial file(s) removed" in n.log()
    assert n.echoscu().returncode == 0
    assert n.instance_count() == 0


# -- results: superseded jobs, torn files ------------------------------------------------------

@peer
def test_superseded_job_never_publishes(study, receiver, nodes, tmp_path: Path) -> None:
    late = study.ct_files[0]
    first = [f for f in study.files if f != late]
    n = make_node(nodes, tmp_path / "node", receiver, env={"IODINE_NODE_FAULT_JOB_SLEEP_S": "6"},
                  processing={"workers": 2}).start()
    assert n.storescu(first).returncode == 0
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "running"], 60, "the first job to run")
    assert n.storescu([late]).returncode == 0  # the study re-opens; a second job is queued while the first runs
    wait_for(lambda: len(n.jobs()) == 2 and n.jobs()[0]["superseded_by"] == n.jobs()[1]["id"], 60, "a second job")
    wait_for(lambda: settled(n), 180, "both jobs finished and the results delivered")
    old, new = n.jobs()
    assert old["state"] == "superseded" and "results were not published" in old["error"]
    assert new["state"] == "done"
    assert {r["job_id"] for r in n.db("SELECT job_id FROM outbox")} == {new["id"]}
    assert_delivered_exactly_once(n, receiver)
    assert "superseded by a newer job while it ran" in n.log()


@peer
def test_torn_result_file_is_retried_not_dead(short, receiver, nodes, tmp_path: Path) -> None:
    n = make_node(nodes, tmp_path / "node", receiver, env={CRASH_ENV: "outbox-committed"}).start()
    assert n.storescu(short).returncode == 0
    assert n.proc is not None
    wait_for(lambda: n.proc.poll() is not None, 180, "the node to die after committing the outbox")
    rows = n.db("SELECT * FROM outbox")
    sr = next(r for r in rows if r["kind"] == "sr")
    path = n.root / sr["path"]
    intact = path.read_bytes()
    path.write_bytes(intact[: len(intact) // 3])  # torn (what an un-fsynced write leaves after a power loss)
    n.env.pop(CRASH_ENV)
    n.start()
    wait_for(lambda: n.db("SELECT attempts FROM outbox WHERE id=?", (sr["id"],))[0][0] >= 2, 60, "retries")
    (row,) = n.db("SELECT * FROM outbox WHERE id=?", (sr["id"],))
    assert row["state"] == "pending" and "missing or unreadable" in row["last_error"]
    path.write_bytes(intact)  # the file is readable again (restored)
    wait_for(lambda: settled(n), 60, "the delivery")
    assert_delivered_exactly_once(n, receiver)


def test_result_uids_follow_the_inputs(tmp_path: Path) -> None:
    from node.encode.identity import ResultIdentity, inputs_digest

    base = inputs_digest(["1.2.3.1", "1.2.3.2"])
    assert base == inputs_digest(["1.2.3.2", "1.2.3.1"])  # order does not matter
    late = inputs_digest(["1.2.3.1", "1.2.3.2", "1.2.3.3"])
    prior = inputs_digest(["1.2.3.1", "1.2.3.2"], [("1.2.9", b'{"lesions": []}')])
    prior_again = inputs_digest(["1.2.3.1", "1.2.3.2"], [("1.2.9", b'{"lesions": [1]}')])
    assert len({base, late, prior, prior_again}) == 4
    uids = {ResultIdentity("1.2.4", "1.2.5", "s", d).instance_uid("sr") for d in (base, late, prior, prior_again)}
    assert len(uids) == 4




def test_retention_race_with_arrivals_and_crash(study, tmp_path: Path) -> None:
    """In-process (real spool, index and DICOM files): an arrival before the claim keeps the study;
    during the deletion it is answered 0xA700 and nothing of it is written; a crash after the files
    were deleted is completed at start-up and reconciliation brings nothing back."""
    import sqlite3
    import time
    from contextlib import closing

    from node.ingest.ingestor import OUT_OF_RESOURCES, IngestError, Ingestor
    from node.ingest.spool import Spool
    from node.retention import _claim, _delete_files, apply_retention, finish_interrupted_deletions
    from node.store import StudyState, open_store

    root = tmp_path / "var"
    spool, index = Spool(root), open_store(root)
    ingestor = Ingestor(spool, index, 10**9)
    uid = study.truth["study_instance_uid"]

    def put(f: Path):  # what the listener does: the received file in spool/tmp, then ingest
        temp = spool.new_temp_path()
        shutil.copyfile(f, temp)
        try:
            return ingestor.ingest(temp, source="dicom")
        finally:
            temp.unlink(missing_ok=True)

    def age(days: float) -> None:  # time passes (the index file itself: no store method moves the clock)
        with closing(sqlite3.connect(root / "index.sqlite3", timeout=30)) as c, c:
            c.execute("UPDATE studies SET last_received=? WHERE study_uid=?", (time.time() - days * 86400, uid))

    files = study.pet_files[:4]
    put(files[0])
    put(files[1])
    age(40)
    put(files[2])  # arrives before retention looks: last_received is now recent
    report = apply_retention(index, root, inputs_days=30, results_days=None)
    assert report.studies_deleted == 0 and len(index.studies.instance_paths()) == 3
    age(40)
    paths = _claim(index, uid, time.time() - 30 * 86400)
    assert paths is not None and len(paths) == 3 and index.studies.study_state(uid) == StudyState.DELETING
    with pytest.raises(IngestError) as refused:
        put(files[3])  # arrives while retention deletes: retry later, nothing written
    assert refused.value.status == OUT_OF_RESOURCES and "being deleted by retention" in refused.value.reason
    with pytest.raises(IngestError):
        put(files[0])  # even a copy of a stored instance: not acknowledged into a study being deleted
    assert ingestor.reconcile() == 0  # files of a 'deleting' study are never re-indexed
    _delete_files(root, uid, paths[:2], whole_folder=False)  # ... and the node crashes here
    index.close()
    index = open_store(root)  # restart
    ingestor = Ingestor(Spool(root), index, 10**9)
    assert finish_interrupted_deletions(index, root) == 1
    assert ingestor.reconcile() == 0
    assert index.studies.study_state(uid) == StudyState.DELETED
    assert len(index.studies.instance_paths()) == 0
    assert not (root / "studies" / uid).exists()
    # The sender's retry after the deletion: stored as a new arrival, the study re-opened.
    outcome = put(files[3])
    assert outcome.stored and (root / outcome.record.path).is_file()
    assert index.studies.study_state(uid) == StudyState.RECEIVING


def test_a_file_cut_inside_its_pixel_data_is_refused(study, tmp_path: Path) -> None:
    """What a sender that dies mid-write (or a copy still in progress) leaves: the Pixel Data
    element claims more bytes than the file holds. Also through pydicom's path (big endian)."""
    from node.ingest.ingestor import CANNOT_UNDERSTAND, IngestError, check_pixel_data_complete

    whole = study.pet_files[3]
    check_pixel_data_complete(whole)  # complete: no error
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-1000])
    with pytest.raises(IngestError) as refused:
        check_pixel_data_complete(cut)
    assert refused.value.status == CANNOT_UNDERSTAND and "pixel data incomplete" in refused.value.reason
    big = tmp_path / "big-endian.dcm"
    ds = pydicom.dcmread(whole)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    pydicom.dcmwrite(big, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    assert pydicom.dcmread(big).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    with pytest.raises(IngestError, match="incomplete"):
        check_pixel_data_complete(big)


def test_finish_job_publishes_only_the_newest_and_supersedes_stale_deliveries(tmp_path: Path) -> None:
    """In-process, the index alone: the rules store.jobs.publish_results enforces in one transaction."""
    from node.store import Delivery, DeliveryState, InstanceRecord, JobState, open_store

    index = open_store(tmp_path, node_id="n")
    study = "1.2.3"

    def arrive(sop: str) -> float:
        index.studies.add_instance(InstanceRecord(sop, "1.2.840.10008.5.1.4.1.1.128", "1.2.3.1", study,
                                                  "1.2.840.10008.1.2.1", f"studies/{study}/1.2.3.1/{sop}.dcm", 1,
                                                  modality="PT"), "test", "T")
        return index.studies.study_info(study).last_received

    first = index.jobs.queue("quantify", study, {}, [], arrive("1.2.3.1.1"))
    assert index.jobs.claim("n").id == first
    second = index.jobs.queue("quantify", study, {}, [], arrive("1.2.3.1.2"))  # while the first runs

    def must_not_run() -> tuple[dict, list]:
        raise AssertionError("a superseded job must not publish")

    assert index.jobs.publish_results(first, must_not_run, "n") is False
    assert index.jobs.get(first).state == JobState.SUPERSEDED
    assert index.jobs.claim("n").id == second

    def delivering(*objects: tuple[str, str]):
        return lambda: ({"ok": True}, [Delivery("pacs", kind, f"outputs/{study}/v/{kind}.dcm", uid, "1.2", "digest")
                                       for kind, uid in objects])

    assert index.jobs.publish_results(second, delivering(("sr", "9.1"), ("seg", "9.2")), "n") is True
    rows = {r.sop_instance_uid: r for r in index.outbox.rows()}
    assert {r.state for r in rows.values()} == {DeliveryState.PENDING} and rows["9.1"].sha256 == "digest"
    index.outbox.record_outcome(rows["9.1"].id, DeliveryState.DELIVERED)
    # The same job again (jobs retry) with other content: 9.2 is stale now, 9.1 was delivered already.
    index.jobs.retry(second)
    index.jobs.claim("n")
    index.jobs.publish_results(second, delivering(("sr", "9.1"), ("sc", "9.3")), "n")
    states = {r.sop_instance_uid: r.state for r in index.outbox.rows()}
    assert states == {"9.1": "delivered", "9.2": "superseded", "9.3": "pending"}
    index.outbox.record_outcome(rows["9.2"].id, DeliveryState.PENDING, "connection refused")  # a send in flight
    assert {r.sop_instance_uid: r.state for r in index.outbox.rows()}["9.2"] == "superseded"
    with pytest.raises(ValueError, match="superseded by job"):
        index.jobs.retry(first)
