"""The association machinery of node.net.reactor and the listener's own C-STORE answer.

- The C-STORE-RSP the DIMSE provider writes itself is byte for byte what pynetdicom would encode,
  and the C-STORE-RQ fields it reads from the raw command set are what pydicom decodes.
- Over a real association: success, and a refusal whose status and Error Comment reach the sender,
  both answered without pynetdicom's storage service class.
- Idle associations sleep: pynetdicom's reactors poll (a 1 ms and a 0.1 ms nap per thread), so
  open, idle associations cost CPU; event-driven ones cost next to none.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt, service_class
from pynetdicom._handlers import standard_dimse_recv_handler
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import parse_config
from node.ingest.ingestor import Ingestor
from node.ingest.listener import Listener
from node.ingest.spool import Spool
from node.net.assoc import requestor
from node.net.handlers import drop_unlogged_handlers
from node.net.reactor import EventAssociation
from node.net.wire import c_store_rsp, part10_header, store_request
from node.store import open_store
from tests.peers import free_port

STUDY = "1.2.826.0.1.3680043.9.7433.98.1"


def _ct(sop_uid: str, pixel_bytes: int = 8) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = STUDY + ".1"
    ds.Modality = "CT"
    ds.PatientID = "REACTOR"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\0" * pixel_bytes
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


@pytest.fixture
def listener(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = parse_config({"node": {"bind": "127.0.0.1", "port": free_port()},
                           "storage": {"root": str(tmp_path), "min_free_gb": 0.0}})
    spool, index = Spool(tmp_path), open_store(tmp_path)
    lst = Listener(config, Ingestor(spool, index, 10**9), spool.tmp)
    lst.start()
    yield lst, index
    lst.stop()
    index.close()


def _pynetdicom_rsp(status: int, comment: str) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = "1.2.3.45"
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 0))
    return bytes(pdata.presentation_data_value_list[0][1][1:])


@pytest.mark.parametrize(("status", "comment"), [(0x0000, ""), (0xA700, "disk full; retry later"),
                                                 (0xC000, "odd length comment")])
def test_store_answer_is_what_pynetdicom_encodes(status: int, comment: str) -> None:
    assert c_store_rsp(7, CTImageStorage, "1.2.3.45", status, comment) == _pynetdicom_rsp(status, comment)


@pytest.mark.parametrize("sop_uid", ["1.2.3.45", "1.2.3.4"])  # odd and even lengths: UI padding
def test_file_meta_is_what_pydicom_writes(sop_uid: str) -> None:
    import io

    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from pynetdicom.dsutils import create_file_meta

    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=sop_uid,
                                               transfer_syntax=pydicom.uid.ExplicitVRLittleEndian))
    assert part10_header(CTImageStorage, sop_uid, pydicom.uid.ExplicitVRLittleEndian, PYNETDICOM_IMPLEMENTATION_UID,
                         PYNETDICOM_IMPLEMENTATION_VERSION) == out.getvalue()


def _pynetdicom_command(primitive: object, message: object) -> bytes:
    message.primitive_to_message(primitive)  # type: ignore[attr-defined]
    return b"".join(bytes(pdv[1][1:]) for pdata in message.encode_msg(1, 1 << 20)  # type: ignore[attr-defined]
                    for pdv in pdata.presentation_data_value_list if pdv[1][0] & 1)


@pytest.mark.parametrize("sop_uid", ["1.2.3.45", "1.2.3.4", "1.2.840.113619." + "9" * 49])
def test_store_request_reads_what_pydicom_reads(sop_uid: str) -> None:
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID, rq.Priority = 513, CTImageStorage, sop_uid, 2
    rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = "ORTHANC", 9
    rq.DataSet = io.BytesIO(b"\0" * 16)
    raw = _pynetdicom_command(rq, C_STORE_RQ())
    ds = decode(io.BytesIO(raw), True, True)
    assert store_request(raw) == (int(ds.MessageID), str(ds.AffectedSOPClassUID), str(ds.AffectedSOPInstanceUID))
    assert store_request(raw) == (513, CTImageStorage, sop_uid)
    assert store_request(raw[:-3]) is None  # cut short
    assert store_request(raw.replace(sop_uid.encode(), sop_uid[:-1].encode() + b"\xe9")) is None  # not ASCII


def test_store_request_ignores_other_messages() -> None:
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, Verification
    assert store_request(_pynetdicom_command(echo, C_ECHO_RQ())) is None


def test_unlogged_pynetdicom_handlers_are_dropped() -> None:
    """pynetdicom's logging handlers build a dozen lines per message for a logger at WARNING."""
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    try:
        for logged, expected in ((logging.WARNING, False), (logging.INFO, True)):
            logger.setLevel(logged)
            assoc = Association(AE(), "requestor")
            assert standard_dimse_recv_handler in [h for h, _ in assoc.get_handlers(evt.EVT_DIMSE_RECV)]
            drop_unlogged_handlers(assoc)
            assert (standard_dimse_recv_handler in [h for h, _ in assoc.get_handlers(evt.EVT_DIMSE_RECV)]) is expected
    finally:
        logger.setLevel(level)


