"""Result tables of liref runs as pandas DataFrames (for notebooks).

A run folder of ``train.probe`` holds ``per_layer.json``; of ``analysis.match``
``latents.json``; of ``analysis.steer`` ``results.json``. A pipeline run folder holds one
sub-folder per stage (``probe/``, ``sae/``, ``match/``, ``steer/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.io import read_json

__all__ = ["TABLES", "latest_run", "load_results"]

#: table name -> (file name, stage sub-folder of a pipeline run)
TABLES: dict[str, tuple[str, str]] = {
    "per_layer": ("per_layer.json", "probe"),
    "latents": ("latents.json", "match"),
    "steering": ("results.json", "steer"),
}


def load_results(run_dir: str | Path, table: str | None = None) -> Any:
    """One result table of a run folder as a ``pandas.DataFrame``.

    Args:
        run_dir: a job's run folder (``outputs/probe/<time>``) or a pipeline run folder.
        table: ``per_layer``, ``latents`` or ``steering``; ``None`` = the only table there.

    Raises:
        LirefError: unknown table, no such table in the folder, or several and none named.
    """
    import pandas as pd

    run = Path(run_dir)
    if not run.is_dir():
        raise LirefError(f"run folder {run} does not exist")
    if table is not None and table not in TABLES:
        raise LirefError(f"unknown result table {table!r}; allowed: {sorted(TABLES)}")
    names = [table] if table is not None else list(TABLES)
    found = {}
    for name in names:
        file, stage = TABLES[name]
        for candidate in (run / file, run / stage / file):
            if candidate.is_file():
                found[name] = candidate
                break
    if not found:
        wanted = f"a {table!r} table" if table else "any result table"
        raise LirefError(f"{run} holds {wanted}: expected one of "
                         f"{[TABLES[n][0] for n in names]} there or in its stage sub-folders")
    if len(found) > 1:
        raise LirefError(f"{run} holds several tables {sorted(found)}; pass table=...")
    rows = read_json(next(iter(found.values())))
    if isinstance(rows, dict) and "rows" in rows:
        rows = rows["rows"]
    if not isinstance(rows, list):
        raise LirefError(f"{next(iter(found.values()))} is not a list of rows")
    return pd.DataFrame(rows)


def latest_run(job: str = "pipeline", root: str | Path = "outputs") -> Path:
    """The newest run folder of ``job`` under ``root`` (Hydra's ``outputs/<job>/<time>``)."""
    folder = Path(root) / job
    runs = sorted(p for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []
    if not runs:
        raise LirefError(f"no {job} run under {folder}: run `python -m "
                         f"{'analysis' if job in ('pipeline', 'match', 'steer', 'report') else 'train'}"
                         f".{job}` first, or pass the run folder yourself")
    return runs[-1]
