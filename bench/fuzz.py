"""Fuzz the DICOM listener of a running node with mutated PDUs and data sets (hypothesis).

    python -m bench.fuzz --cases 10000          # starts its own node on a free loopback port
    python -m bench.fuzz --seconds 60

Each case opens a connection, sends what hypothesis generated, half-closes and reads the node's
answers until it closes: mutated A-ASSOCIATE-RQs (declared and item lengths, item types, PC IDs,
AE titles, truncation), P-DATA-TF streams on an association (PDV lengths, PC IDs, control bits,
fragmented and garbage command sets, stray PDUs), and C-STORE data sets (VRs, lengths, undefined
lengths, nested sequences, truncation) in every transfer syntax the node accepts (implicit,
explicit, deflated, big endian). After every batch: a legitimate C-ECHO must work, the node's RSS
stay within bounds, its threads and open files come back to the baseline, and its log must hold
no traceback and at most a few lines per case. Figures go to docs/security.md.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import wire  # noqa: E402

CT = wire.CT_IMAGE_STORAGE
STORE_CONTEXTS = [(1, wire.VERIFICATION, [wire.IMPLICIT_LE]), (3, CT, [wire.IMPLICIT_LE]),
                  (5, CT, [wire.EXPLICIT_LE]), (7, CT, [wire.DEFLATED_LE]), (9, CT, [wire.EXPLICIT_BE])]
_TS_OF_CONTEXT = {3: "implicit", 5: "explicit", 7: "deflated", 9: "big"}
_VRS = [b"AE", b"AS", b"CS", b"DA", b"DS", b"IS", b"LO", b"OB", b"OW", b"PN", b"SH", b"SQ", b"UI", b"UL", b"UN",
        b"US", b"UT", b"XX", b"\x00\x00"]


@dataclass
class Case:
    kind: str
    chunks: list[bytes]


# -- strategies ---------------------------------------------------------------------------------

def _mutate(data: bytes, draw: Callable) -> bytes:
    """Byte flips, a truncation or an insertion somewhere in `data`."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        if not buf:
            break
        op = draw(st.sampled_from(["flip", "cut", "insert", "set32"]))
        pos = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif pos + 4 <= len(buf):
            buf[pos:pos + 4] = struct.pack(">L", draw(st.sampled_from([0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF,
                                                                          0xFFFFFFFF])))
    return bytes(buf)


@st.composite
def associate_cases(draw: Callable, called: str) -> Case:
    contexts = draw(st.lists(st.tuples(st.integers(0, 255), st.sampled_from([wire.VERIFICATION, CT, "1.2.3", ""]),
                                       st.lists(st.sampled_from([wire.IMPLICIT_LE, wire.EXPLICIT_LE, wire.DEFLATED_LE,
                                                                 "1.2.840.10008.1.2.4.50", "9" * 70]),
                                                max_size=4)),
                             min_size=0, max_size=6))
    title = draw(st.sampled_from([called, "", "X" * 16, "\\\x00\n", called.lower()]))
    rq = wire.associate_rq(title, contexts=contexts or None, max_length=draw(st.sampled_from([0, 1, 16384, 2**32 - 1])))
    body = rq[6:]
    if draw(st.booleans()):
        body = _mutate(body, draw)
    extra_items = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=80)), max_size=3))
    body += b"".join(wire.item(t, b) for t, b in extra_items)
    declared = draw(st.sampled_from([None, None, 0, 1, len(body) + 7, 64 * 1024 + 1, 0xFFFFFFFF]))
    pdu_type = draw(st.sampled_from([wire.A_ASSOCIATE_RQ] * 6 + [0x00, 0x02, 0x04, 0x07, 0x09, 0xFF]))
    data = wire.pdu(pdu_type, body, declared)
    return Case("associate", [data])


