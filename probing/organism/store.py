"""Organism checkpoints on disk: save atomically, read their config, find or train one.

A checkpoint folder holds the HF model and tokenizer, ``organism.json`` (full config, hash,
vocabulary size), ``metrics.json`` and ``COMMAND``. It is written in a temporary folder beside
its place and swapped in atomically (``probing.io.atomic_replace_dir``), so there is always a
complete checkpoint; ``ensure_organism`` holds a file lock, so parallel sweep jobs train one
organism config once.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from probing.errors import LirefError
from probing.io import (
    atomic_replace_dir,
    ensure_dir,
    read_json,
    write_json,
)
from probing.organism.config import OrganismConfig
from probing.organism.corpus import Corpus
from probing.organism.tokenizer import save_tokenizer, vocab_of

__all__ = ["ORGANISM_FILE", "load_organism_config", "save_checkpoint"]

log = logging.getLogger(__name__)

#: JSON file in every organism checkpoint: its full config, hash and vocabulary size.
ORGANISM_FILE = "organism.json"


def save_checkpoint(
    model: nn.Module,
    corpus: Corpus,
    cfg: OrganismConfig,
    folder: str | Path,
    metrics: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Write model, tokenizer, ``organism.json`` (+ ``metrics.json``, ``COMMAND``) to a temp
    folder beside ``folder``, then move it into place atomically: an old checkpoint is swapped
    for the new one in one step (Linux ``renameat2``; two renames elsewhere, see
    ``probing.io.atomic_replace_dir``), so readers always find a complete checkpoint."""
    from probing.version import __version__

    folder = Path(folder)
    ensure_dir(folder.parent)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ensure_dir(tmp)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(corpus.vocabulary, tmp)
        write_json(tmp / ORGANISM_FILE, {
            "config": cfg.to_dict(),
            "config_hash": cfg.config_hash(),
            "vocab_size": len(vocab_of(corpus.vocabulary)),
            "liref_version": __version__,
        })
        if metrics is not None:
            write_json(tmp / "metrics.json", dict(metrics))
        if command is not None:
            (tmp / "COMMAND").write_text(command.rstrip("\n") + "\n", encoding="utf-8")
        atomic_replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_organism_config(path: str | Path | None = None) -> OrganismConfig:
    """The ``OrganismConfig`` stored in checkpoint ``path`` (default: the committed one)."""
    from probing.organism import DEFAULT_CHECKPOINT

    folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
    file = folder / ORGANISM_FILE
    if path is None and not file.is_file():
        log.warning("no committed organism checkpoint at %s; using the default config", folder)
        return OrganismConfig()
    if not file.is_file():
        raise LirefError(
            f"{folder} is not an organism checkpoint (no {ORGANISM_FILE}); train one with "
            f"`python -m train.organism` or pass path=None for the committed default"
        )
    return OrganismConfig.from_dict(read_json(file)["config"])


