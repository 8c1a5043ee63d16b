"""The durable spool: an instance is safe only once its bytes and its directory entry are on disk.

Layout under storage.root:  spool/tmp/ (partial files), studies/<Study>/<Series>/<SOP>.dcm,
quarantine/ (what could not be taken, each with a .reason text). Folder and file names come only
from UIDs that passed `is_valid_uid` (digits and dots), never from other DICOM values.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar

from node.crashpoints import crash_point
from node.fsutil import fsync_dir, fsync_file, makedirs_durable
from node.uids import is_valid_uid

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

    def clear_temp(self, older_than_s: float = 0.0) -> int:
        """Remove partial files left by a crash; returns how many. On a storage root shared by several
        nodes only files untouched for `older_than_s` go: the others may be another node's transfers."""
        n = 0
        cutoff = time.time() - older_than_s
        for p in self.tmp.iterdir():
            try:
                if p.is_file() and (older_than_s <= 0 or p.stat().st_mtime < cutoff):
                    p.unlink(missing_ok=True)
                    n += 1
            except FileNotFoundError:  # another node finished or removed it meanwhile
                continue
        return n

    def commit(self, temp: Path, final: Path, synced: bool = False) -> bool:
        """Make `temp` durable at `final`. False when `final` already exists (the instance was
        stored before: idempotent). `temp` itself is left for the caller to remove; `synced` says
        the caller already fsynced it."""
        if not synced:
            fsync_file(temp)
        makedirs_durable(final.parent)
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


# -- receiving into the spool ------------------------------------------------------------------

_DISK_ERRORS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS}


def is_disk_error(exc: BaseException) -> bool:
    """Out of space, quota or an I/O error: the storage's fault, not the instance's (answer 0xA700)."""
    return isinstance(exc, OSError) and exc.errno in _DISK_ERRORS


class ReceiveFile:
    """The file pynetdicom streams one C-STORE into (it calls write, file.flush and close).

    pynetdicom writes from its network thread; an OSError there (disk full, I/O error) would
    abort the whole association. Instead the first error is kept, the partial file is removed at
    once (freeing its space), the rest of the data set is read and dropped, and the C-STORE
    handler answers 0xA700 (out of resources: retry later) and the association goes on. Files
    of an association that ends before its C-STORE completed are removed (`discard_open`)."""

    _open: ClassVar[dict[str, ReceiveFile]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, directory: Path) -> None:
        self.name = str(directory / f"{uuid.uuid4().hex}.dcm")
        self.error: OSError | None = None
        self.owner = threading.current_thread()
        self._fh = open(self.name, "wb")  # noqa: SIM115 - closed by pynetdicom through close()
        self.file = self  # pynetdicom calls `.file.flush()`
        with ReceiveFile._lock:
            ReceiveFile._open[self.name] = self

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                crash_point("receive-write")
                return self._fh.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        with contextlib.suppress(OSError):
            self._fh.close()
        Path(self.name).unlink(missing_ok=True)

    def close(self) -> None:
        with ReceiveFile._lock:
            ReceiveFile._open.pop(self.name, None)
        with contextlib.suppress(OSError):
            self._fh.close()

    @classmethod
    def error_of(cls, path: Path | str) -> OSError | None:
        with cls._lock:
            f = cls._open.get(str(path))
        return f.error if f is not None else None

    @classmethod
    def discard_open(cls, owner: threading.Thread) -> int:
        """Remove the partial files `owner` (an association's network thread) was still writing."""
        with cls._lock:
            mine = [f for f in cls._open.values() if f.owner is owner]
        for f in mine:
            f.close()
            Path(f.name).unlink(missing_ok=True)
        return len(mine)

