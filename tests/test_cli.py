"""The `iodine-node` console script as people type it: global options before or after the subcommand."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.peers import free_port, wait_for


def console_script() -> Path:
    """The installed `iodine-node` entry point beside this interpreter (`pip install -e .` puts it there)."""
    script = Path(sys.executable).parent / "iodine-node"
    if not script.is_file():
        pytest.fail(f"{script} is missing: install the project into this interpreter's environment (make venv)")
    return script


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IODINE_NODE_CONFIG"}
    return subprocess.run([str(console_script()), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120, check=False)


def write_config(tmp_path: Path, **sections: dict) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


@pytest.mark.parametrize("order", ["after", "before"])
def test_check_config_reads_config_in_either_position(tmp_path: Path, order: str) -> None:
    config = write_config(tmp_path, node={"port": 4321, "ae_title": "SITE_AE"})
    args = ["check-config", "--config", str(config)] if order == "after" else ["--config", str(config), "check-config"]
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(out.stdout)
    assert effective["node"]["port"] == 4321 and effective["node"]["ae_title"] == "SITE_AE"


@pytest.mark.parametrize("order", ["after", "before"])
def test_jobs_uses_the_storage_root_of_config_in_either_position(tmp_path: Path, order: str) -> None:
    root = tmp_path / f"var-{order}"
    config = write_config(tmp_path, storage={"root": str(root)})
    args = ["jobs", "--config", str(config)] if order == "after" else ["--config", str(config), "jobs"]
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["id", "kind", "state"]
    assert (root / "index.sqlite3").is_file()  # the index was opened where the configuration says
    assert not (tmp_path / "var").exists()  # not at the built-in default


def test_invalid_config_after_the_subcommand_is_reported_not_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path, node={"port": 70000})
    for args in (["serve", "--config", str(config)], ["--config", str(config), "serve"]):
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 2
        assert f"{config}: invalid configuration" in out.stderr and "node.port" in out.stderr


def test_option_after_the_subcommand_wins_over_the_one_before(tmp_path: Path) -> None:
    first = write_config(tmp_path, node={"port": 1111})
    second = tmp_path / "other.yaml"
    second.write_text("node: {port: 2222}\n", encoding="utf-8")
    out = run("--config", str(first), "check-config", "--config", str(second), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["node"]["port"] == 2222


@pytest.mark.peer
@pytest.mark.parametrize("order", ["after", "before"])
def test_serve_takes_config_and_log_format_in_either_position(tmp_path: Path, order: str) -> None:
    port = free_port()
    config = write_config(tmp_path, node={"bind": "127.0.0.1", "port": port}, http={"enabled": False},
                          storage={"root": str(tmp_path / "var")})
    opts = ["--config", str(config), "--log-format", "json"]
    args = ["serve", *opts] if order == "after" else [*opts, "serve"]
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "IODINE_NODE_CONFIG"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(console_script()), *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env=env, start_new_session=True)
    try:
        text = wait_for(lambda: (lambda t: t if "listening on" in t or proc.poll() is not None else None)(
            log_path.read_text(encoding="utf-8", errors="replace")), 60, "the node to listen")
        assert proc.poll() is None, text
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
        assert any(f"127.0.0.1:{port}" in e["message"] for e in entries if "listening on" in e["message"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftover job workers of this node
