"""The listener under hostile and broken network input: each attack of docs/security.md against a
real node process over real sockets, and a legitimate C-ECHO (dcmtk) while or right after it."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from bench import wire
from tests.conftest import require_tool
from tests.peers import NodeProcess, wait_for

pytestmark = pytest.mark.peer

# Short timeouts so the tests see them expire; everything else at its default.
FAST = {"node": {"limits": {"artim_timeout_s": 3, "network_timeout_s": 3}},
        "http": {"request_timeout_s": 2, "workers": 2}}
RSS_GROWTH_MB = 100


def _pid(n: NodeProcess) -> int:
    assert n.proc is not None
    return n.proc.pid


def _echo_ok(n: NodeProcess, *extra: str) -> None:
    result = n.echoscu(*extra)
    assert result.returncode == 0, result.stdout + result.stderr


def _baseline(n: NodeProcess) -> tuple[int, int, float]:
    """Threads, open files and RSS of an idle node that has served one association."""
    _echo_ok(n)
    pid = _pid(n)
    wait_for(lambda: "association accepted from ECHOSCU" in n.log(), 10, "the first echo")
    time.sleep(0.5)  # let the first association's threads finish
    return wire.threads(pid), wire.open_fds(pid), wire.rss_mb(pid)


def _back_to_baseline(n: NodeProcess, base: tuple[int, int, float], timeout: float = 30) -> None:
    pid, (threads, fds, _) = _pid(n), base
    wait_for(lambda: wire.threads(pid) <= threads + 1 and wire.open_fds(pid) <= fds + 1, timeout,
             f"threads/fds back to baseline ({threads}/{fds}), now {wire.threads(pid)}/{wire.open_fds(pid)}")


def _no_tracebacks(n: NodeProcess) -> None:
    log = n.log()
    assert "Traceback" not in log, log[-3000:]


def test_silent_connections_take_no_association_slot_and_expire(node) -> None:
    """40 connections that send part of an A-ASSOCIATE-RQ header and stall: with max_associations 2
    a real sender still gets in, and the ARTIM timer closes them all."""
    n = node({**FAST, "node": {**FAST["node"], "max_associations": 2}})
    base = _baseline(n)
    stalled = []
    for i in range(40):
        peer = wire.RawPeer(n.port, source=f"127.0.0.{10 + i % 8}")  # 8 hosts: under the per-host cap
        peer.send(struct.pack(">BBL", wire.A_ASSOCIATE_RQ, 0, 1000))  # a plausible length, then nothing
        stalled.append(peer)
    started = time.monotonic()
    _echo_ok(n)  # while all 40 are open
    _echo_ok(n)
    assert all(p.closed_by_peer(timeout=15) for p in stalled)
    assert time.monotonic() - started < 15
    for p in stalled:
        p.close()
    wait_for(lambda: n.log().count("artim-timeout") >= 1, 10, "the ARTIM log line")
    assert re.search(r"refused connection from 127\.0\.0\.1\d:\d+: artim-timeout", n.log())
    assert "no complete A-ASSOCIATE-RQ within node.limits.artim_timeout_s (3 s)" in n.log()
    _back_to_baseline(n, base)
    _no_tracebacks(n)


def test_idle_flood_is_capped_per_host_and_overall(node) -> None:
    """200 idle TCP connections (from 20 hosts of the loopback net): each host is capped, the oldest
    negotiating connections give way, and C-ECHO works while they are open."""
    n = node(FAST | {"node": {"limits": {"artim_timeout_s": 30, "max_pending_connections": 64}}})
    base = _baseline(n)
    pid = _pid(n)
    flood = []
    for i in range(200):
        with contextlib.suppress(OSError):
            flood.append(wire.RawPeer(n.port, source=f"127.0.1.{1 + i % 20}", timeout=5))
    wait_for(lambda: "per-host-cap" in n.log() or "evicted" in n.log(), 10, "the flood to hit a cap")
    _echo_ok(n)
    _echo_ok(n)
    # One thread per negotiating connection (64), a few evicted ones still finishing.
    assert wire.threads(pid) <= base[0] + 64 + 16, "threads grew past the pending-connection cap"
    log = n.log()
    assert "refused connection from 127.0.1." in log
    assert "max_connections_per_host = 16" in log or "max_pending_connections" in log
    for p in flood:
        p.close()
    _back_to_baseline(n, base)
    _no_tracebacks(n)


def test_huge_associate_rq_is_refused_before_reading(node) -> None:
    """A header declaring a 4 GB A-ASSOCIATE-RQ, then a stream of bytes: A-ABORT at once, the
    node's memory does not follow the stream."""
    n = node(FAST)
    base = _baseline(n)
    pid = _pid(n)
    peer = wire.RawPeer(n.port)
    peer.send(struct.pack(">BBL", wire.A_ASSOCIATE_RQ, 0, 0xFFFFFFF0))
    sent = 0
    chunk = b"\x55" * (1 << 20)
    while sent < 256 << 20 and peer.send(chunk):
        sent += len(chunk)
    assert sent < 256 << 20, "the node kept reading a 4 GB A-ASSOCIATE-RQ"
    assert wire.rss_mb(pid) - base[2] < RSS_GROWTH_MB
    peer.close()
    wait_for(lambda: "associate-rq-too-large" in n.log(), 10, "the refusal line")
    assert "A-ASSOCIATE-RQ declares 4294967280 bytes, more than node.limits.max_associate_rq_kb (64 KiB)" in n.log()
    # The A-ABORT reaches a peer that sends only the header.
    peer = wire.RawPeer(n.port)
    peer.send(struct.pack(">BBL", wire.A_ASSOCIATE_RQ, 0, 0xFFFFFFF0))
    reply = peer.read()
    assert reply is not None and reply.pdu_type == wire.A_ABORT and reply.body[-2:] == bytes([2, 6])
    peer.close()
    _echo_ok(n)
    _back_to_baseline(n, base)
    _no_tracebacks(n)


