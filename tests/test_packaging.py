"""pyproject.toml against the code: every third-party module the library and the jobs import
is a declared dependency, and every package-data pattern names files that exist."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PACKAGES = ("probing", "train", "analysis")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> set[str]:
    """Top-level names of the absolute imports in ``PACKAGES`` (stdlib and our own left out)."""
    mods: set[str] = set()
    for package in PACKAGES:
        for file in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {*PACKAGES, "__future__"}


def test_every_imported_third_party_module_is_declared():
    declared = {_norm(re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0])
                for d in _pyproject()["project"]["dependencies"]}
    dists = packages_distributions()
    undeclared = {m: dists.get(m) for m in _imported_modules()
                  if not {_norm(d) for d in dists.get(m, [m])} & declared}
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_package_data_patterns_match_files():
    for package, patterns in _pyproject()["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert any(p.is_file() for p in (REPO / package).glob(pattern)), (package, pattern)
