"""Earlier studies of a patient from the PACS, the DICOM side: C-FIND (study, then series level) and
retrieval by C-MOVE to this node (the PACS sends them to the listener like any other push) or C-GET
(they come back on the same association and are handed to a store callback: the service's ingest).

Only PET and CT series of PET studies are retrieved (PS3.4 C.6.2 Study Root Query/Retrieve, series
level). When and for which study this runs, and where a C-GET instance is stored, is the retrieve
stage's business (node/retrieve.py); nothing here touches the index or the spool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedPETImageStorage,
    PositronEmissionTomographyImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.compare.settings import PriorQuery
from node.net.assoc import on_open, requestor
from node.net.reactor import AssociationSetup
from node.uids import is_valid_uid

log = logging.getLogger(__name__)

PENDING_STATUSES = (0xFF00, 0xFF01)
RETRIEVED_MODALITIES = ("PT", "CT")
GET_STORAGE_CLASSES = (PositronEmissionTomographyImageStorage, CTImageStorage, EnhancedPETImageStorage,
                       EnhancedCTImageStorage)


class PriorQueryError(Exception):
    """The PACS could not be asked or did not deliver, with the reason."""


@dataclass(frozen=True)
class PriorStudy:
    study_uid: str
    study_date: str
    series: tuple[str, ...]  # PET and CT series to retrieve


def _associate(query: PriorQuery, what: str, contexts: tuple[str, ...], setup: AssociationSetup | None = None,
               **kwargs: Any) -> Any:
    """An established association with the PACS (TCP_NODELAY on, large PDUs: a C-GET's instances
    arrive in PDUs up to the maximum announced here), or PriorQueryError naming it."""
    ae = requestor(query.calling_ae_title, query.timeout_s, tuple((c,) for c in contexts), setup)
    handlers = [(evt.EVT_CONN_OPEN, on_open), *kwargs.pop("evt_handlers", [])]
    assoc = ae.associate(query.host, query.port, ae_title=query.ae_title, evt_handlers=handlers, **kwargs)
    if not assoc.is_established:
        raise PriorQueryError(f"{what}: association with {query.ae_title}@{query.host}:{query.port} not established")
    return assoc


def _responses(assoc: Any, iterator: Iterator[tuple[Dataset, Dataset | None]], what: str) -> list[Dataset]:
    found = []
    for status, identifier in iterator:
        if status is None or "Status" not in status:
            raise PriorQueryError(f"{what}: no response from the PACS (timeout or aborted association)")
        code = int(status.Status)
        if code in PENDING_STATUSES:
            if identifier is not None:
                found.append(identifier)
        elif code != 0x0000:
            raise PriorQueryError(f"{what}: PACS answered status 0x{code:04X}")
    return found


def find_prior_studies(query: PriorQuery, patient_id: str, issuer: str, reference: datetime, window_days: float,
                       exclude: set[str]) -> list[PriorStudy]:
    """PET studies of the patient dated within the window before `reference` (newest first), with their
    PET and CT series; studies in `exclude` (already here) are left out."""
    assoc = _associate(query, "C-FIND", (StudyRootQueryRetrieveInformationModelFind,))
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = patient_id
        if issuer:
            ds.IssuerOfPatientID = issuer
        first = (reference - timedelta(days=window_days)).strftime("%Y%m%d")
        ds.StudyDate = f"{first}-{reference.strftime('%Y%m%d')}"
        ds.StudyInstanceUID = ""
        ds.ModalitiesInStudy = ""
        ds.AccessionNumber = ""
        studies = _responses(assoc, assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind),
                             "C-FIND (study level)")
        out = []
        for study in studies:
            uid = str(study.get("StudyInstanceUID", ""))
            if not is_valid_uid(uid) or uid in exclude or str(study.get("PatientID", "")) != patient_id:
                continue
            modalities = study.get("ModalitiesInStudy")
            if modalities and "PT" not in (list(modalities) if not isinstance(modalities, str) else [modalities]):
                continue
            sq = Dataset()
            sq.QueryRetrieveLevel = "SERIES"
            sq.StudyInstanceUID = uid
            sq.SeriesInstanceUID = ""
            sq.Modality = ""
            series = _responses(assoc, assoc.send_c_find(sq, StudyRootQueryRetrieveInformationModelFind),
                                f"C-FIND (series level, study {uid})")
            wanted = tuple(str(s.SeriesInstanceUID) for s in series
                           if str(s.get("Modality", "")) in RETRIEVED_MODALITIES and is_valid_uid(
                               str(s.get("SeriesInstanceUID", ""))))
            if any(str(s.get("Modality", "")) == "PT" for s in series):
                out.append(PriorStudy(uid, str(study.get("StudyDate", "")), wanted))
        return sorted(out, key=lambda s: s.study_date, reverse=True)
    finally:
        assoc.release()


def _series_key(prior: PriorStudy, series_uid: str) -> Dataset:
    """The identifier of a series-level retrieve (PS3.4 C.4.2.1.4: unique keys down to the level)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = prior.study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def _each_series(query: PriorQuery, prior: PriorStudy, retrieve_one: Callable[[str], None]) -> None:
    """retrieve_one(series UID) for every series of the prior, `query.associations` at once: each
    opens its own association, so the PACS sends the series in parallel (a retrieve is one
    operation at a time on an association, and PACSs rarely negotiate asynchronous operations,
    PS3.7 D.3.3.3). The first failure is raised once every started retrieve has ended."""
    series = list(prior.series)
    if len(series) <= 1 or query.associations <= 1:
        for series_uid in series:
            retrieve_one(series_uid)
        return
    with ThreadPoolExecutor(max_workers=min(len(series), query.associations), thread_name_prefix="retrieve") as pool:
        futures = [pool.submit(retrieve_one, series_uid) for series_uid in series]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def _move(query: PriorQuery, prior: PriorStudy) -> None:
    def move_one(series_uid: str) -> None:
        assoc = _associate(query, "C-MOVE", (StudyRootQueryRetrieveInformationModelMove,))
        try:
            _final_status(assoc.send_c_move(_series_key(prior, series_uid), query.move_destination,
                                            StudyRootQueryRetrieveInformationModelMove),
                          f"C-MOVE of series {series_uid} to {query.move_destination}")
        finally:
            assoc.release()

    _each_series(query, prior, move_one)


