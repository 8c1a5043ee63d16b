"""The import rules of docs/architecture.md, checked on every module of node/ by parsing its imports (ast).

A forbidden import fails with the module, the line and the rule. Violations that another change is
removing are listed in KNOWN with the owner's name: the list can only shrink (an entry that no longer
occurs fails too, so it is deleted when its fix lands).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parent.parent / "node"
MAX_LINES = 400
DATABASE_DRIVERS = ("sqlite3", "psycopg", "psycopg2")
# Only the persistence owner talks to a database.
DATABASE_OWNERS = ("node.store",)


@dataclass(frozen=True)
class Rule:
    """Modules under `scope` may import only `allowed` (when given) and never `forbidden` (node modules)."""

    scope: str
    why: str
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None


# Stages, downstream: ingest -> store -> complete -> retrieve -> quantify (pipeline) -> output/encode -> export.
RULES = (
    Rule("node.quant", "the pure quantification core: numpy in, typed results out, no I/O, no other layer",
         allowed=("node", "node.quant", "node.uids")),
    Rule("node.encode", "builds DICOM IODs from results; knows no stage, storage or configuration",
         forbidden=("node.store", "node.config", "node.ingest", "node.export", "node.pipeline",
                    "node.service", "node.jobs", "node.retrieve", "node.monitor", "node.cli", "node.compare",
                    "node.results_store", "node.output")),
    Rule("node.compare", "relating scans; pure settings and algorithms plus the DICOM query of priors",
         forbidden=("node.config", "node.store", "node.ingest", "node.export", "node.pipeline",
                    "node.service", "node.jobs", "node.retrieve", "node.monitor", "node.cli", "node.output",
                    "node.results_store")),
    Rule("node.config", "configuration types feed the settings of the pure packages, never the reverse",
         allowed=("node", "node.config", "node.quant", "node.compare", "node.uids")),
    Rule("node.store", "the one owner of persistence depends on nothing of the node but file-system helpers and "
         "the completion snapshots (pure data) it returns",
         allowed=("node", "node.store", "node.fsutil", "node.uids", "node.completion")),
    Rule("node.net", "socket options and association helpers: no node module", allowed=("node.net",)),
    Rule("node.fsutil", "durable file-system steps: no node module", allowed=()),
    Rule("node.ingest", "receiving: knows nothing downstream of the store",
         forbidden=("node.pipeline", "node.jobs", "node.quant", "node.compare", "node.encode", "node.export",
                    "node.retrieve", "node.service", "node.monitor", "node.output", "node.results_store",
                    "node.cli")),
    Rule("node.retrieve", "prior retrieval stage: C-FIND/C-MOVE/C-GET and ingest; never quantifies",
         forbidden=("node.pipeline", "node.jobs", "node.quant", "node.encode", "node.export", "node.service",
                    "node.output", "node.results_store", "node.cli")),
    Rule("node.pipeline", "the quantify job only reads the index and the files: no ingest, retrieval, export",
         forbidden=("node.ingest", "node.retrieve", "node.compare.priors", "node.export", "node.service",
                    "node.jobs", "node.config", "node.net", "node.cli")),
    Rule("node.output", "writes results from models; knows no stage, storage index or configuration",
         forbidden=("node.store", "node.config", "node.ingest", "node.export", "node.pipeline",
                    "node.service", "node.jobs", "node.retrieve", "node.cli")),
    Rule("node.export", "delivery of published results: knows nothing upstream of the outbox",
         forbidden=("node.ingest", "node.pipeline", "node.jobs", "node.quant", "node.compare", "node.encode",
                    "node.retrieve", "node.service", "node.monitor", "node.output", "node.cli")),
)

# (module, imported, owner who removes it). Only shrinks; the lead empties it at merge.
KNOWN: set[tuple[str, str, str]] = set()
# Modules over MAX_LINES lines, with the owner splitting them. Only shrinks.
LONG: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(NODE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement, at any depth (also inside functions and
    TYPE_CHECKING blocks: a lazy import is still a dependency). Relative imports are resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # `from node import config` imports the module node.config
            out += [(f"{target}.{alias.name}", node.lineno) for alias in node.names if target.startswith("node")]
    return out


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_node_module(name: str) -> bool:
    """A module of the project (a `from node.x import Name` also yields node.x.Name: judged by its module)."""
    return within(name, "node")


def violations(module: str, imported: str) -> list[str]:
    """Every rule the import `module -> imported` breaks, as a sentence."""
    found = []
    top = imported.split(".")[0]
    if top in DATABASE_DRIVERS and not any(within(module, owner) for owner in DATABASE_OWNERS):
        found.append(f"only {', '.join(DATABASE_OWNERS)} may use a database driver")
    if not is_node_module(imported):
        return found
    for rule in RULES:
        if not within(module, rule.scope):
            continue
        if rule.allowed is not None and not any(
                imported == a or (a != "node" and within(imported, a)) or _names_of_root(imported, a)
                for a in rule.allowed):
            found.append(f"{rule.scope} may import only {', '.join(rule.allowed) or 'nothing of node'}: {rule.why}")
        if any(within(imported, f) for f in rule.forbidden):
            found.append(f"{rule.scope} must not import {imported}: {rule.why}")
    return found


def _names_of_root(imported: str, allowed: str) -> bool:
    """`from node import __version__` (node.__version__) counts as the package root, not a module."""
    return allowed == "node" and imported.count(".") == 1 and not (NODE / imported.split(".")[1]).exists() \
        and not (NODE / f"{imported.split('.')[1]}.py").exists()


def _node_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(p), p) for p in NODE.rglob("*.py"))


def _all_violations() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for module, path in _node_modules():
        for imported, line in imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            for why in violations(module, imported):
                key = (module, imported if imported.split(".")[0] in DATABASE_DRIVERS else _as_module(imported))
                out.setdefault(key, []).append(f"{path.relative_to(NODE.parent)}:{line}: imports {imported}: {why}")
    return out


def _as_module(imported: str) -> str:
    """node.x.Name -> node.x when node/x is a module (so KNOWN names modules, not symbols)."""
    parts = imported.split(".")
    while len(parts) > 1:
        rel = Path(*parts[1:])
        if (NODE / rel).is_dir() or (NODE / rel).with_suffix(".py").is_file():
            return ".".join(parts)
        parts.pop()
    return imported


def test_rules_name_existing_layers_and_catch_a_forbidden_import() -> None:
    """The checker itself: a forbidden import is reported, an allowed one is not."""
    assert violations("node.quant.detect", "node.encode.sc")
    assert violations("node.quant.detect", "node.config")
    assert violations("node.quant.measure", "node.fsutil")
    assert violations("node.quant.measure", "sqlite3")
    assert violations("node.fsutil", "node.uids")
    assert violations("node.store.sqlite", "node.config")
    assert violations("node.encode.sr", "node.ingest.spool")
    assert violations("node.pipeline", "node.compare.priors")
    assert not violations("node.quant.measure", "node.quant.volume")
    assert not violations("node.quant.study", "node.uids")
    assert not violations("node.config", "node.quant.detect")
    assert not violations("node.store.sqlite", "node.fsutil")
    assert not violations("node.store.sqlite", "sqlite3")
    assert not violations("node.retrieve", "node.ingest.ingestor")
    src = "from node.config import NodeConfig\n\ndef f():\n    from ..encode import objects\n"
    found = imports_of(src, "node.quant.study")
    assert ("node.config", 1) in found and ("node.encode", 4) in found and ("node.encode.objects", 4) in found
    for package in ("node.quant", "node.encode", "node.compare", "node.ingest", "node.export"):
        assert (NODE / package.split(".")[1]).is_dir(), f"{package}: a rule names a package that does not exist"


def test_no_forbidden_import() -> None:
    found = _all_violations()
    unexpected = [line for key, lines in found.items() if key not in {k[:2] for k in KNOWN} for line in lines]
    assert not unexpected, "forbidden imports (docs/architecture.md):\n" + "\n".join(unexpected)


def test_known_violations_still_exist() -> None:
    """An entry of KNOWN whose import is gone must be deleted: the list only shrinks."""
    found = _all_violations()
    stale = sorted(f"{m} -> {i} ({owner})" for m, i, owner in KNOWN if (m, i) not in found)
    assert not stale, "fixed, remove from KNOWN in tests/test_architecture.py: " + "; ".join(stale)


@pytest.mark.parametrize("module,path", [pytest.param(m, p, id=m) for m, p in _node_modules()])
def test_module_size(module: str, path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if module in LONG:
        assert lines > MAX_LINES, f"{module} has {lines} lines now: remove it from LONG (the list only shrinks)"
    else:
        assert lines <= MAX_LINES, f"{module} has {lines} lines (> {MAX_LINES}): split it by concern"
