"""The one crash-safe cache core under the prompt-activation cache (``cache.py``) and the
token-activation cache (``tokens.py``).

One entry is a content-addressed folder ``<root>/<key>/``::

    manifest.json            {"format": kind tag, "version": int, "complete": bool,
                              "shards": [{"file", "bytes", "sha256", ...}], ...kind fields}
    <shard>.safetensors      {"activations": tensor}

guarded by the lock file ``<root>/<key>.lock`` (``filelock``, see ``probing.io.file_lock``).

- Writes: a shard is written atomically (temp file + rename) and its byte size and sha256 go
  into the manifest, which is rewritten atomically after every shard; ``complete`` turns true
  last. A process killed at any point leaves complete shards listed in the manifest and, at
  worst, a temporary ``.<name>.<random>.tmp`` file that the next writer removes under the lock.
  An interrupted build resumes from its listed, verified shards.
- Reads: a shard is read only after its size and sha256 match the manifest; a mismatch raises
  ``LirefError`` naming the file and the folder to delete (it is never read silently).
- The manifest is checked (format tag, version, field types) on every read; a damaged one raises
  ``CorruptCacheError`` naming the folder and how to clear it; the writers discard such an entry
  with a warning and rebuild it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from probing.errors import LirefError
from probing.fingerprint import bytes_sha256
from probing.io import (
    TMP_FILE_GLOB,
    atomic_write_bytes,
    disk_error,
    file_lock,
    read_json,
    remove_orphans,
    write_json,
)

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "SHARD_KEY", "CacheEntry", "CorruptCacheError"]

MANIFEST = "manifest.json"
SHARD_KEY = "activations"

#: fields every manifest holds, and every shard record
_COMMON = {"format": str, "version": int, "complete": bool, "shards": list}
_SHARD = {"file": str, "bytes": int, "sha256": str}

Schema = Mapping[str, type | tuple[type, ...]]


class CorruptCacheError(LirefError):
    """A cache entry's manifest is unreadable or not what this liref writes."""


