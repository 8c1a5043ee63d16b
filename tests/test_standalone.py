"""The project stands alone: a fresh clone has nothing beside it, so nothing may point outside the repo."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("node", "tests", "docs", "bench", "config", "docker", "systemd", "README.md", "Makefile", "pyproject.toml")
SKIP_DIRS = {"__pycache__", ".venv", "var", ".pytest_cache", ".ruff_cache", "out"}
OUTSIDE = re.compile("|".join([
    r"\.\./" + "shared",  # the developers' reference folder beside the checkout
    "shared" + r"/(reference|data)\b",  # its notes and data, however reached
    r"""/\s*["']""" + "shared" + r"""["']""",  # pathlib: ... / "shared" / ...
]))


def text_files() -> list[Path]:
    out = []
    for name in SCANNED:
        top = ROOT / name
        candidates = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in candidates:
            if SKIP_DIRS.intersection(path.relative_to(ROOT).parts) or path == Path(__file__).resolve():
                continue  # this file spells the patterns out
            data = path.read_bytes()
            if b"\0" not in data[:4096]:  # DICOM fixtures and other binaries hold no references
                out.append(path)
    return out


def test_nothing_refers_to_the_shared_folder_outside_the_repo() -> None:
    files = text_files()
    assert len(files) > 50 and ROOT / "README.md" in files  # the scan saw the project
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path in files
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert hits == [], "references to a folder a user does not have:\n" + "\n".join(hits)


def test_the_pattern_catches_the_forms_that_were_used() -> None:
    for line in ['REF = Path(__file__).parents[2] / "shared" / "data"', "see ../" + "shared/README.md",
                 "(" + "shared/reference/suv.md)"]:
        assert OUTSIDE.search(line), line
    for line in ["Helpers shared by the benchmarks.", "SharedFunctionalGroupsSequence", "shared machines"]:
        assert not OUTSIDE.search(line), line


def test_every_test_data_folder_is_described_in_source_md() -> None:
    data = ROOT / "tests" / "data"
    source = (data / "SOURCE.md").read_text(encoding="utf-8")
    folders = [p for p in data.iterdir() if p.is_dir()]
    assert folders, "tests/data holds the fixtures the tests read"
    for folder in folders:
        assert f"## {folder.name}/" in source, f"tests/data/SOURCE.md does not describe {folder.name}/"
        assert any(folder.iterdir()), f"{folder} is empty"
