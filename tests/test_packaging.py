"""Guards for a fresh machine: what the code imports, pyproject.toml must declare."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(deps: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _names(project["dependencies"])


def _feature_extras() -> set[str]:
    """What the optional features declare (``s3``, ``postgres``: not the tests' extra)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    return set().union(*(_names(v) for k, v in extras.items() if k != "test"))


def _imported_top_level_modules() -> set[str]:
    mods: set[str] = set()
    for path in (ROOT / "src" / "slimtune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"slimtune", "__future__"}


def test_every_third_party_import_is_a_declared_dependency():
    """A dependency or, for an optional feature (boto3 for s3:// stores), its extra."""
    declared = _declared() | _feature_extras()
    dists = packages_distributions()
    undeclared = {
        mod: dists.get(mod)
        for mod in _imported_top_level_modules()
        if not any(_norm(d) in declared for d in dists.get(mod, []))
    }
    assert not undeclared, f"imported but not in pyproject.toml dependencies: {undeclared}"


def test_every_declared_dependency_is_pinned_in_constraints():
    pinned = {_norm(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().split()
              if "==" in line}
    wanted = _declared() | _feature_extras()
    assert wanted <= pinned, f"not pinned: {wanted - pinned}"
