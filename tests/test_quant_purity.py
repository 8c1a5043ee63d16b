"""node.quant is the pure core: it imports only computing libraries and itself, and does no file or network
I/O. Reading files is the assemble stage (node.assemble), writing them node.output (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

QUANT = Path(__file__).resolve().parent.parent / "node" / "quant"

# What the core may import: the standard library's pure parts, the numeric libraries, pydicom's in-memory
# Dataset, and itself. Anything else (node.encode, node.config, node.output, node.store, node.ingest,
# node.export, node.net, node.fsutil, node.pipeline, node.assemble, json, csv, os, pathlib, socket, ...)
# is a forbidden import.
# annotated_types: constraint metadata on the settings dataclasses (validated by node.config), no I/O.
ALLOWED_MODULES = ("__future__", "collections.abc", "dataclasses", "datetime", "enum", "math", "re", "time",
                   "typing", "annotated_types", "numpy", "scipy", "SimpleITK", "pydicom.dataset", "node.quant")
# Calls that read or write files, whatever object they are called on.
IO_CALLS = {"open", "dcmread", "dcmwrite", "save_as", "read_text", "write_text", "read_bytes", "write_bytes",
            "ReadImage", "WriteImage", "ImageFileReader", "ImageFileWriter", "tofile", "fromfile", "savez",
            "save", "load", "loadtxt", "savetxt"}


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED_MODULES)


def violations(source: str, name: str) -> list[str]:
    """Every forbidden import and I/O call in one module's source, as `name:line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{name}:{node.lineno}: import {a.name}" for a in node.names if not _allowed(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or not _allowed(module):
                found.append(f"{name}:{node.lineno}: from {module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in IO_CALLS:
                found.append(f"{name}:{node.lineno}: I/O call {called}()")
    return found


def test_the_check_finds_forbidden_imports_and_io() -> None:
    bad = ("import json\nfrom node.encode.objects import build_objects\nfrom node.config import NodeConfig\n"
           "import pydicom\nfrom pathlib import Path\nPath('x').write_text('y')\nopen('z')\n")
    assert [v.split(": ", 1)[1] for v in violations(bad, "bad.py")] == [
        "import json", "from node.encode.objects import ...", "from node.config import ...", "import pydicom",
        "from pathlib import ...", "I/O call write_text()", "I/O call open()"]
    assert violations("import numpy as np\nfrom node.quant.volume import Volume\nnp.zeros(3)\n", "ok.py") == []


@pytest.mark.parametrize("path", sorted(QUANT.glob("*.py")), ids=lambda p: p.name)
def test_quant_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8"), f"node/quant/{path.name}") == []
