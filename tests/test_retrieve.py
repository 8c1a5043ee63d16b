"""The retrieve stage between completion and the quantify job (node/retrieve.py), in-process: the
monitor holds a complete study's job back until the stage has asked the PACS; a PACS that is down is
logged and the job is queued without priors; a retrieved prior never asks the PACS in turn.
Retrieval from a real Orthanc by C-MOVE and C-GET: tests/test_compare_job.py."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from node.compare.settings import PriorQuery
from node.ingest.ingestor import Ingestor
from node.ingest.spool import Spool
from node.monitor import CompletionMonitor
from node.retrieve import RetrieveStage, mark_retrieved, was_retrieved
from node.store import open_store
from tests.peers import free_port, wait_for


@pytest.fixture
def stored(tmp_path: Path, phantom_factory):
    """A small PET/CT study ingested into a fresh storage root: (root, index, spool, ingestor, StudyUID)."""
    study = phantom_factory(seed=3, noise=0.0)
    root = tmp_path / "var"
    index, spool = open_store(root), Spool(root)
    ingestor = Ingestor(spool, index, 2**40)
    for path in study.files:
        temp = spool.new_temp_path()
        shutil.copyfile(path, temp)
        ingestor.ingest(temp, source="test")
        temp.unlink(missing_ok=True)
    yield root, index, spool, ingestor, study.truth["study_instance_uid"]
    index.close()


def test_pacs_down_is_logged_and_the_job_is_queued_without_priors(stored, caplog: pytest.LogCaptureFixture) -> None:
    root, index, spool, ingestor, uid = stored
    nobody = PriorQuery("PACS", "127.0.0.1", free_port(), "IODINE_NODE", timeout_s=5)  # nothing listens there
    stage = RetrieveStage(nobody, 90.0, index, root, spool, ingestor)
    monitor = CompletionMonitor(index, stable_after_s=1.0, force_after_s=2.0, poll_s=1.0)
    monitor.gate = stage.ready
    later = time.time() + 60  # the study is stable by then
    with caplog.at_level(logging.INFO, logger="node.retrieve"):
        assert monitor.check_once(later) == []  # complete, but its priors are asked for first
        assert index.jobs.recent() == []
        stage.start()
        try:
            queued = wait_for(lambda: monitor.check_once(later), 60, "the job after the failed prior query")
        finally:
            stage.stop()
    assert len(queued) == 1 and [j.study_uid for j in index.jobs.recent()] == [uid]
    assert f"study {uid}: asking PACS for earlier studies of the patient" in caplog.text
    assert "prior query" in caplog.text and "not established" in caplog.text
    assert monitor.check_once(later) == []  # one job per study version, the retrieval is not repeated
    assert caplog.text.count("asking PACS for earlier studies") == 1


def test_a_retrieved_prior_does_not_ask_the_pacs_in_turn(stored) -> None:
    root, index, spool, ingestor, uid = stored
    stage = RetrieveStage(PriorQuery("PACS", "127.0.0.1", free_port(), "IODINE_NODE"), 90.0, index, root, spool,
                          ingestor)  # never started: a study that must wait would wait for ever
    assert not stage.ready(uid, 1.0)  # a pushed study waits for its retrieval
    other = RetrieveStage(PriorQuery("PACS", "127.0.0.1", free_port(), "IODINE_NODE"), 90.0, index, root, spool,
                          ingestor)
    mark_retrieved(root, uid)
    assert was_retrieved(root, uid) and (root / "retrieved-priors" / uid).is_file()
    assert other.ready(uid, 1.0)  # came as a prior: its job is queued at once
    assert not was_retrieved(root, "1.2.3/../x")  # never a path from an invalid UID


def test_without_a_pacs_every_complete_study_is_queued_at_once(stored) -> None:
    root, index, spool, ingestor, uid = stored
    monitor = CompletionMonitor(index, stable_after_s=1.0, force_after_s=2.0, poll_s=1.0)
    monitor.gate = RetrieveStage(None, 90.0, index, root, spool, ingestor).ready
    assert len(monitor.check_once(time.time() + 60)) == 1
    assert [j.study_uid for j in index.jobs.recent()] == [uid]