def test_listener_answers_c_store_itself(listener, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    lst, index = listener
    calls: list[object] = []
    original = service_class.StorageServiceClass.SCP
    monkeypatch.setattr(service_class.StorageServiceClass, "SCP",
                        lambda self, req, cx: (calls.append(req), original(self, req, cx))[1])
    ae = requestor("REACTORTEST", 30, ((CTImageStorage, "1.2.840.10008.1.2.1"),))
    assoc = ae.associate("127.0.0.1", lst.port, ae_title=lst.config.node.ae_title)
    assert assoc.is_established and isinstance(assoc, EventAssociation)
    try:
        ok = assoc.send_c_store(_ct(STUDY + ".1.1"))
        cut = assoc.send_c_store(_ct(STUDY + ".1.2", pixel_bytes=4))  # 2x2x16 bits needs 8 bytes
    finally:
        assoc.release()
    assert int(ok.Status) == 0x0000
    assert int(cut.Status) == 0xC000 and "pixel data incomplete: 4 of 8 bytes" in str(cut.ErrorComment)
    assert index.studies.instance_location(STUDY + ".1.1") is not None
    assert index.studies.instance_location(STUDY + ".1.2") is None
    assert calls == []  # neither went through pynetdicom's storage service class
    assert not list((Path(lst.spool_tmp)).iterdir())  # received files closed and removed


def _cpu_while_idle(port: int, ae_title: str, make_ae, seconds: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    assocs = []
    for _ in range(4):
        ae = make_ae()
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        assert assoc.is_established
        assocs.append(assoc)
    try:
        assert all(a.send_c_echo().Status == 0 for a in assocs)
        start = time.process_time()
        time.sleep(seconds)  # a measurement window, not a wait for a condition
        return time.process_time() - start
    finally:
        for a in assocs:
            a.release()


def test_idle_associations_sleep(listener) -> None:  # type: ignore[no-untyped-def]
    lst, _ = listener

    def event_ae() -> AE:
        return requestor("IDLETEST", 30, ((Verification,),))

    def polling_ae() -> AE:  # pynetdicom's own reactors on this side (1 ms naps, its default)
        ae = AE(ae_title="IDLETEST")
        ae.add_requested_context(Verification)
        return ae

    event_cpu = _cpu_while_idle(lst.port, lst.config.node.ae_title, event_ae)
    polling_cpu = _cpu_while_idle(lst.port, lst.config.node.ae_title, polling_ae)
    # Both sides of 4 associations in this process: event driven on both sides against pynetdicom's
    # polling on one. Wide margins: CPU time, not wall time, so a busy machine does not change it.
    assert event_cpu < 0.3, event_cpu
    assert polling_cpu > 2 * event_cpu, (polling_cpu, event_cpu)


def _contexts(server) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    return [(cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.result)
            for cx in server.contexts]


def test_negotiation_leaves_the_servers_contexts_alone(listener) -> None:  # type: ignore[no-untyped-def]
    """Associations share the listener's supported contexts (no copy per association): negotiating,
    with and without SCP/SCU role selection, must not change them."""
    from pynetdicom import build_role

    lst, _ = listener
    server = lst._server  # noqa: SLF001
    before = _contexts(server)
    ae = requestor("ROLES", 30, ((CTImageStorage, "1.2.840.10008.1.2.1"), (Verification,)))
    for ext_neg in ([], [build_role(CTImageStorage, scu_role=True, scp_role=True)]):
        assoc = ae.associate("127.0.0.1", lst.port, ae_title=lst.config.node.ae_title, ext_neg=ext_neg)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    assert _contexts(server) == before