def _final_status(iterator: Iterator[tuple[Dataset, Dataset | None]], what: str) -> None:
    """The retrieve's final response: success, or an error naming failed sub-operations."""
    last = None
    for status, _ in iterator:
        if status is None or "Status" not in status:
            raise PriorQueryError(f"{what}: no response from the PACS (timeout or aborted association)")
        last = status
    if last is None:
        raise PriorQueryError(f"{what}: no response from the PACS")
    code = int(last.Status)
    failed = int(last.get("NumberOfFailedSuboperations", 0) or 0)
    if code not in (0x0000,) or failed:
        raise PriorQueryError(f"{what}: status 0x{code:04X}, {failed} failed sub-operation(s)")


# Receives one instance of a C-GET and answers the C-STORE status (0x0000 only once the instance is
# durable and indexed: node/retrieve.py): a Part 10 file pynetdicom wrote (chunked receive, the mode the
# service's listener sets), else the bytes as received (preamble, file meta and data set).
StoreInstance = Callable[[Path | bytes], int]


def _get(query: PriorQuery, prior: PriorStudy, store: StoreInstance, setup: AssociationSetup | None = None) -> None:
    """C-GET: the PACS sends on this association (PS3.4 C.4.3); `store` takes each instance before it is
    acknowledged, like a pushed one. `setup` may give the association a DIMSE provider that receives
    and answers the C-STOREs itself (the retrieve stage's: into the spool, as the listener does);
    what it leaves to pynetdicom arrives at `on_store`."""

    def on_store(event: evt.Event) -> int:
        try:
            path = event.dataset_path
        except AttributeError:
            path = None
        if not isinstance(path, str | Path):  # not received chunked (None): the data set is in memory
            return store(event.encoded_dataset(include_meta=True))
        return store(Path(path))

    def get_one(series_uid: str) -> None:
        assoc = _associate(query, "C-GET", (StudyRootQueryRetrieveInformationModelGet, *GET_STORAGE_CLASSES), setup,
                           ext_neg=[build_role(c, scp_role=True) for c in GET_STORAGE_CLASSES],
                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            _final_status(assoc.send_c_get(_series_key(prior, series_uid), StudyRootQueryRetrieveInformationModelGet),
                          f"C-GET of series {series_uid}")
        finally:
            assoc.release()

    _each_series(query, prior, get_one)


def retrieve_study(query: PriorQuery, prior: PriorStudy, store: StoreInstance,
                   setup: AssociationSetup | None = None) -> None:
    """Retrieve the prior's PET and CT series by the configured method; PriorQueryError if the PACS
    did not deliver them all. `setup`: for C-GET associations (see _get)."""
    if query.retrieve == "get":
        _get(query, prior, store, setup)
    else:
        _move(query, prior)
