"""node/fsutil.py: the durable write steps every stage uses. What is checked here is the all-or-nothing
part (a reader sees the old file or the new one, never a partial one, and no temporary is left);
that fsync reaches the disk is the kernel's promise, exercised by the crash tests (test_durability)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.fsutil import copy_durable, fsync_tree, makedirs_durable, replace_durable, write_durable


def test_write_durable_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    write_durable(target, b"first")
    write_durable(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failed_copy_keeps_the_old_file_and_removes_the_partial(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.dcm"
    write_durable(target, b"old")
    with pytest.raises(FileNotFoundError):
        copy_durable(tmp_path / "missing.dcm", target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.dcm"]
    source = tmp_path / "new.dcm"
    source.write_bytes(b"new")
    copy_durable(source, target)
    assert target.read_bytes() == b"new" and source.read_bytes() == b"new"


def test_makedirs_replace_and_tree(tmp_path: Path) -> None:
    deep = tmp_path / "1" / "2" / "3"
    makedirs_durable(deep)
    makedirs_durable(deep)  # exists: nothing to do
    assert deep.is_dir()
    (deep / "f").write_bytes(b"x")
    fsync_tree(tmp_path / "1")
    replace_durable(deep / "f", tmp_path / "g")
    assert (tmp_path / "g").read_bytes() == b"x" and not (deep / "f").exists()
