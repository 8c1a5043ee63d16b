"""Durable file-system steps, the one implementation every stage uses (spool, results, audit, folder export).

POSIX leaves a file's data and its directory entry to be written back later: after a crash a renamed
file may be missing or empty unless the file was fsynced before the rename and its folder after it
(fsync(2), rename(2) in POSIX.1-2017; the ext4/XFS "data=ordered" notes say the same). So a durable
write is: write a temporary name in the target folder, fsync it, rename it over the target (atomic
within one file system), fsync the folder. Nothing here knows about DICOM or the node.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (created, renamed, removed names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make the bytes of file `path` durable (its name needs fsync_dir of its folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file, then every folder bottom-up, so the folder's entries are durable too."""
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def makedirs_durable(path: Path) -> None:
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


def replace_durable(source: Path, target: Path) -> None:
    """Rename `source` over `target` atomically (same file system) and make the new name durable; the
    folder `source` left is synced too when it differs."""
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def copy_durable(source: Path, target: Path) -> None:
    """`target` becomes a durable copy of `source`, all or nothing: copied to a `.partial` name
    beside it, fsynced, renamed into place, folder fsynced. A reader never sees a torn file."""
    makedirs_durable(target.parent)
    tmp = target.with_name(target.name + ".partial")
    try:
        shutil.copyfile(source, tmp)
        fsync_file(tmp)
        replace_durable(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_durable(target: Path, data: bytes) -> None:
    """`target` holds `data` durably, all or nothing (as copy_durable)."""
    makedirs_durable(target.parent)
    tmp = target.with_name(target.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        replace_durable(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
