"""Stable content fingerprints for cache keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "fingerprint", "model_fingerprint"]


def fingerprint(obj: Any, length: int = 16) -> str:
    """sha256 of ``obj``'s canonical JSON, truncated to ``length`` hex chars."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """Model id + revision + architecture config (changes when the model does)."""
    cfg = model.config
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    drop = {"_name_or_path", "liref_name", "transformers_version", "torch_dtype", "dtype"}
    keep = {k: v for k, v in d.items() if k not in drop}
    name = getattr(cfg, "liref_name", None) or getattr(cfg, "_name_or_path", "")
    return fingerprint({"name": name, "revision": getattr(cfg, "_commit_hash", None), "cfg": keep})


def data_fingerprint(prompts: Sequence[str], labels: Sequence[Any] | None = None) -> str:
    return fingerprint({"prompts": list(prompts), "labels": list(labels or [])})
