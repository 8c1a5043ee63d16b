"""Operations: status endpoint under load, disk floor, audit trail, retention, packaging files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from node.retention import apply_retention
from node.store import InstanceRecord, open_store
from tests.peers import NodeProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(phantom_factory):
    return phantom_factory(seed=31, noise=0.15)  # made once per session (tests/test_durability.py's too)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


@pytest.mark.peer
def test_health_metrics_and_jobs_follow_a_push(node, study) -> None:
    n = node({"storage": {"min_free_gb": 0.0}})
    status, body = n.http_get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert set(json.loads(body)["checks"]) == {"listener", "database", "disk", "workers"}
    before = n.http_get("/metrics")[1]
    assert metric(before, "iodine_instances_received_total") == 0
    assert n.storescu(study.files).returncode == 0
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "the job")
    after = wait_for(lambda: (lambda t: t if metric(t, "iodine_processing_seconds_count") == 1 else None)(
        n.http_get("/metrics")[1]), 10, "the processing histogram")
    assert metric(after, "iodine_instances_received_total") == len(study.files)
    stored_bytes = n.db("SELECT SUM(size_bytes) FROM instances")[0][0]
    assert metric(after, "iodine_bytes_received_total") == stored_bytes
    assert abs(stored_bytes - sum(f.stat().st_size for f in study.files)) < 100 * len(study.files)  # meta differs
    assert metric(after, "iodine_associations_accepted_total") == 1
    assert 'iodine_jobs{state="done"} 1' in after and "iodine_disk_free_bytes" in after
    assert metric(after, "iodine_outbox_depth") == 0
    status, body = n.http_get("/jobs")
    jobs = json.loads(body)
    assert status == 200 and jobs[0]["state"] == "done"
    assert jobs[0]["study_instance_uid"] == study.truth["study_instance_uid"]
    assert "PHANTOM" not in body  # no patient names
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{n.http_port}/jobs", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 405  # read-only


@pytest.mark.peer
def test_disk_floor_refuses_new_instances(node, study) -> None:
    n = node({"storage": {"min_free_gb": 1e9}})
    result = n.storescu(study.files[:3])
    assert result.returncode != 0 or "0xa700" in (result.stdout + result.stderr).lower()
    assert n.instance_count() == 0
    wait_for(lambda: "below storage.min_free_gb" in n.log(), 10, "the refusal in the log")
    status, body = n.http_get("/healthz")
    assert status == 503 and json.loads(body)["checks"]["disk"]["ok"] is False
    refused = n.log().count("refused instance")  # storescu stops at the first failure status
    assert refused >= 1 and metric(n.http_get("/metrics")[1], "iodine_instances_refused_total") == refused


@pytest.mark.peer
def test_audit_trail(node) -> None:
    n = node({"ingest": {"allowed_callers": [{"ae_title": "SCANNER1"}]}, "storage": {"min_free_gb": 0.0}})
    assert n.echoscu(calling_ae="SCANNER1").returncode == 0
    assert n.echoscu(calling_ae="INTRUDER").returncode != 0
    audit = n.root / "audit.jsonl"

    def events() -> list[dict]:
        return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []

    wait_for(lambda: any(e["event"] == "association-rejected" for e in events()), 10, "audit lines")
    found = events()
    assert found[0]["event"] == "node-started" and found[0]["config"].endswith("node.yaml")
    accepted = next(e for e in found if e["event"] == "association-accepted")
    assert accepted["calling_ae"] == "SCANNER1" and accepted["peer"] == "127.0.0.1"
    rejected = next(e for e in found if e["event"] == "association-rejected")
    assert rejected["calling_ae"] == "INTRUDER" and rejected["outcome"] == "failure"
    assert n.cli("jobs", "retry", "7").returncode == 1  # no such job, but the attempt is audited
    assert events()[-1]["event"] == "job-retried" and events()[-1]["job"] == 7


def _record(study: str, sop: str) -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.128", series_uid=study + ".1",
                          study_uid=study, transfer_syntax_uid="1.2.840.10008.1.2.1",
                          path=f"studies/{study}/{study}.1/{sop}.dcm", size_bytes=1, modality="PT")


def test_retention_deletes_old_data_but_nothing_with_pending_work(tmp_path: Path) -> None:
    index = open_store(tmp_path)
    old, busy, fresh = "1.2.3", "1.2.4", "1.2.5"
    long_ago = time.time() - 40 * 86400
    for uid in (old, busy, fresh):
        rec = _record(uid, uid + ".1.1")
        (tmp_path / rec.path).parent.mkdir(parents=True)
        (tmp_path / rec.path).write_bytes(b"x")
        index.studies.add_instance(rec, source="test", calling_ae="T", now=long_ago if uid != fresh else None)
        (tmp_path / "results" / uid).mkdir(parents=True)
        (tmp_path / "results" / uid / "results.json").write_text("{}")
    index.jobs.queue("quantify", busy, {}, [], index.studies.study_info(busy).last_received)
    for uid in (old, busy):
        os.utime(tmp_path / "results" / uid, (long_ago, long_ago))
    report = apply_retention(index, tmp_path, inputs_days=30, results_days=30)
    assert (report.studies_deleted, report.instances_deleted, report.results_deleted) == (1, 1, 1)
    assert report.kept_busy == 2
    assert not (tmp_path / "studies" / old).exists() and not (tmp_path / "results" / old).exists()
    assert (tmp_path / "studies" / busy).exists() and (tmp_path / "results" / busy).exists()
    assert (tmp_path / "studies" / fresh).exists() and (tmp_path / "results" / fresh).exists()
    assert index.studies.study_instance_paths(old) == []


@pytest.mark.peer
def test_json_log_format(tmp_path: Path) -> None:
    n = NodeProcess(tmp_path / "n", {"logging": {"format": "json"}})
    try:
        n.start()
        first = n.log().splitlines()[0]
        entry = json.loads(first)
        assert {"time", "level", "logger", "message"} <= set(entry)
    finally:
        n.stop()


@pytest.mark.peer
def test_systemd_unit_verifies() -> None:
    unit = ROOT / "systemd" / "iodine-node.service"
    text = unit.read_text()
    for directive in ("ProtectSystem=strict", "ReadWritePaths=/var/lib/iodine-node", "NoNewPrivileges=true",
                      "PrivateTmp=true", "Restart=on-failure", "User=iodine"):
        assert directive in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available on this machine (containers run without systemd)")
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "iodine-node.service" in line and "Command /opt/iodine-node" not in line]
    assert problems == [], problems


def test_docker_files_parse_and_reference_existing_files(tmp_path: Path) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    instructions = [line.split()[0] for line in dockerfile if line.strip() and not line.lstrip().startswith("#")
                    and not line.startswith(" ")]
    known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert set(instructions) <= known and instructions[0] == "FROM"
    assert "USER iodine" in dockerfile and any(line.startswith("HEALTHCHECK") for line in dockerfile)
    for line in dockerfile:
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert {"orthanc", "iodine-node"} <= set(compose["services"])
    mount = compose["services"]["iodine-node"]["volumes"][0].split(":")[0]
    assert (ROOT / "docker" / mount).resolve().exists()
    from node.config import load_config

    for cfg in ("docker/node.docker.yaml", "config/node.compose.yaml"):
        load_config(ROOT / cfg)  # valid configurations
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, check=False)
    assert wheel.returncode == 0, wheel.stderr
    assert list(tmp_path.glob("iodine_node-*.whl"))


def test_scale_compose_example_is_consistent() -> None:
    """docker/compose.scale.yaml: two nodes on one PostgreSQL and one shared volume, Orthanc as PACS."""
    from node.config import load_config

    compose = yaml.safe_load((ROOT / "docker" / "compose.scale.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "orthanc", "node-a", "node-b"} <= set(services)
    for name in ("node-a", "node-b"):
        volumes = services[name]["volumes"]
        assert "iodine-shared:/var/lib/iodine-node" in volumes  # the one storage root
        assert (ROOT / "docker" / volumes[0].split(":")[0]).resolve() == ROOT / "config" / "node.scale.yaml"
        assert services[name]["hostname"] == name and "iodine-dsn" in services[name]["secrets"]
    config = load_config(ROOT / "config" / "node.scale.yaml")
    assert config.index.backend == "postgresql" and str(config.index.dsn_file) == "/run/secrets/iodine-dsn"
    assert str(config.storage.root) == "/var/lib/iodine-node"
