"""Small labelled question files and run helpers for the job tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def write_probe_activations(folder: Path, acts: Any, layers: list[int], labels: list[str],
                            ids: list[str], train: list[str]) -> Path:
    """A probe run's pointer to its activations as ``train.probe`` writes it: an activation
    cache entry holding ``acts [N, L, d]`` (``folder/cache``), ``activations.json`` naming it
    and a hold-out ``split.json`` whose training part is ``train``."""
    from probing.activations.cache import ActivationCache
    from probing.io import write_json

    cache = ActivationCache(folder / "cache")
    manifest = cache.entry.new_manifest(
        model="tiny", model_fingerprint="-", position="last", data_fingerprint="-",
        ids_fingerprint="-", add_special_tokens=True, dtype="float32", layers=list(layers),
        n=len(ids), d_model=int(acts.shape[-1]), shard_size=len(ids), labels=list(labels),
        ids=list(ids), liref_version="test")
    cache.write_shard(manifest, 0, acts.float().contiguous())
    manifest["complete"] = True
    cache.entry.write_manifest(manifest)
    rest = [i for i in ids if i not in set(train)]
    write_json(folder / "activations.json", {"cache": str(cache.folder), "layers": list(layers)})
    write_json(folder / "split.json", {"mode": "holdout", "seed": 0, "train": list(train),
                                       "val": rest[: len(rest) // 2],
                                       "test": rest[len(rest) // 2:]})
    return folder


def run_module(module: str, *overrides: str, cwd: Path, timeout: int = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m module overrides...`` in ``cwd`` with the cache inside ``cwd``."""
    full_env = {**os.environ, "LIREF_CACHE": str(cwd / "cache"), "WANDB_SILENT": "true",
                "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_main_in_process(module: str, args: list[str], cwd: Path, monkeypatch: Any,
                        capsys: Any, cache: Path | None = None,
                        env: dict[str, str] | None = None) -> tuple[int, str]:
    """Call ``module``'s ``@hydra.main`` in this process (no interpreter start-up) with
    command-line ``args``, in ``cwd``, cache in ``cache`` (default ``cwd / "cache"``):
    ``(exit status, stderr)``, 0 when it returns normally. Hydra configures the root logger and
    its config singleton for its jobs; both are given back to pytest afterwards."""
    import importlib
    import logging

    main = importlib.import_module(module).main
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LIREF_CACHE", str(cache or cwd / "cache"))
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", [module, *args])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = None  # no later test may think it runs in this job
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
    return code, capsys.readouterr().err
