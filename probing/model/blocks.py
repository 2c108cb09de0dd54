"""Decoder-block discovery: the ``nn.ModuleList`` of a causal LM's blocks, for any family.

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``, except that HF applies
the final norm to its last entry). A fast path names the list for known families
(``SUPPORTED_FAMILIES``); any other decoder-only model is found generically.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from probing.errors import LirefError

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


def _get_path(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


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


#: Config fields that may hold the number of decoder blocks, in order of trust.
_DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_blocks")


_BLOCK_PATHS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
