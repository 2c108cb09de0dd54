"""Small file helpers: atomic writes (files and folders), file locks, JSON, flat metrics files.

Disk trouble (a read-only or full disk, a path through a file) raises ``LirefError`` naming the
folder, so a job reports it in one ``error:`` line; a failed write never damages what was there.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from probing.errors import LirefError

__all__ = ["TMP_FILE_GLOB", "atomic_replace_dir", "atomic_write_bytes", "atomic_write_text",
           "disk_error", "ensure_dir", "file_lock", "flat_metrics", "flatten", "read_json",
           "remove_orphans", "write_csv", "write_json", "write_metrics"]

log = logging.getLogger(__name__)

#: what an interrupted ``atomic_write_bytes`` leaves behind: ``.<name>.<random>.tmp``
TMP_FILE_GLOB = ".*.tmp"


def disk_error(exc: OSError, path: str | Path, action: str = "write") -> LirefError:
    """One clear ``LirefError`` for an ``OSError`` while writing ``path``, naming its folder."""
    path = Path(path)
    why = exc.strerror or str(exc)
    other = "choose another folder (for the caches: cache_dir=... or LIREF_CACHE)"
    hint = {
        errno.ENOSPC: f"the disk is full: free space there or {other}",
        errno.EDQUOT: f"the disk quota is exceeded: free space there or {other}",
        errno.EROFS: f"the file system is read-only: {other}",
        errno.EACCES: f"it is not writable for this user: fix its permissions or {other}",
        errno.EPERM: f"it is not writable for this user: fix its permissions or {other}",
        errno.ENOTDIR: f"a part of that path is a file, not a folder: {other}",
        errno.EEXIST: f"a file of that name is in the way: move it or {other}",
    }.get(exc.errno or 0, f"check that the folder exists, is writable and has space, or {other}")
    where = str(path) if action == "create the folder" else f"{path} (folder {path.parent})"
    return LirefError(f"cannot {action} {where}: {why}; {hint}")


def ensure_dir(path: str | Path) -> Path:
    """``mkdir -p path``; a read-only disk or a file in the way raises ``LirefError`` naming it."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the folder should be
        raise disk_error(OSError(errno.EEXIST, "it exists and is not a folder"), path,
                         "create the folder") from exc
    except OSError as exc:
        raise disk_error(exc, path, "create the folder") from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + rename: readers never see a partial file.

    The temp file is ``.<name>.<random>.tmp`` beside ``path`` (``TMP_FILE_GLOB``); it is removed
    when the write fails, and a process killed mid-write leaves it for ``remove_orphans``. A disk
    error (full, read-only, ...) raises ``LirefError`` naming the folder; the old file is kept.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise disk_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV (atomically): a header, then one line per row; ``None`` and missing
    cells are empty, keys outside ``columns`` left out. ``columns=None``: the union of the rows'
    keys in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


# --- folders ---------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; ``False`` where
    the C library, kernel or file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the complete folder ``tmp`` to ``final``, replacing a folder already there.

    There is always a complete folder at ``final``: a new one appears by one rename; an old one
    is swapped with the new one in one step (Linux ``renameat2(RENAME_EXCHANGE)`` through
    ctypes), then deleted. Where that call is unavailable (other systems, some file systems) the
    fallback is two renames (old aside, new in), with a short window without ``final``; the old
    folder then survives as ``.<name>.old-<pid>`` if the process dies in that window.
    Both folders must be on one file system (put ``tmp`` beside ``final``).
    """
    tmp, final = Path(tmp), Path(final)
    try:
        if not final.exists():
            try:
                os.rename(tmp, final)
                return final
            except OSError as exc:  # someone created it meanwhile: swap below
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # ``tmp`` now names the old folder
            return final
        log.debug("renameat2(RENAME_EXCHANGE) unavailable: replacing %s with two renames", final)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise disk_error(exc, final, "move a folder into") from exc
    return final


def _pid_alive(name: str) -> bool:
    """Whether the process whose id ends ``name`` (``...-<pid>``) still runs."""
    tail = name.rsplit("-", 1)[-1]
    if not tail.isdigit():
        return False
    try:
        os.kill(int(tail), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: str | Path, patterns: Iterable[str] = (TMP_FILE_GLOB,),
                   dead_pids_only: bool = False) -> list[Path]:
    """Delete files and folders in ``folder`` matching the glob ``patterns`` (what killed writers
    left behind); returns them. Call it under the lock that guards those writers, or pass
    ``dead_pids_only`` for names ending ``-<pid>``: then only those of exited processes go."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for pattern in patterns:
        for p in folder.glob(pattern):
            if dead_pids_only and _pid_alive(p.name):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d leftover temporary file(s) of an interrupted write in %s",
                 len(removed), folder)
    return removed


@contextlib.contextmanager
def file_lock(path: str | Path, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``filelock.FileLock`` on ``path`` (``<entry>.lock``) across processes
    and threads; the lock is released when the holder exits, even by ``kill -9``. Logs once
    when it has to wait for another holder."""
    from filelock import FileLock, Timeout

    path = Path(path)
    ensure_dir(path.parent)
    lock = FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for %s: another process is building %s", path,
                     what or path.with_suffix(""))
            lock.acquire()
    except OSError as exc:
        raise disk_error(exc, path, "create the lock file") from exc
    try:
        yield
    finally:
        lock.release()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as pretty JSON (numpy/torch scalars and NaN handled)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON; a missing or corrupted file raises ``LirefError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise LirefError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LirefError(f"corrupted JSON file {path}: {exc}") from exc


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, float]:
    """Flatten nested metrics to ``{"a/b": number}``; non-numbers are dropped."""
    out: dict[str, float] = {}
    for name, value in flatten(metrics, prefix, sep).items():
        value = _jsonable(value)
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = value
    return out


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``run_dir/metrics.json``: flat keys, numbers only."""
    path = Path(run_dir) / "metrics.json"
    write_json(path, flat_metrics(metrics))
    return path
