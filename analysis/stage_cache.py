"""Content-addressed cache of whole stage outputs, so a re-run with nothing changed takes seconds.

A stage's key is the fingerprint of everything that determines its output: the stage name, its
config, the keys of the stages it reads, the model's source (the checkpoint's bytes, not its
name) and liref's code. A finished stage folder is copied into
``<cache_dir>/stages/<stage>-<key>/`` (written under a temporary name and renamed, so a crash
never leaves a half-written entry that looks complete); a later run with the same key copies it
back instead of recomputing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from probing.fingerprint import file_sha256, fingerprint

log = logging.getLogger(__name__)

__all__ = ["code_fingerprint", "model_source_key", "restore_stage", "stage_key", "store_stage"]

_PACKAGES = ("probing", "train", "analysis")
#: the file a complete cache entry holds (written last)
DONE = ".liref-stage-complete"


@cache
def code_fingerprint() -> str:
    """sha256 over liref's Python sources (``probing``, ``train``, ``analysis``): a code change
    invalidates every cached stage."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def model_source_key(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a model's weights without loading it: the hash of a local checkpoint's
    config and weight files (the committed organism included), else its hub name + revision;
    plus every setting that changes its activations (dtype, organism config)."""
    name = str(model_cfg.get("name"))
    key: dict[str, Any] = {"name": name, "dtype": model_cfg.get("dtype"),
                           "revision": model_cfg.get("revision"),
                           "gguf_file": model_cfg.get("gguf_file"),
                           "organism": model_cfg.get("organism"),
                           "retrain": model_cfg.get("retrain")}
    folder: Path | None = None
    if name == "organism":
        from probing.organism import DEFAULT_CHECKPOINT

        folder = DEFAULT_CHECKPOINT
    elif Path(name).expanduser().exists():
        folder = Path(name).expanduser()
    if folder is not None:
        files = [folder] if folder.is_file() else sorted(
            p for p in folder.iterdir()
            if p.suffix in (".json", ".safetensors", ".bin", ".gguf", ".model"))
        key["files"] = {p.name: file_sha256(p) for p in files}
    return key


def stage_key(stage: str, config: Any, upstream: Mapping[str, str] | None = None,
              model: Mapping[str, Any] | None = None) -> str:
    """The cache key of ``stage`` run with ``config`` on ``upstream`` stage keys and ``model``."""
    return fingerprint({"stage": stage, "config": config, "upstream": dict(upstream or {}),
                        "model": dict(model or {}), "code": code_fingerprint()})


def _entry(cache_dir: str | Path, stage: str, key: str) -> Path:
    return Path(cache_dir) / "stages" / f"{stage}-{key}"


def restore_stage(cache_dir: str | Path, stage: str, key: str, dest: str | Path) -> bool:
    """Copy a complete cached ``stage`` output into ``dest`` (which must not exist yet or be
    empty); ``False`` when there is none."""
    entry = _entry(cache_dir, stage, key)
    if not (entry / DONE).is_file():
        return False
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(entry, dest, ignore=shutil.ignore_patterns(DONE, "wandb"))
    log.info("stage %s: inputs unchanged, outputs reused from %s", stage, entry)
    return True


def store_stage(cache_dir: str | Path, stage: str, key: str, src: str | Path) -> Path:
    """Copy a finished stage folder into the cache (atomically: temp name, then rename)."""
    entry = _entry(cache_dir, stage, key)
    if (entry / DONE).is_file():
        return entry
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("wandb", "*.log"))
    (tmp / DONE).write_text(key + "\n")
    try:
        os.replace(tmp, entry)
    except OSError:  # another job stored the same key first
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
