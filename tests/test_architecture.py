"""The house: one home per stage, imports run only from a higher stage to a lower one, no
cycle, thin job files, the library free of Hydra and wandb."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBING = ROOT / "probing"

#: the stages of ``probing/``, lowest first: a module may import its own stage and lower ones.
#: foundation (errors, io, stats, ...) < questions < evaluation (generation, scorers, margins,
#: paired statistics) < organism < model < activations < probes < conflicts < sae < matching
#: < steering < report
ORDER = ("foundation", "questions", "evaluation", "organism", "model", "activations", "probes",
         "conflicts", "sae", "matching", "steering", "report")
FOUNDATION = {"errors", "io", "seeding", "fingerprint", "lazy", "stats", "version", "batching",
              "figures"}
#: glue modules of the job layer (not jobs themselves)
GLUE = {"train/jobkit.py", "train/configs.py", "train/stage_logs.py", "train/tracking.py",
        "analysis/stages.py", "analysis/stage_cache.py"}
MAX_JOB_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``probing`` module ``path`` imports, at any depth of its code (local imports too)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "probing":  # ``from probing import x``: the module probing.x
                out |= {f"probing.{a.name}" for a in node.names}
            elif node.module.startswith("probing."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("probing.")}
    return out


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    return "foundation" if parts[1] in FOUNDATION else parts[1]


MODULES = {_module_name(p): p for p in sorted(PROBING.rglob("*.py"))}


def test_every_module_has_a_stage() -> None:
    unknown = {m for m in MODULES if _stage(m) not in (*ORDER, "facade")}
    assert not unknown, f"modules outside the known stages: {sorted(unknown)}"
    loose = sorted(m for m in MODULES if m.count(".") == 1 and _stage(m) == "foundation")
    assert len(loose) <= len(FOUNDATION), loose


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module: str) -> None:
    here = _stage(module)
    if here == "facade":
        return
    rank = ORDER.index(here)
    upward = sorted(m for m in _imports(MODULES[module])
                    if _stage(m) in ORDER and ORDER.index(_stage(m)) > rank)
    assert not upward, f"{module} ({here}) imports higher stages: {upward}"


def test_no_import_cycle() -> None:
    graph = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_library_never_imports_hydra_or_wandb() -> None:
    for path in PROBING.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in ("hydra", "omegaconf", "wandb")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_job_files_are_thin() -> None:
    jobs = [p for d in ("train", "analysis") for p in sorted((ROOT / d).glob("*.py"))
            if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in GLUE]
    assert len(jobs) >= 8
    for path in jobs:
        text = path.read_text()
        assert "@hydra.main" in text, f"{path.name} is neither a job nor declared glue"
        n = len(text.splitlines())
        assert n <= MAX_JOB_LINES, f"{path.relative_to(ROOT)} has {n} lines (at most 80)"


#: top-level test files that are about the whole house rather than one module
CROSS_CUTTING = {"architecture", "faults", "readme", "benchmarks", "real_data", "packaging"}


def test_tests_mirror_the_packages() -> None:
    """``tests/<package>/test_<module>.py`` (or ``test_<package>.py`` for package-wide tests;
    ``test_<module>_<topic>.py`` for a second file), so a module's tests are found by its name."""
    tests = ROOT / "tests"
    wrong = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        name = path.stem.removeprefix("test_")
        if len(rel.parts) == 1:
            ok = name in CROSS_CUTTING or (PROBING / f"{name}.py").is_file()
        else:
            package = rel.parts[0]
            home = (ROOT / package) if package in ("train", "analysis") else PROBING / package
            modules = {p.stem for p in home.glob("*.py")} | {package}
            ok = home.is_dir() and any(name == m or name.startswith(f"{m}_") for m in modules)
        if not ok:
            wrong.append(str(rel))
    assert not wrong, f"test files that name no module: {wrong}"