@st.composite
def _pdvs(draw: Callable) -> bytes:
    command = draw(st.sampled_from([wire.c_echo_rq(), wire.c_store_rq(CT, "1.2.3.4"), b"", b"\xde\xad" * 9]))
    if draw(st.booleans()):
        command = _mutate(command, draw)
    pcid = draw(st.sampled_from([1, 1, 1, 3, 0, 2, 255]))
    control = draw(st.sampled_from([0x03, 0x03, 0x01, 0x02, 0x00, 0xFF]))
    out = wire.pdv(pcid, control, command)
    if draw(st.booleans()):  # a wrong item length
        out = struct.pack(">L", draw(st.sampled_from([0, 1, 2, len(command) + 100, 0xFFFFFFFF]))) + out[4:]
    return out


@st.composite
def pdata_cases(draw: Callable, called: str) -> Case:
    chunks = [wire.associate_rq(called, contexts=STORE_CONTEXTS)]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["pdata"] * 5 + ["rq", "release", "abort", "unknown", "raw"]))
        if kind == "pdata":
            pdvs = draw(st.lists(_pdvs(), min_size=0, max_size=3))
            chunks.append(wire.pdu(wire.P_DATA_TF, b"".join(pdvs)))
        elif kind == "rq":
            chunks.append(wire.associate_rq(called))
        elif kind == "release":
            chunks.append(wire.pdu(wire.A_RELEASE_RQ, draw(st.binary(max_size=8))))
        elif kind == "abort":
            chunks.append(wire.pdu(wire.A_ABORT, draw(st.binary(max_size=8))))
        elif kind == "unknown":
            chunks.append(wire.pdu(draw(st.integers(8, 255)), draw(st.binary(max_size=32))))
        else:
            chunks.append(draw(st.binary(min_size=1, max_size=128)))
    return Case("p-data", chunks)


def _el(group: int, elem: int, vr: bytes, value: bytes, explicit: bool, big: bool = False) -> bytes:
    order = ">" if big else "<"
    if not explicit:
        return struct.pack(order + "HHL", group, elem, len(value)) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack(order + "HH", group, elem) + vr + b"\0\0" + struct.pack(order + "L", len(value)) + value
    return struct.pack(order + "HH", group, elem) + vr + struct.pack(order + "H", len(value) & 0xFFFF) + value


