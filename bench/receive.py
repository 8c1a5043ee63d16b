"""The receive path's own work per C-STORE, without the network: P-DATA fragments of one CT
instance decoded into a file by pynetdicom's decoder (`STORE_RECV_CHUNKED_DATASET`, a
NamedTemporaryFile, a copy and a flush per fragment) and by the node's (node.ingest.dimse_guard:
a ReceiveFile in the spool, memoryview writes, one flush), side by side, for several PDU sizes.
Usage: python -m bench.receive [--instances 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import _config  # noqa: E402
from pynetdicom.dimse_messages import DIMSEMessage  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402
from pynetdicom.pdu_primitives import P_DATA  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from node.ingest.dimse_guard import decode_into  # noqa: E402


def _message(dataset_bytes: int, pdv_bytes: int) -> list[P_DATA]:
    """A C-STORE-RQ as P-DATA primitives: the command set in one PDV, the data set in PDVs of
    pdv_bytes (PS3.8 E.2: control header 0x01/0x03 command, 0x00/0x02 data set)."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = CTImageStorage
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 2
    cmd.CommandDataSetType = 0x0001
    cmd.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.9.7433.1.1"
    out = []
    p = P_DATA()
    p.presentation_data_value_list.append((1, b"\x03" + encode(cmd, True, True)))
    out.append(p)
    data = os.urandom(dataset_bytes)
    for start in range(0, len(data), pdv_bytes):
        last = start + pdv_bytes >= len(data)
        p = P_DATA()
        p.presentation_data_value_list.append((1, (b"\x02" if last else b"\x00") + data[start:start + pdv_bytes]))
        out.append(p)
    return out


def _time(decode: object, primitives: list[P_DATA], n: int, folder: Path) -> float:
    assoc = SimpleNamespace(_accepted_cx={1: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])})
    t = time.perf_counter()
    for _ in range(n):
        msg = DIMSEMessage()
        for prim in primitives:
            if decode(msg, prim, assoc, folder):  # type: ignore[operator]
                break
        msg._data_set_file.close()  # noqa: SLF001
        os.unlink(msg._data_set_path)  # noqa: SLF001
    return (time.perf_counter() - t) / n


def _pynetdicom(msg: DIMSEMessage, prim: P_DATA, assoc: object, folder: Path) -> bool:
    return bool(msg.decode_msg(prim, assoc))  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--bytes", type=int, default=512 * 512 * 2 + 2000, help="data set size (CT 512x512)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-receive-"))
    tempfile_dir, chunked = tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET
    try:
        _config.STORE_RECV_CHUNKED_DATASET = True  # pynetdicom's own streaming, for the reference only
        tempfile.tempdir = str(folder)
        print(f"{args.instances} C-STORE data sets of {args.bytes / 1e6:.2f} MB decoded into files (page cache, "
              "no fsync); microseconds per instance")
        print(f"{'PDV bytes':>10} {'pynetdicom':>11} {'node':>8} {'node/pynetdicom':>16}")
        for pdv in (16378, 131066, 1048570):
            prims = _message(args.bytes, pdv)
            ref = min(_time(_pynetdicom, prims, args.instances, folder) for _ in range(3))
            mine = min(_time(decode_into, prims, args.instances, folder) for _ in range(3))
            print(f"{pdv:>10} {ref * 1e6:11.0f} {mine * 1e6:8.0f} {mine / ref:16.2f}")
    finally:
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = chunked, tempfile_dir
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