def _type_name(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def _check(d: Any, schema: Schema, where: str) -> str | None:
    """Why ``d`` does not fit ``schema`` (``None`` when it does)."""
    if not isinstance(d, dict):
        return f"{where} is a {type(d).__name__}, not an object"
    for key, t in schema.items():
        if key not in d:
            return f"{where} has no {key!r}"
        value = d[key]
        ok = isinstance(value, t) and not (isinstance(value, bool) and t is int)
        if not ok:
            return f"{where}[{key!r}] is {value!r}, expected {_type_name(t)}"
    return None


class CacheEntry:
    """One cache entry folder of one kind (``kind`` = the manifest's format tag).

    Args:
        folder: the entry folder ``<root>/<key>``.
        kind: format tag, e.g. ``"liref-activations"``.
        version: format version this liref reads and writes.
        schema: the kind's own manifest fields and their types.
        shard_schema: the kind's own shard-record fields and their types.
    """

    def __init__(self, folder: str | Path, kind: str, version: int,
                 schema: Schema | None = None, shard_schema: Schema | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.kind, self.version = kind, version
        self.schema: dict[str, Any] = {**_COMMON, **(schema or {})}
        self.shard_schema: dict[str, Any] = {**_SHARD, **(shard_schema or {})}

    # --- paths and lock --------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.folder.parent / f"{self.folder.name}.lock"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on this entry (``<entry>.lock``), across processes and threads."""
        with file_lock(self.lock_path, what=str(self.folder)):
            yield

    def _how_to_clear(self) -> str:
        return (f"delete the folder {self.folder} (rm -r '{self.folder}') to rebuild it, or just "
                f"re-run: liref rebuilds a damaged cache entry")

    # --- manifest --------------------------------------------------------------------------
    def new_manifest(self, **fields: Any) -> dict[str, Any]:
        """An empty, incomplete manifest of this kind holding ``fields``."""
        return {"format": self.kind, "version": self.version, "complete": False,
                **fields, "shards": []}

    def validate(self, m: Any) -> dict[str, Any]:
        """``m`` if it is a manifest of this kind and version; else ``CorruptCacheError``."""
        why = _check(m, {"format": str, "version": int}, "the manifest")
        if why is None and (m["format"], m["version"]) != (self.kind, self.version):
            why = (f"it is format {m['format']!r} version {m['version']}, this liref reads "
                   f"{self.kind!r} version {self.version}")
        why = why or _check(m, self.schema, "the manifest")
        for i, shard in enumerate(m["shards"] if why is None else []):
            why = why or _check(shard, self.shard_schema, f"shard record {i}")
        if why is not None:
            raise CorruptCacheError(f"the cache manifest {self.manifest_path} is damaged or "
                                    f"foreign: {why}; {self._how_to_clear()}")
        return m

    def read_manifest(self) -> dict[str, Any]:
        """The checked manifest; a missing/unreadable/foreign one raises naming the folder."""
        try:
            m = read_json(self.manifest_path)
        except LirefError as exc:
            raise CorruptCacheError(f"cannot read the cache manifest {self.manifest_path} "
                                    f"({exc}); {self._how_to_clear()}") from exc
        return self.validate(m)

    def read_manifest_or_discard(self) -> dict[str, Any] | None:
        """The manifest, or ``None`` when there is none; a damaged one is logged and the whole
        entry deleted (its shards cannot be trusted without it). Call under ``lock()``."""
        if not self.exists():
            return None
        try:
            return self.read_manifest()
        except CorruptCacheError as exc:
            log.warning("%s -- discarding the entry and rebuilding it", exc)
            self.discard()
            return None

    def write_manifest(self, m: Mapping[str, Any]) -> None:
        write_json(self.manifest_path, self.validate(dict(m)))

    def discard(self) -> None:
        """Delete the entry folder (under ``lock()``)."""
        try:
            shutil.rmtree(self.folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise disk_error(exc, self.folder, "delete the damaged cache entry") from exc

    # --- shards ----------------------------------------------------------------------------
    def write_shard(self, name: str, acts: torch.Tensor) -> dict[str, Any]:
        """Atomically write ``{"activations": acts}`` as ``name``; returns its record
        ``{file, bytes, sha256}`` (add the kind's fields, append, then ``write_manifest``)."""
        from safetensors.torch import save

        blob = save({SHARD_KEY: acts.contiguous()})
        atomic_write_bytes(self.folder / name, blob)
        return {"file": name, "bytes": len(blob), "sha256": bytes_sha256(blob)}

    def _bad(self, path: Path, why: str) -> LirefError:
        return LirefError(f"corrupted cache shard {path}: {why}; {self._how_to_clear()}")

    def read_shard_bytes(self, record: Mapping[str, Any]) -> bytes:
        """The shard's bytes after checking its size and sha256 against ``record``."""
        path = self.folder / record["file"]
        if not path.is_file():
            raise self._bad(path, "the file is missing")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise self._bad(path, f"size {size} bytes, the manifest says {record['bytes']} "
                                  f"(truncated?)")
        data = path.read_bytes()
        if bytes_sha256(data) != record["sha256"]:
            raise self._bad(path, "its sha256 checksum does not match the manifest")
        return data

    def read_shard(self, record: Mapping[str, Any]) -> torch.Tensor:
        """The verified shard's tensor."""
        from safetensors.torch import load

        data = self.read_shard_bytes(record)
        try:
            return load(data)[SHARD_KEY]
        except Exception as exc:  # noqa: BLE001 - checksum matched, so the writer was wrong
            raise self._bad(self.folder / record["file"],
                            f"unreadable safetensors ({exc})") from exc

    def verified_prefix(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The leading shard records whose files verify; the first bad one (and every later
        one) is dropped with a warning, to be written again."""
        for i, record in enumerate(records):
            try:
                self.read_shard_bytes(record)
            except LirefError as exc:
                log.warning("rebuilding from shard %d on: %s", i, exc)
                return records[:i]
        return list(records)

    def verified(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The shard records whose files verify; bad ones are dropped with a warning."""
        good = []
        for record in records:
            try:
                self.read_shard_bytes(record)
                good.append(record)
            except LirefError as exc:
                log.warning("recomputing a shard: %s", exc)
        return good

    def clean(self, manifest: Mapping[str, Any] | None, shard_glob: str) -> None:
        """Under ``lock()``: remove interrupted writes' temp files and shard files the manifest
        does not list (written by a writer killed before its manifest update)."""
        remove_orphans(self.folder, [TMP_FILE_GLOB])
        listed = {s["file"] for s in (manifest or {}).get("shards", [])}
        if self.folder.is_dir():
            for path in self.folder.glob(shard_glob):
                if path.name not in listed:
                    path.unlink(missing_ok=True)