def _base_dataset(sop_uid: str, explicit: bool, big: bool) -> list[bytes]:
    """A minimal CT header, element by element (mutations then act per element)."""
    values = [(0x0008, 0x0016, b"UI", CT.encode() + b"\0"), (0x0008, 0x0018, b"UI", sop_uid.encode()),
              (0x0008, 0x0060, b"CS", b"CT"), (0x0010, 0x0010, b"PN", b"FUZZ^CASE "),
              (0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.9.7433.9.1\0"),
              (0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.9.7433.9.2\0")]
    out = []
    for g, e, vr, v in values:
        if len(v) % 2:
            v += b" "
        out.append(_el(g, e, vr, v, explicit, big))
    return out


@st.composite
def _sequence(draw: Callable, explicit: bool, depth: int = 0) -> bytes:
    items = b""
    for _ in range(draw(st.integers(0, 2))):
        inner = b"" if depth > 3 else draw(_sequence(explicit, depth + 1))
        length = draw(st.sampled_from([len(inner), 0xFFFFFFFF, len(inner) + 13]))
        items += struct.pack("<HHL", 0xFFFE, 0xE000, length) + inner
        if length == 0xFFFFFFFF:
            items += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    tag = struct.pack("<HH", 0x0008, 0x1115)
    if explicit:
        return tag + b"SQ\0\0" + struct.pack("<L", 0xFFFFFFFF) + items + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return tag + struct.pack("<L", 0xFFFFFFFF) + items + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


@st.composite
def dataset_cases(draw: Callable, called: str) -> Case:
    context = draw(st.sampled_from([3, 5, 7, 9]))
    ts = _TS_OF_CONTEXT[context]
    explicit, big = ts != "implicit", ts == "big"
    sop_uid = draw(st.sampled_from(["1.2.826.0.1.3680043.9.7433.9.3", "1.2.3.4\n", "1." + "2" * 80, "../x", ""]))
    elements = _base_dataset(sop_uid, explicit, big)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["vr", "length", "garbage", "sequence", "drop", "mutate"]))
        i = draw(st.integers(0, len(elements) - 1))
        if op == "vr" and explicit:
            elements[i] = elements[i][:4] + draw(st.sampled_from(_VRS)) + elements[i][6:]
        elif op == "length":
            elements[i] = elements[i][:-4] + struct.pack("<L", draw(st.sampled_from([0, 0xFFFFFFFF, 0x7FFFFFFF])))
        elif op == "garbage":
            elements.insert(i, draw(st.binary(min_size=1, max_size=64)))
        elif op == "sequence":
            elements.insert(i, draw(_sequence(explicit)))
        elif op == "drop":
            del elements[i]
        else:
            elements[i] = _mutate(elements[i], draw)
    data = b"".join(elements)
    if ts == "deflated":
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
        if draw(st.booleans()):
            data = _mutate(data, draw)
    command = wire.c_store_rq(CT, sop_uid.rstrip("\n") or "1.2.3", 1)
    fragments = [data] if draw(st.booleans()) else [data[: len(data) // 2], data[len(data) // 2:]]
    pdvs = [wire.pdv(context, 0x03, command)]
    pdvs += [wire.pdv(context, 0x02 if k == len(fragments) - 1 else 0x00, f) for k, f in enumerate(fragments)]
    return Case("dataset", [wire.associate_rq(called, contexts=STORE_CONTEXTS), *(wire.p_data(p) for p in pdvs)])


def case_strategy(called: str) -> st.SearchStrategy[Case]:
    return st.one_of(associate_cases(called), pdata_cases(called), dataset_cases(called))


# -- running against a node ---------------------------------------------------------------------

def _outcome(replies: list[wire.Reply], closed: bool) -> str:
    names = {wire.A_ASSOCIATE_AC: "AC", wire.A_ASSOCIATE_RJ: "RJ", wire.P_DATA_TF: "P-DATA",
             wire.A_RELEASE_RP: "RELEASE-RP", wire.A_ABORT: "ABORT"}
    parts = []
    for r in replies[:4]:
        status = r.status()
        parts.append(f"status 0x{status:04X}" if status is not None else names.get(r.pdu_type, f"0x{r.pdu_type:02X}"))
    return (" + ".join(parts) or "no reply") + ("" if closed else " (left open)")


@dataclass
class Report:
    cases: int = 0
    batches: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    outcome_seconds: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    failed_checks: list[str] = field(default_factory=list)
    tracebacks: int = 0
    log_lines: int = 0
    base_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_rss_growth_mb: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"cases": self.cases, "batches": self.batches, "seconds": round(self.seconds, 1),
                "cases_by_kind": dict(self.by_kind), "outcomes": dict(self.outcomes.most_common()),
                "ms_per_case_by_outcome": {k: round(1000 * self.outcome_seconds[k] / n)
                                           for k, n in self.outcomes.most_common()},
                "node_refusals": dict(self.refusals.most_common()), "failed_checks": self.failed_checks,
                "tracebacks": self.tracebacks, "log_lines": self.log_lines,
                "base_rss_mb": round(self.base_rss_mb, 1), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_rss_growth_mb": round(self.peak_rss_growth_mb, 1)}


_REFUSAL = re.compile(r"refused connection from \S+: ([a-z-]+):|(refused instance)|(aborting association)|"
                      r"(ended by an error in pynetdicom)|(Traceback)")


class FuzzRun:
    """Batches of hypothesis-generated cases against the node at `port` (process `pid`)."""

    def __init__(self, port: int, ae_title: str, pid: int, log_path: Path, echo: Callable[[], None] | None = None,
                 rss_limit_mb: float = 100.0, case_timeout_s: float = 2.0, quiet_s: float = 0.5,
                 parallel: int = 4, health: Callable[[], dict] | None = None, settle_s: float = 15.0) -> None:
        self.parallel, self.health, self.settle_s = parallel, health, settle_s
        self.port, self.ae_title, self.pid, self.log_path = port, ae_title, pid, log_path
        self.echo = echo or self._pynetdicom_echo
        self.rss_limit_mb, self.case_timeout_s, self.quiet_s = rss_limit_mb, case_timeout_s, quiet_s
        self.report = Report()
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0

    def _pynetdicom_echo(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title="FUZZ_ECHO")
        ae.add_requested_context(wire.VERIFICATION)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
        try:
            assert assoc.is_established, "C-ECHO: association not accepted"
            status = assoc.send_c_echo()
            assert status is not None and int(status.Status) == 0, f"C-ECHO status {status}"
        finally:
            if assoc.is_established:
                assoc.release()

    def execute(self, case: Case, source: str | None = None) -> str:
        """Send one case as a sender would (the rest only once the A-ASSOCIATE-AC is in, then an
        A-RELEASE-RQ), read until the node releases, aborts, closes or goes quiet; the outcome."""
        try:
            peer = wire.RawPeer(self.port, source=source, timeout=self.case_timeout_s)
        except OSError as exc:
            return f"connect failed: {type(exc).__name__}"
        replies: list[wire.Reply] = []
        closed = False
        try:
            peer.send(case.chunks[0])
            first = peer.read(timeout=self.case_timeout_s)
            if first is None:
                return _outcome(replies, peer.closed_by_peer(timeout=0.05))
            replies.append(first)
            if first.pdu_type == wire.A_ASSOCIATE_AC:
                for chunk in case.chunks[1:]:
                    if not peer.send(chunk):
                        break
                peer.send(wire.pdu(wire.A_RELEASE_RQ, bytes(4)))
            final = (wire.A_RELEASE_RP, wire.A_ABORT, wire.A_ASSOCIATE_RJ)
            while not replies or replies[-1].pdu_type not in final:
                reply = peer.read(timeout=self.quiet_s if replies else self.case_timeout_s)
                if reply is None:
                    break
                replies.append(reply)
            closed = replies[-1].pdu_type in final if replies else False
            closed = closed or peer.closed_by_peer(timeout=0.05)
        finally:
            peer.close()
        return _outcome(replies, closed)

    def _timed(self, case: Case, end_by: float, source: str) -> tuple[str | None, float]:
        if time.monotonic() > end_by:
            return None, 0.0
        t0 = time.monotonic()
        return self.execute(case, source), time.monotonic() - t0

    def _check(self, base_threads: int, base_fds: int) -> None:
        r = self.report
        try:
            self.echo()
        except Exception as exc:  # noqa: BLE001 - recorded as a failed check
            r.failed_checks.append(f"batch {r.batches}: C-ECHO failed: {exc}")
        rss = wire.rss_mb(self.pid)
        r.peak_rss_mb = max(r.peak_rss_mb, wire.peak_rss_mb(self.pid))
        r.peak_rss_growth_mb = max(r.peak_rss_growth_mb, rss - r.base_rss_mb)
        if rss - r.base_rss_mb > self.rss_limit_mb:
            r.failed_checks.append(f"batch {r.batches}: RSS {rss:.0f} MB, {rss - r.base_rss_mb:.0f} MB over the start")
        deadline = time.monotonic() + self.settle_s  # connections of the batch may still be closing
        while time.monotonic() < deadline:
            if wire.threads(self.pid) <= base_threads + 2 and wire.open_fds(self.pid) <= base_fds + 2:
                break
            time.sleep(0.1)
        else:
            r.failed_checks.append(f"batch {r.batches}: threads/fds {wire.threads(self.pid)}/"
                                   f"{wire.open_fds(self.pid)} did not come back to {base_threads}/{base_fds}")
        text = self.log_path.read_bytes()[self._log_offset:].decode("utf-8", "replace")
        r.tracebacks = text.count("Traceback")
        r.log_lines = text.count("\n")
        if r.tracebacks:
            r.failed_checks.append(f"batch {r.batches}: {r.tracebacks} traceback(s) in the node log")
        if r.log_lines > 4 * r.cases + 50:
            r.failed_checks.append(f"batch {r.batches}: {r.log_lines} log lines for {r.cases} cases")
        r.refusals = Counter()
        for m in _REFUSAL.finditer(text):
            r.refusals[next(g for g in m.groups() if g)] += 1
        if self.health is not None:  # the guard's exact counts (its log summarises floods)
            for kind, count in self.health().get("checks", {}).get("listener", {}).get("refused", {}).items():
                r.refusals[kind] = count

    def run(self, cases: int | None = None, seconds: float | None = None, batch: int = 200) -> Report:
        r = self.report
        self.echo()
        time.sleep(0.5)
        base_threads, base_fds = wire.threads(self.pid), wire.open_fds(self.pid)
        r.base_rss_mb = wire.rss_mb(self.pid)
        started = time.monotonic()
        strategy = case_strategy(self.ae_title)

        end_by = float("inf") if seconds is None else started + seconds
        generated: list[Case] = []

        def done() -> bool:
            if cases is not None and r.cases >= cases:
                return True
            return seconds is not None and time.monotonic() - started >= seconds

        while not done():
            size = batch if cases is None else min(batch, cases - r.cases)

            @seed(r.batches)
            @settings(max_examples=size, database=None, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def one(case: Case) -> None:
                generated.append(case)

            generated.clear()
            one()
            # Parallel senders from distinct loopback hosts, so the per-host cap refuses none of them.
            sources = [f"127.0.3.{1 + i % (2 * self.parallel)}" for i in range(len(generated))]
            with ThreadPoolExecutor(self.parallel) as pool:
                results = pool.map(self._timed, generated, [end_by] * len(generated), sources)
                for case, (outcome, took) in zip(generated, results, strict=True):
                    if outcome is None:
                        continue
                    r.outcomes[outcome] += 1
                    r.outcome_seconds[outcome] += took
                    r.by_kind[case.kind] += 1
                    r.cases += 1
            r.batches += 1
            if r.batches == 1:
                # Worker pools (the fsync pool of ingest, up to 8 threads) start with the first
                # stores: the first batch is held to that bound, the rest to its settled level.
                self._check(base_threads + 8, base_fds)
                base_threads = min(wire.threads(self.pid), base_threads + 8)
            else:
                self._check(base_threads, base_fds)
            r.seconds = time.monotonic() - started
        return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases (default 10000)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--batch", type=int, default=200, help="cases between health checks")
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the node's files (and log) here")
    args = parser.parse_args()
    if args.cases is None and args.seconds is None:
        args.cases = 10000
    from tests.peers import NodeProcess

    with tempfile.TemporaryDirectory(prefix="iodine-fuzz-") as tmp:
        limits = {"artim_timeout_s": 5, "network_timeout_s": 5}
        node = NodeProcess(args.workdir or Path(tmp) / "node", {"node": {"limits": limits}})
        node.start()
        try:
            assert node.proc is not None
            run = FuzzRun(node.port, node.ae_title, node.proc.pid, node.log_path,
                          health=lambda: json.loads(node.http_get("/healthz")[1]))
            report = run.run(cases=args.cases, seconds=args.seconds, batch=args.batch)
            report.peak_rss_mb = max(report.peak_rss_mb, wire.peak_rss_mb(node.proc.pid))
        finally:
            node.stop()
    out = report.as_dict()
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if report.failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
