"""The retrieve stage: earlier studies of the patient fetched from the PACS before a study's quantify job.

Order of the stages (docs/architecture.md): ingest -> store -> complete -> RETRIEVE -> quantify. When the
completion monitor finds a study complete it asks `RetrieveStage.ready` before it queues the job. With
priors configured the first answer is "not yet": the study goes to this stage's own thread, which asks
the PACS (C-FIND) for earlier PET studies of the patient within the window that the node does not hold
and retrieves them, by C-MOVE to the node's own listener or by C-GET whose instances pass through the
service's Ingestor (fsync, index) before they are acknowledged: the same ingest path as a push. Once done
the next monitor round queues the job, which then only reads the index and the files.

Nothing is written before the job is queued except what ingest stores, so a crash in between repeats the
retrieval after restart (it skips the studies already here). A PACS that cannot be reached is logged and
the job runs without priors. A retrieved prior is marked (storage.root/retrieved-priors/<StudyUID>) and
its own completion does not query the PACS in turn, which would walk the patient's history back window
by window.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime
from pathlib import Path

from pynetdicom import Association, evt

from node.compare.priors import PriorQuery, PriorQueryError, StoreInstance, find_prior_studies, retrieve_study
from node.fsutil import fsync_dir, makedirs_durable, write_durable
from node.ingest.dimse_guard import GuardedDIMSE
from node.ingest.ingestor import IngestError, Ingestor
from node.ingest.spool import ReceiveFile, Spool
from node.net.reactor import AssociationSetup, EventAssociation
from node.store import Store
from node.uids import is_valid_uid

log = logging.getLogger(__name__)

RETRIEVED_DIR = "retrieved-priors"
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.2.1.4 (C-STORE): Processing failure


def mark_retrieved(storage_root: Path, study_uid: str) -> None:
    """Remember (durably) that a study came as a prior, so its own completion does not query the PACS."""
    if is_valid_uid(study_uid):
        folder = storage_root / RETRIEVED_DIR
        makedirs_durable(folder)
        write_durable(folder / study_uid, b"")


def unmark_retrieved(storage_root: Path, study_uid: str) -> None:
    if is_valid_uid(study_uid):
        marker = storage_root / RETRIEVED_DIR / study_uid
        if marker.is_file():
            marker.unlink()
            fsync_dir(marker.parent)


def was_retrieved(storage_root: Path, study_uid: str) -> bool:
    return is_valid_uid(study_uid) and (storage_root / RETRIEVED_DIR / study_uid).is_file()


def ingest_store(spool: Spool, ingestor: Ingestor, calling_ae: str) -> StoreInstance:
    """A C-GET store callback: each instance is written to the spool and taken by the Ingestor (durable and
    indexed) before the status 0x0000 goes back, exactly as a pushed instance."""

    def store(received: Path | bytes) -> int:
        temp = received if isinstance(received, Path) else spool.new_temp_path()
        try:
            if not isinstance(received, Path):
                with open(temp, "wb") as fh:
                    fh.write(received)
            ingestor.ingest(temp, source="c-get", calling_ae=calling_ae)
            return 0x0000
        except IngestError as exc:
            log.error("C-GET from %s: instance refused: %s", calling_ae, exc.reason)
            return exc.status
        except Exception:
            log.exception("C-GET from %s: instance not stored", calling_ae)
            return PROCESSING_FAILURE
        finally:
            if not isinstance(received, Path):  # pynetdicom removes its own file
                temp.unlink(missing_ok=True)

    return store


def spool_receiver(spool: Spool, store: StoreInstance) -> AssociationSetup:
    """Association setup for C-GET: the association's DIMSE provider is the listener's
    (node.ingest.dimse_guard), so each C-STORE sub-operation streams into the spool and is
    answered by `store` in the network thread, as a pushed instance is; partial files of an
    association that ends mid-instance are removed."""

    def answer(path: Path, _sop_class: str, _sop_uid: str, _assoc: object) -> tuple[int, str]:
        return store(path), ""

    def discard_partial(event: evt.Event) -> None:
        ReceiveFile.discard_open(event.assoc.dul)

    def setup(assoc: Association) -> EventAssociation:
        adopted = EventAssociation.adopt(assoc, GuardedDIMSE)
        assert isinstance(adopted.dimse, GuardedDIMSE)
        adopted.dimse.receive_dir = spool.tmp
        adopted.dimse.store = answer
        adopted.bind(evt.EVT_CONN_CLOSE, discard_partial)
        return adopted

    return setup


def _patient_studies(store: Store, study_uid: str) -> tuple[str, str, str, set[str]] | None:
    """(PatientID, IssuerOfPatientID, StudyDate, the patient's other studies here), or None without a PatientID."""
    me = store.studies.study_info(study_uid)
    if me is None or not me.patient_id:
        return None
    others = set(store.studies.studies_of_patient(me.patient_id, me.issuer_of_patient_id, study_uid))
    return me.patient_id, me.issuer_of_patient_id, me.study_date or "", others


def retrieve_priors(query: PriorQuery, index: Store, storage_root: Path, spool: Spool, ingestor: Ingestor,
                    study_uid: str, window_days: float) -> list[str]:
    """Ask the PACS for earlier PET studies of the patient that this node does not hold and retrieve
    them; returns the Study UIDs now here. A PACS that cannot be reached is logged, not fatal."""
    found = _patient_studies(index, study_uid)
    if found is None:
        return []
    patient, issuer, study_date, known = found
    try:
        reference = datetime.strptime(study_date, "%Y%m%d")
    except ValueError:
        log.warning("study %s: no readable StudyDate (%r): earlier studies not asked for", study_uid, study_date)
        return []
    log.info("study %s: asking %s for earlier studies of the patient", study_uid, query.ae_title)
    try:
        # The study's own date is the end of the range; the quantify job applies the exact window.
        studies = find_prior_studies(query, patient, issuer, reference, window_days, known | {study_uid})
    except PriorQueryError as exc:
        log.warning("study %s: prior query: %s", study_uid, exc)
        return []
    store = ingest_store(spool, ingestor, query.ae_title)
    done = []
    for prior in studies:
        mark_retrieved(storage_root, prior.study_uid)  # before its first instance can arrive
        try:
            retrieve_study(query, prior, store, spool_receiver(spool, store))
        except PriorQueryError as exc:
            unmark_retrieved(storage_root, prior.study_uid)
            log.warning("study %s: prior study %s not retrieved: %s", study_uid, prior.study_uid, exc)
            continue
        done.append(prior.study_uid)
        log.info("study %s: prior study %s retrieved (%d series) by C-%s", study_uid, prior.study_uid,
                 len(prior.series), query.retrieve.upper())
    if done:
        log.info("study %s: %d prior study(ies) retrieved from the PACS", study_uid, len(done))
    return done


class RetrieveStage:
    """Runs retrievals on its own thread, one study at a time, and tells the completion monitor when a
    study may have its quantify job. Without a configured PACS every study is ready at once."""

    def __init__(self, query: PriorQuery | None, window_days: float, index: Store, storage_root: Path,
                 spool: Spool, ingestor: Ingestor) -> None:
        self.query = query
        self.window_days = window_days
        self.index = index
        self.root = storage_root
        self.spool = spool
        self.ingestor = ingestor
        self._lock = threading.Lock()
        self._waiting: set[str] = set()
        self._done: dict[str, float] = {}  # study -> last_received of the version retrieved for
        self._queue: queue.Queue[tuple[str, float] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="retrieve", daemon=True)

    def start(self) -> None:
        if self.query is not None:
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=timeout_s)

    def ready(self, study_uid: str, last_received: float) -> bool:
        """True when the study's job may be queued now; else its retrieval is under way (started here on
        the first call for this version of the study). Never blocks: called by the monitor's thread."""
        if self.query is None or was_retrieved(self.root, study_uid):
            return True
        with self._lock:
            if self._done.get(study_uid) == last_received:
                del self._done[study_uid]
                return True
            if study_uid not in self._waiting:
                self._waiting.add(study_uid)
                self._queue.put((study_uid, last_received))
        return False

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            study_uid, last_received = item
            try:
                if not was_retrieved(self.root, study_uid):  # it may have become a prior while it waited
                    assert self.query is not None
                    retrieve_priors(self.query, self.index, self.root, self.spool, self.ingestor, study_uid,
                                    self.window_days)
            except Exception:
                log.exception("study %s: retrieving earlier studies failed", study_uid)
            with self._lock:
                self._waiting.discard(study_uid)
                self._done[study_uid] = last_received