def test_oversized_or_stalled_p_data_is_aborted(node) -> None:
    """On an association: a P-DATA-TF longer than the announced maximum is aborted before its body
    is read; one that stops half way is closed by the read timeout."""
    n = node(FAST)
    base = _baseline(n)
    pid = _pid(n)
    peer = wire.RawPeer(n.port)
    ac = peer.associate(n.ae_title)
    assert ac is not None and ac.pdu_type == wire.A_ASSOCIATE_AC
    max_length = struct.unpack(">L", ac.body[ac.body.find(b"\x51\x00\x00\x04") + 4:][:4])[0]
    assert max_length == 1024 * 1024  # node.limits.max_pdu_kb, announced (PS3.8 D.1)
    peer.send(struct.pack(">BBL", wire.P_DATA_TF, 0, 512 << 20))
    sent, chunk = 0, bytes(1 << 20)
    while sent < 256 << 20 and peer.send(chunk):
        sent += len(chunk)
    assert sent < 256 << 20 and wire.rss_mb(pid) - base[2] < RSS_GROWTH_MB
    peer.close()
    wait_for(lambda: "pdu-too-large" in n.log(), 10, "the refusal line")
    assert "P-DATA-TF PDU declares 536870912 bytes, more than the 1048576 the node announced" in n.log()
    _echo_ok(n)
    # A PDU that stops half way.
    peer = wire.RawPeer(n.port)
    assert peer.associate(n.ae_title).pdu_type == wire.A_ASSOCIATE_AC
    peer.send(wire.p_data(wire.pdv(1, 0x03, wire.c_echo_rq()))[:10])
    assert peer.closed_by_peer(timeout=15)
    wait_for(lambda: "read-timeout" in n.log(), 10, "the read timeout line")
    peer.close()
    _echo_ok(n)
    _back_to_baseline(n, base)
    _no_tracebacks(n)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def test_stalled_tls_handshake_affects_nobody_else(node, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.crt", cwd=pki)
    n = node({**FAST, "node": {**FAST["node"], "tls": {"cert": str(pki / "server.crt"),
                                                        "key": str(pki / "server.key")}}})
    tls = ["+tla", "+cf", str(pki / "server.crt")]  # TLS without a client certificate, server verified
    stalled = [wire.RawPeer(n.port) for _ in range(3)]  # TCP connections that never send a ClientHello
    started = time.monotonic()
    _echo_ok(n, *tls)  # a good TLS client is served while they stall
    assert time.monotonic() - started < 3, "the good handshake waited for the stalled ones"
    status, body = n.http_get("/healthz")
    assert status == 200 and json.loads(body)["checks"]["listener"]["negotiating"] == 3
    assert all(p.closed_by_peer(timeout=15) for p in stalled)  # the ARTIM timer ends them
    wait_for(lambda: "TLS handshake and A-ASSOCIATE-RQ within node.limits.artim_timeout_s" in n.log(), 10,
             "the TLS ARTIM line")
    # A client speaking plain DICOM to the TLS port: refused with one line, not a traceback.
    plain = wire.RawPeer(n.port)
    plain.send(wire.associate_rq(n.ae_title))
    assert plain.closed_by_peer(timeout=10)
    wait_for(lambda: "tls-handshake" in n.log(), 10, "the handshake failure line")
    _echo_ok(n, *tls)
    ctx = ssl.create_default_context(cafile=str(pki / "server.crt"))
    with socket.create_connection(("127.0.0.1", n.port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost"):
        pass  # a handshake from Python's ssl too
    _no_tracebacks(n)


def test_healthz_takes_no_slot_and_http_is_bounded(node) -> None:
    n = node({**FAST, "node": {**FAST["node"], "max_associations": 2}})
    for _ in range(40):
        status, body = n.http_get("/healthz")
        assert status == 200 and json.loads(body)["checks"]["listener"]["ok"] is True
    _echo_ok(n)  # 40 health checks took no association slot
    base = _baseline(n)  # with the HTTP pool's threads started
    pid = _pid(n)
    # 300 half-sent requests: the pool stays bounded, they are cut at the request deadline.
    half = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", n.http_port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        half.append(s)
    assert wire.threads(pid) <= base[0] + 2, "the HTTP server grew threads with the half-sent requests"
    _echo_ok(n)
    wait_for(lambda: n.http_get("/healthz")[0] == 200, 30, "/healthz to answer again")
    for s in half:
        s.close()
    _back_to_baseline(n, base)
    _no_tracebacks(n)


def _deflated_file(path: Path, study_file: Path, sop_uid: str, filler_mb: int) -> int:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set carries `filler_mb` of
    zeros in a private OB element (PS3.5 7.8); returns its size. Built as a stream."""
    ds = pydicom.dcmread(study_file, stop_before_pixels=True)
    ds.SOPInstanceUID = sop_uid
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        if keyword in ds:
            delattr(ds, keyword)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [deflater.compress(head.getvalue())]
    if filler_mb:
        # A private block after the header attributes (PS3.5 7.8): creator (0029,0010) LO, then OB.
        body.append(deflater.compress(struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 4) + b"BOMB"))
        body.append(deflater.compress(struct.pack("<HH2sHL", 0x0029, 0x1000, b"OB", 0, filler_mb << 20)))
        zeros = bytes(1 << 20)
        body += [deflater.compress(zeros) for _ in range(filler_mb)]
    body.append(deflater.flush())
    path.write_bytes(out.getvalue() + b"".join(body))
    return path.stat().st_size


def _store_files(port: int, called: str, files: list[Path], ts: str) -> list[int]:
    ae = AE(ae_title="DEFLATOR")
    ae.add_requested_context(CTImageStorage, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    out = []
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for f in files:
            status = assoc.send_c_store(f)
            out.append(int(status.Status) if status else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    return out


def test_deflate_bomb_is_refused_and_nothing_stored(node, study_ct_file, tmp_path: Path) -> None:
    """A 0.6 MB deflated data set that inflates to 600 MB: 0xA700, nothing stored, memory flat; a
    normal deflated instance on the same association is stored."""
    n = node({**FAST, "ingest": {"max_instance_mb": 100}})
    base = _baseline(n)
    pid = _pid(n)
    bomb = tmp_path / "bomb.dcm"
    size = _deflated_file(bomb, study_ct_file, "1.2.826.0.1.3680043.9.7433.2.1", 600)
    assert size < 2 << 20
    good = tmp_path / "good.dcm"
    _deflated_file(good, study_ct_file, "1.2.826.0.1.3680043.9.7433.2.2", 0)
    statuses = _store_files(n.port, n.ae_title, [bomb, good], DeflatedExplicitVRLittleEndian)
    assert statuses == [0xA700, 0x0000]
    assert wire.peak_rss_mb(pid) - base[2] < RSS_GROWTH_MB
    rows = n.db("SELECT sop_instance_uid FROM instances")
    assert [r[0] for r in rows] == ["1.2.826.0.1.3680043.9.7433.2.2"]
    assert not list((n.root / "studies").rglob("1.2.826.0.1.3680043.9.7433.2.1.dcm"))
    wait_for(lambda: "inflates to more than 100 MB" in n.log(), 10, "the refusal line")
    _echo_ok(n)
    _no_tracebacks(n)


@pytest.fixture(scope="module")
def study_ct_file(phantom_factory) -> Path:
    return phantom_factory(seed=31, noise=0.15).ct_files[0]  # a CT header to carry the attacks; made once per session


def _dataset_bytes(study_file: Path, sop_uid: str) -> bytes:
    """The header of a CT instance with SOPInstanceUID set to exactly these characters (pydicom
    would strip a trailing newline, so the value is put in as bytes)."""
    ds = pydicom.dcmread(study_file, stop_before_pixels=True)
    placeholder = "9" * len(sop_uid)
    ds.SOPInstanceUID = placeholder
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = buf.getvalue()
    assert raw.count(placeholder.encode()) == 1
    return raw.replace(placeholder.encode(), sop_uid.encode("latin-1"))


def test_bad_uids_get_a_failure_status_and_the_association_goes_on(node, study_ct_file) -> None:
    n = node(FAST)
    peer = wire.RawPeer(n.port)
    ac = peer.associate(n.ae_title, [(1, wire.CT_IMAGE_STORAGE, [wire.EXPLICIT_LE])])
    assert ac is not None and ac.pdu_type == wire.A_ASSOCIATE_AC
    long_uid = "1.2." + "3" * 196  # 200 characters
    newline_uid = "1.2.826.0.1.3680043.9.7433.3.1\n"
    good_uid = "1.2.826.0.1.3680043.9.7433.3.2"
    replies = []
    for i, uid in enumerate((long_uid, newline_uid, good_uid), start=1):
        peer.send(wire.p_data(wire.pdv(1, 0x03, wire.c_store_rq(wire.CT_IMAGE_STORAGE, uid, i))))
        peer.send(wire.p_data(wire.pdv(1, 0x02, _dataset_bytes(study_ct_file, uid))))
        replies.append(peer.read())
    assert all(r is not None and r.pdu_type == wire.P_DATA_TF for r in replies)
    assert [r.status() for r in replies] == [0xA900, 0xA900, 0x0000]
    assert "(0000,1000) is 200 characters, over 64" in replies[0].comment()
    assert "not a valid UID" in replies[1].comment()
    peer.send(wire.pdu(wire.A_RELEASE_RQ, bytes(4)))
    assert peer.read().pdu_type == wire.A_RELEASE_RP
    peer.close()
    assert [r[0] for r in n.db("SELECT sop_instance_uid FROM instances")] == [good_uid]
    assert not any("\n" in p.name for p in n.root.rglob("*"))
    log = n.log()
    assert "AffectedSOPInstanceUID (0000,1000) is 200 characters, over 64 (PS3.5 9.1)" in log
    assert "SOPInstanceUID (0008,0018) is not a valid UID" in log and "9.7433.3.1\\n'" in log
    assert not any(line.strip() == "" for line in log.splitlines()), "a UID's newline split a log line"
    _echo_ok(n)
    _no_tracebacks(n)


def test_garbage_command_is_one_line_not_a_traceback(node) -> None:
    n = node(FAST)
    for _ in range(20):
        peer = wire.RawPeer(n.port)
        assert peer.associate(n.ae_title).pdu_type == wire.A_ASSOCIATE_AC
        peer.send(wire.p_data(wire.pdv(1, 0x03, b"\xde\xad\xbe\xef" * 7)))
        assert peer.closed_by_peer(timeout=10)
        peer.close()
    _echo_ok(n)
    log = n.log()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]) <= 3 * 20


def test_short_fuzz_run(node, tmp_path: Path) -> None:
    """200 cases of bench/fuzz.py against a node (batches of 100, seeded: the same cases every run, however
    busy the machine): after every batch C-ECHO works, RSS is bounded, threads and files come back, and
    the log has no traceback. The long runs are `python -m bench.fuzz` (docs/security.md)."""
    from bench.fuzz import FuzzRun

    n = node(FAST)
    run = FuzzRun(n.port, n.ae_title, _pid(n), n.log_path, echo=lambda: _echo_ok(n),
                  health=lambda: json.loads(n.http_get("/healthz")[1]), settle_s=30)
    report = run.run(cases=200, batch=100)
    assert report.cases >= 100, report.as_dict()
    assert report.outcomes["AC + status 0x0000 + RELEASE-RP"] + report.outcomes["AC + RELEASE-RP"] > 0
    assert report.failed_checks == [], report.failed_checks
    assert report.tracebacks == 0
    assert report.peak_rss_growth_mb < RSS_GROWTH_MB


def test_threads_are_bounded_when_connections_race(node) -> None:
    """Many connections opened and closed at once from one host: the per-host cap holds and
    nothing leaks."""
    n = node(FAST)
    base = _baseline(n)

    def burst() -> None:
        for _ in range(30):
            try:
                p = wire.RawPeer(n.port, source="127.0.2.1", timeout=5)
                p.send(wire.associate_rq(n.ae_title))
                p.read(timeout=5)
                p.close()
            except OSError:
                pass

    workers = [threading.Thread(target=burst) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    _echo_ok(n)
    _back_to_baseline(n, base)
    _no_tracebacks(n)
