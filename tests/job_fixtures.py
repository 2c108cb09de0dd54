"""Small labelled question files and run helpers for the job tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_questions(path: Path, n_per_label: int = 24) -> Path:
    """A jsonl of arithmetic (reasoning) and capital-city (memory) questions."""
    rows = []
    for i in range(n_per_label):
        rows.append({"id": f"r{i}", "question": f"what is {i} plus {i % 7} times three ?",
                     "answers": [str(i + 3 * (i % 7))], "label": "reasoning"})
        rows.append({"id": f"m{i}", "question": f"what is the capital city of the {i} blue ?",
                     "answers": ["red"], "label": "memory"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_module(module: str, *overrides: str, cwd: Path, timeout: int = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m module overrides...`` in ``cwd`` with the cache inside ``cwd``."""
    full_env = {**os.environ, "LIREF_CACHE": str(cwd / "cache"), "WANDB_SILENT": "true",
                "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
