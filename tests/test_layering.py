"""The package's layering: every module imports on its own, the subpackages import each
other without a cycle, and export/ reads no run through search/."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "slimtune"
SUBPACKAGES = ("ops", "knobs", "spaces", "compress", "objectives", "data", "models", "export",
               "search", "viz")

#: edges that close a cycle, each with its reason (none today: the layers go ops < knobs <
#: spaces < compress < export < objectives < search; a new cycle fails the test, naming it)
KNOWN_EDGES: set[tuple[str, str]] = set()

#: the callable subpackages (``slimtune.search(...)``, ``slimtune.export(...)``) call the
#: public verbs of slimtune.api: the one way down-to-top a subpackage may look
CALLABLE_ENTRIES = {"search/__init__.py", "export/__init__.py"}


def _imports(path: Path) -> set[str]:
    """Every ``slimtune...`` module ``path`` imports, at its top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "slimtune" or m.startswith("slimtune.")}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _subpackage_graph() -> dict[tuple[str, str], set[str]]:
    """(importer, imported) subpackage -> the files that make the edge."""
    edges: dict[tuple[str, str], set[str]] = {}
    for path in _modules().values():
        rel = path.relative_to(PACKAGE)
        src = rel.parts[0] if len(rel.parts) > 1 else None
        if src not in SUBPACKAGES:
            continue
        for mod in _imports(path):
            parts = mod.split(".")
            if len(parts) > 1 and parts[1] in SUBPACKAGES and parts[1] != src:
                edges.setdefault((src, parts[1]), set()).add(str(rel))
    return edges


def _cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """A cycle of the directed graph ``edges`` (its nodes in order), or None."""
    succ: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        succ.setdefault(a, []).append(b)
    state: dict[str, str] = {}  # "open" while on the path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in succ.get(node, []):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(succ):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]
    assert _cycle({("a", "b"), ("a", "c"), ("b", "c")}) is None


def test_every_module_imports_first_in_a_fresh_interpreter():
    # one interpreter; before each module every slimtune module is forgotten, so each is
    # imported first (an import cycle fails only for the module imported first)
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(_modules())!r}:\n"
        "    for m in [m for m in sys.modules if m == 'slimtune' or m.startswith('slimtune.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        raise SystemExit(f'import {name} failed: {type(exc).__name__}: {exc}')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_subpackages_import_each_other_without_a_cycle():
    edges = _subpackage_graph()
    cycle = _cycle(set(edges) - KNOWN_EDGES)
    assert cycle is None, "import cycle " + " -> ".join(cycle) + ": " + "; ".join(
        f"{a} -> {b} in {', '.join(sorted(edges[a, b]))}" for a, b in itertools.pairwise(cycle))


def test_export_does_not_import_search():
    assert ("export", "search") not in _subpackage_graph()


def test_only_the_callable_entries_import_the_top_layer():
    """The top layer is api.py and the cli/ package (the command line, split by command);
    no other subpackage imports them."""
    top = {"slimtune.api", "slimtune.cli"}
    offenders = sorted(
        str(path.relative_to(PACKAGE)) for path in _modules().values()
        if len(path.relative_to(PACKAGE).parts) > 1
        and path.relative_to(PACKAGE).parts[0] != "cli"
        and str(path.relative_to(PACKAGE)) not in CALLABLE_ENTRIES
        and {m for m in _imports(path) if m in top or m.startswith("slimtune.cli.")})
    assert not offenders
