"""Load any HuggingFace causal LM and locate its residual stream (the decoder blocks).

Layer convention used everywhere in liref: layer ``l`` is the output of decoder block ``l``,
which is HF's ``hidden_states[l + 1]`` for every block but the last (HF applies the final norm
to its last ``hidden_states`` entry; liref does not).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probing.errors import LirefError

log = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "SUPPORTED_FAMILIES",
    "decoder_layers",
    "load_model",
    "model_id",
    "num_layers",
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

#: model_type -> attribute path from the CausalLM module to its ``nn.ModuleList`` of blocks.
SUPPORTED_FAMILIES: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "phi3": "model.layers",
    "phi": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "gptj": "transformer.h",
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; unknown names raise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LirefError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_model_path(name_or_path: str) -> str:
    """Map liref's built-in names (``"organism"``) to local paths; other names pass through."""
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
        "a local folder saved with save_pretrained works too, as does 'organism'"
    )
    return LirefError(f"cannot load model {name!r} as a {where}: {hint} ({type(exc).__name__}: {exc})")


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer, in eval mode, with a pad token.

    Args:
        name_or_path: hub id (``"meta-llama/Meta-Llama-3-8B"``), local folder, or ``"organism"``.
        dtype: ``float32`` (default, CPU), ``bfloat16`` or ``float16`` for GPUs.
        device: where to put the model when ``device_map`` is not given.
        trust_remote_code: off unless the user sets it.
        device_map: passed to ``from_pretrained`` (accelerate), e.g. ``"auto"`` to split a model
            over several GPUs; when set, ``device`` is ignored.

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if _looks_like_path(name_or_path) and not Path(path).exists():
        raise LirefError(
            f"model folder {name_or_path!r} does not exist; give an existing local folder saved "
            "with save_pretrained, a HuggingFace Hub id like 'org/name', or 'organism'")
    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, revision=revision
        )
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            revision=revision,
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


def _get_path(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order; their outputs are the residual stream."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    dotted = SUPPORTED_FAMILIES.get(str(model_type))
    if dotted is not None:
        try:
            layers = _get_path(model, dotted)
        except AttributeError:
            layers = None
        if isinstance(layers, nn.ModuleList):
            return layers
    raise LirefError(
        f"unsupported architecture {model_type!r} ({type(model).__name__}): cannot locate its "
        f"decoder blocks; supported model types: {sorted(SUPPORTED_FAMILIES)}"
    )


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks (valid layer indices are ``0 .. num_layers - 1``)."""
    return len(decoder_layers(model))


def model_id(model: nn.Module) -> str:
    """The name the model was loaded under (for metadata), else its config's name."""
    cfg = model.config
    return str(getattr(cfg, "liref_name", None) or getattr(cfg, "_name_or_path", "") or "unknown")


def model_device(model: nn.Module) -> torch.device:
    """Device of the input embeddings (where input ids must go)."""
    return model.get_input_embeddings().weight.device
