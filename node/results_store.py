"""Result folders published crash-safely: written to a staging folder, fsynced, renamed, pointed at.

Layout under storage.root:
  outputs/.staging/<name>/          being written by a worker (removed at start: never published)
  outputs/<StudyUID>/<version>/     one published version; never changed once renamed into place
  results/<StudyUID>                symlink to ../outputs/<StudyUID>/<version>: the current results

A version is renamed into place only after every file and folder in it is fsynced, and the
`results/<StudyUID>` link is replaced atomically (a new link renamed over the old one), so a reader
sees the old results or the new ones, never a torn or half-swapped folder. The outbox points at
the version folder, not at the link: a pending send finds its file even while a newer job is being
published (a link swap or a prune never touches a version an outbox row still needs).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from node.fsutil import fsync_dir, fsync_tree
from node.uids import is_valid_uid

OUTPUTS, RESULTS, STAGING = "outputs", "results", ".staging"


def _check(study_uid: str) -> None:
    if not is_valid_uid(study_uid):
        raise ValueError(f"refusing to build a path from an invalid StudyInstanceUID {study_uid!r}")


def new_staging(root: Path, study_uid: str) -> Path:
    """A fresh, empty staging folder for one study's results (unique per process and call)."""
    _check(study_uid)
    path = root / OUTPUTS / STAGING / f"{study_uid}-{os.getpid()}-{time.time_ns()}"
    path.mkdir(parents=True)
    return path


def clear_staging(root: Path, older_than_s: float = 0.0) -> int:
    """Remove what workers were writing when the node stopped; returns how many folders. On a storage
    root shared by several nodes only folders untouched for `older_than_s` go (another node's job may be
    writing the others)."""
    staging = root / OUTPUTS / STAGING
    if not staging.is_dir():
        return 0
    n = 0
    cutoff = time.time() - older_than_s
    for p in staging.iterdir():
        try:
            if older_than_s > 0 and p.stat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def stage_outputs(staging: Path, results: Sequence[tuple[Any, dict[str, Any]]], settings: Any, prior: Any = None,
                  inputs_digest: str = "") -> list[Path]:
    """The results (node.output.files.write_outputs) written into `staging` and fsynced; returns the files."""
    from node.output.files import write_outputs

    written = write_outputs(staging, results, settings, prior, inputs_digest)
    fsync_tree(staging)
    return written


def publish(root: Path, study_uid: str, staging: Path, version: str) -> Path:
    """Rename a fully written and fsynced staging folder to outputs/<study>/<version> and point
    results/<study> at it; returns the version folder. Both steps are atomic renames, each
    followed by an fsync of the folder whose entries changed."""
    _check(study_uid)
    study_dir = root / OUTPUTS / study_uid
    study_dir.mkdir(parents=True, exist_ok=True)
    fsync_dir(study_dir.parent)
    final = study_dir / version
    if final.exists():  # only a version that was renamed but never committed (same name): not in use
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(study_dir)
    fsync_dir(staging.parent)
    _point(root, study_uid, final)
    return final


def _point(root: Path, study_uid: str, final: Path) -> None:
    results = root / RESULTS
    results.mkdir(parents=True, exist_ok=True)
    link = results / study_uid
    if link.is_dir() and not link.is_symlink():  # a folder from before versioned results: keep it as a version
        os.replace(link, final.parent / f"unversioned-{time.time_ns()}")
        fsync_dir(final.parent)
    tmp = results / f".{study_uid}.link-{os.getpid()}-{time.time_ns()}"
    tmp.symlink_to(os.path.relpath(final, results))
    os.replace(tmp, link)
    fsync_dir(results)


def current_version(root: Path, study_uid: str) -> Path | None:
    link = root / RESULTS / study_uid
    return link.resolve() if link.is_symlink() else None


def prune(root: Path, study_uid: str, keep: Iterable[str]) -> int:
    """Delete this study's versions that are neither current nor in `keep` (folder names that an
    undelivered outbox row still needs); returns how many."""
    _check(study_uid)
    study_dir = root / OUTPUTS / study_uid
    if not study_dir.is_dir():
        return 0
    current = current_version(root, study_uid)
    keep = set(keep) | ({current.name} if current is not None else set())
    n = 0
    for version in study_dir.iterdir():
        if version.name not in keep:
            shutil.rmtree(version, ignore_errors=True)
            n += 1
    return n


def delete_study(root: Path, study_uid: str) -> bool:
    """Remove a study's results: the link first (readers stop finding it), then every version."""
    _check(study_uid)
    link = root / RESULTS / study_uid
    found = False
    if link.is_symlink() or link.is_file():
        link.unlink()
        found = True
    elif link.is_dir():
        shutil.rmtree(link)
        found = True
    if found:
        fsync_dir(link.parent)
    versions = root / OUTPUTS / study_uid
    if versions.is_dir():
        shutil.rmtree(versions)
        fsync_dir(versions.parent)
        found = True
    return found
