"""Shared fixtures: real peers (required in CI) and phantom studies made once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from node.phantom import PhantomOptions, PhantomResult, generate_phantom

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATA = Path(__file__).resolve().parent / "data"  # test fixtures kept in the repo: origin and licence in SOURCE.md


def data_file(*parts: str) -> Path:
    """A file under tests/data. Missing: a failure everywhere (it ships with the repo), never a skip."""
    path = DATA.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"test fixture {path} is missing: it belongs to the repository (see tests/data/SOURCE.md)",
                    pytrace=False)
    return path


_running: dict[str, pytest.Item] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running["item"] = item


def require_peer_marker(what: str) -> None:
    """Fail a test that uses an external program or a node/Orthanc process without @pytest.mark.peer:
    `pytest -m "not peer"` must stay the fast unit subset."""
    item = _running.get("item")
    if item is not None and item.get_closest_marker("peer") is None:
        pytest.fail(f"{item.nodeid} uses {what} but is not marked @pytest.mark.peer (see pyproject.toml markers)",
                    pytrace=False)


def require_tool(name: str) -> str:
    """Path of a peer program. Missing: a failure in CI, a skip on a developer machine."""
    require_peer_marker(f"the peer program {name!r}")
    path = shutil.which(name)
    if path is None:
        message = f"peer program {name!r} is not installed (make test installs it when run as root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines dciodvfy reports for one file (its exit code says nothing)."""
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    return [f"{path.name}: {line}" for line in lines if line.startswith(("Error", "Abort"))]


@pytest.fixture(scope="session")
def phantom_factory(tmp_path_factory: pytest.TempPathFactory):
    """Generate (once per session) a phantom for given options."""
    cache: dict[PhantomOptions, PhantomResult] = {}

    def make(**kwargs: object) -> PhantomResult:
        options = PhantomOptions(**kwargs)  # type: ignore[arg-type]
        if options not in cache:
            out = tmp_path_factory.mktemp("phantom")
            cache[options] = generate_phantom(out, options)
        return cache[options]

    return make


@pytest.fixture
def node(tmp_path: Path):
    """Start `iodine-node serve` processes (config overrides, extra env); all stopped afterwards."""
    from tests.peers import NodeProcess

    nodes: list[NodeProcess] = []

    def make(config: dict | None = None, env: dict | None = None) -> NodeProcess:
        n = NodeProcess(tmp_path / f"node{len(nodes)}", config, env)
        nodes.append(n)
        return n.start()

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def peers(tmp_path: Path):
    """(make_orthanc, make_node): Orthanc and node processes created but not started (tests
    configure them against each other first); all stopped afterwards."""
    from tests.peers import NodeProcess, Orthanc

    started: list = []

    def orthanc(**kw) -> Orthanc:
        o = Orthanc(tmp_path / f"orthanc{len(started)}", **kw)
        started.append(o)
        return o

    def node(config: dict | None = None, env: dict | None = None) -> NodeProcess:
        n = NodeProcess(tmp_path / f"node{len(started)}", config, env)
        started.append(n)
        return n

    yield orthanc, node
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (tests/pg.py); tests marked peer."""
    from tests.pg import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """DSN of a fresh, empty database on the session's PostgreSQL server."""
    from tests.pg import create_database

    return create_database(pg_server)
