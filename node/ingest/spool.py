"""The durable spool: an instance is safe only once its bytes and its directory entry are on disk.

Layout under storage.root:  spool/tmp/ (partial files), studies/<Study>/<Series>/<SOP>.dcm,
quarantine/ (what could not be taken, each with a .reason text). Folder and file names come only
from UIDs that passed `is_valid_uid` (digits and dots), never from other DICOM values.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from node.uids import is_valid_uid


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry list changed."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "spool" / "tmp"
        self.studies = root / "studies"
        self.quarantine_dir = root / "quarantine"
        for d in (self.tmp, self.studies, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_valid_uid(uid):
                raise ValueError(f"refusing to build a path from an invalid UID {uid!r}")
        return self.studies / study_uid / series_uid / f"{sop_uid}.dcm"

    def new_temp_path(self, suffix: str = ".dcm") -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    def clear_temp(self) -> int:
        """Remove partial files left by a crash; returns how many."""
        n = 0
        for p in self.tmp.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        return n

    def commit(self, temp: Path, final: Path, synced: bool = False) -> bool:
        """Make `temp` durable at `final`. False when `final` already exists (the instance was
        stored before: idempotent). `temp` itself is left for the caller to remove; `synced` says
        the caller already fsynced it."""
        if not synced:
            fsync_file(temp)
        _makedirs_durable(final.parent)
        try:
            os.link(temp, final)  # atomic create-if-absent: concurrent duplicates cannot clobber
        except FileExistsError:
            return False
        except OSError:
            # Another file system (e.g. a temp file outside the spool): copy, fsync, then link.
            staged = self.new_temp_path()
            shutil.copyfile(temp, staged)
            try:
                fsync_file(staged)
                os.link(staged, final)
            except FileExistsError:
                return False
            finally:
                staged.unlink(missing_ok=True)
        fsync_dir(final.parent)
        return True

    def quarantine(self, source: Path, reason: str) -> Path:
        """Move a file that cannot be taken aside, with a `.reason` text beside it."""
        name = _SAFE_NAME.sub("_", source.name)[:80] or "file"
        target = self.quarantine_dir / f"{uuid.uuid4().hex[:12]}_{name}"
        shutil.move(str(source), target)
        target.with_name(target.name + ".reason").write_text(reason + "\n", encoding="utf-8")
        fsync_dir(self.quarantine_dir)
        return target
