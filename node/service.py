"""`iodine-node serve`: wire the stages together and keep them running until told to stop."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from node.config import NodeConfig
from node.export.sender import Sender
from node.index import Index
from node.ingest.ingestor import Ingestor
from node.ingest.listener import Listener
from node.ingest.spool import Spool
from node.ingest.watch import WatchFolder
from node.jobs import JobRunner
from node.monitor import CompletionMonitor
from node.quant.study import settings_from_config

log = logging.getLogger(__name__)


class NodeService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.root = Path(config.storage.root).resolve()
        self.spool = Spool(self.root)
        self.index = Index(self.root)
        self.ingestor = Ingestor(self.spool, self.index, int(config.ingest.max_instance_mb * 1e6))
        self.listener = Listener(config, self.ingestor, self.spool.tmp)
        self.monitor = CompletionMonitor(self.index, config.ingest.stable_after_s, config.ingest.force_after_s,
                                         config.ingest.poll_s)
        self.runner = JobRunner(self.index, self.root, config.processing.workers,
                                settings_from_config(config.quantification), config.processing.max_memory_mb,
                                destinations=config.destinations)
        self.sender = Sender(self.index, self.root, config)
        self.watch = (WatchFolder(Path(config.ingest.watch_dir), self.spool, self.ingestor,
                                  config.ingest.watch_settle_s) if config.ingest.watch_dir else None)

    def recover(self) -> None:
        """After a crash: drop partial files, give interrupted jobs back to the queue. Stability
        timers need no re-arming: they are computed from the index's receive times."""
        removed = self.spool.clear_temp()
        requeued = self.index.recover_after_restart()
        reindexed = self.ingestor.reconcile()
        if removed or requeued or reindexed:
            log.warning("recovered after restart: %d partial file(s) removed, %d interrupted job(s) queued again, "
                        "%d stored instance(s) re-indexed", removed, requeued, reindexed)

    def start(self) -> None:
        self.recover()
        self.runner.start()
        self.sender.start()
        self.monitor.start()
        if self.watch:
            self.watch.start()
        self.listener.start()
        log.info("storage root %s; %d worker(s)", self.root, self.config.processing.workers)

    def stop(self) -> None:
        self.listener.stop()
        if self.watch:
            self.watch.stop()
        self.monitor.stop()
        self.runner.stop()
        self.sender.stop()
        self.index.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()
