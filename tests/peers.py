"""Real processes for tests: the node itself (`iodine-node serve`), dcmtk tools, Orthanc.

Every dcmtk tool and Orthanc runs with TCP_NODELAY=1 (Nagle, RFC 896: docs/science.md).
Orthanc 1.10 has no bind-address option: it is run with RemoteAccessAllowed false and only the
listed modalities (host-checked) allowed, and is only ever addressed on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_peer_marker, require_tool

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


_PORTS = random.Random(os.getpid())


def _port_range() -> tuple[int, int]:
    """20000-32000, split into disjoint slices when pytest-xdist runs workers in parallel
    (PYTEST_XDIST_WORKER gw0, gw1, ...): two workers never draw the same port, even in the moment
    between drawing it and the server binding it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0):
        return 20000, 32000
    width = 12000 // int(count)
    start = 20000 + int(worker[2:]) % int(count) * width
    return start, start + width


def free_port() -> int:
    """A loopback port free now, taken below Linux's ephemeral range (32768-60999): a port the kernel
    hands out for port 0 is also what outgoing connections use, so a server started a moment later
    could find it taken ("Address already in use")."""
    low, high = _port_range()
    for _ in range(200):
        port = _PORTS.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def run_dcmtk(tool: str, args: Sequence[str], timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    exe = require_tool(tool)
    result = subprocess.run([exe, *args], capture_output=True, text=True, env=PEER_ENV, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class NodeProcess:
    """`iodine-node serve` in its own process group, on a free loopback port."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 ae_title: str = "IODINE_NODE") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.ae_title = ae_title
        self.root = workdir / "var"
        base: dict[str, Any] = {
            # One listener process unless a test asks for more: guard caps and crash hooks are per process.
            "node": {"ae_title": ae_title, "bind": "127.0.0.1", "port": self.port, "listener_processes": 1},
            "http": {"bind": "127.0.0.1", "port": self.http_port},
            "storage": {"root": str(self.root)},
            "ingest": {"stable_after_s": 1.0, "force_after_s": 120, "poll_s": 0.2},
        }
        for section, values in (config or {}).items():
            if isinstance(values, dict):
                base.setdefault(section, {}).update(values)
            else:
                base[section] = values
        self.config_path = workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(base), encoding="utf-8")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "node.log"
        self._log_offset = 0

    def start(self, timeout: float = 30, may_exit: bool = False) -> NodeProcess:
        """Start and wait until it listens; may_exit: the test makes it die early (a crash hook)."""
        require_peer_marker("a node process")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                     start_new_session=True)
        log.close()
        wait_for(lambda: "listening on" in self.log() or self.proc.poll() is not None, timeout, "the node to listen")
        if self.proc.poll() is not None and not may_exit:
            raise AssertionError(f"node exited at start:\n{self.log()}")
        return self

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self._log_offset:].decode("utf-8", "replace")

    def full_log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """Crash the node and its workers at once (SIGKILL to the whole process group)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftover workers

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "node", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, cwd=self.workdir, timeout=60, check=False)

    def db(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.root / 'index.sqlite3'}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def instance_count(self, study_uid: str | None = None) -> int:
        if study_uid is None:
            return int(self.db("SELECT COUNT(*) FROM instances")[0][0])
        return int(self.db("SELECT COUNT(*) FROM instances WHERE study_uid=?", (study_uid,))[0][0])

    def jobs(self) -> list[sqlite3.Row]:
        return self.db("SELECT * FROM jobs ORDER BY id")

    def storescu(self, paths: Sequence[str | Path], *extra: str, calling_ae: str = "STORESCU",
                 timeout: float = 300) -> subprocess.CompletedProcess:
        args = ["-aet", calling_ae, "-aec", self.ae_title, *extra, "127.0.0.1", str(self.port)]
        return run_dcmtk("storescu", [*args[:-2], "+sd", "+r", *args[-2:], *map(str, paths)], timeout=timeout)

    def echoscu(self, *extra: str, calling_ae: str = "ECHOSCU",
                called_ae: str | None = None) -> subprocess.CompletedProcess:
        return run_dcmtk("echoscu", ["-aet", calling_ae, "-aec", called_ae or self.ae_title, *extra,
                                     "127.0.0.1", str(self.port)], timeout=60)


def short_pet_series(pet_files: Sequence[Path], out: Path, slices: int = 40) -> list[Path]:
    """The first `slices` PET slices (by ImageIndex) written to `out` as a complete series of their own
    (NumberOfSlices set, PS3.3 C.8.9.4.1.9): a fraction of the processing time, for tests that run a
    job more than once."""
    import pydicom

    by_index = sorted((int(pydicom.dcmread(f, stop_before_pixels=True).ImageIndex), f) for f in pet_files)
    files = []
    for _, f in by_index[:slices]:
        ds = pydicom.dcmread(f)
        ds.NumberOfSlices = slices
        ds.save_as(out / f.name)
        files.append(out / f.name)
    return files


def pid_children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


class Orthanc:
    """A real Orthanc (Debian package) playing the hospital PACS."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                 plugins: Sequence[str] = (), extra: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = aet
        config = {
            "Name": "iodine-node-test-pacs",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities or {},
            "Plugins": list(plugins),
            "SyncStorageArea": True,
            "DicomCheckCalledAet": True,
            **(extra or {}),
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30) -> Orthanc:
        require_peer_marker("an Orthanc process")
        exe = require_tool("Orthanc")
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen([exe, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     env=PEER_ENV, start_new_session=True)
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited:\n{(self.workdir / 'orthanc.log').read_text()[-3000:]}")
            try:
                self.get("/system")
                return True
            except OSError:
                return False

        wait_for(up, timeout, "Orthanc's REST API")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.status, r.read()

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance Orthanc holds in that study, with its SOP Class and Instance UIDs."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
        out = []
        for orthanc_id in found:
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags")
            out.append({"id": orthanc_id, "SOPClassUID": tags.get("SOPClassUID"),
                        "SOPInstanceUID": tags.get("SOPInstanceUID"), "Modality": tags.get("Modality")})
        return out

    def post(self, path: str, body: bytes | dict[str, Any] | list[Any] | str,
             content_type: str = "application/json") -> Any:
        if isinstance(body, bytes):
            data = body
        else:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=300) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def put(self, path: str, body: dict[str, Any]) -> None:
        """REST PUT of a JSON body (e.g. /modalities/NAME: add or change a DICOM modality)."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()


class StoreSCP:
    """dcmtk storescp as a result receiver that keeps every copy it receives (+uf: unique file
    names), so a test can count how often each object was delivered (Orthanc keeps one per UID)."""

    def __init__(self, workdir: Path, aet: str = "RECEIVER") -> None:
        self.workdir = workdir
        self.dir = workdir / "received"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> StoreSCP:
        exe = require_tool("storescp")
        log = open(self.workdir / "storescp.log", "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen([exe, "-v", "-aet", self.aet, "-od", str(self.dir), "+uf", "+xa", "-pm",
                                      str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=PEER_ENV,
                                     start_new_session=True)
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"storescp exited:\n{(self.workdir / 'storescp.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(up, timeout, "storescp to listen")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def received(self) -> list[str]:
        """SOP Instance UID of every copy received so far (one entry per C-STORE)."""
        import pydicom

        out = []
        for f in sorted(self.dir.iterdir()):
            try:
                out.append(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
            except Exception:  # noqa: BLE001 - a file still being written counts once complete
                continue
        return out

    def destination(self, name: str = "receiver") -> dict[str, Any]:
        return {"name": name, "ae_title": self.aet, "host": "127.0.0.1", "port": self.port}
