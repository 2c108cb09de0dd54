"""The model room: loading (hub id, local folder, GGUF file, built-in names), decoder-block
discovery and the hooks that read or change the residual stream (the one mechanism that touches
decoder blocks, shared by extraction and steering)."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "load_model": "probing.model.loading",
    "load_model_from_config": "probing.model.loading",
    "builtin_names": "probing.model.loading",
    "describe_model": "probing.model.loading",
    "organism_checkpoint": "probing.model.loading",
    "decoder_layers": "probing.model.blocks",
    "find_blocks": "probing.model.blocks",
    "num_layers": "probing.model.blocks",
    "model_id": "probing.model.blocks",
    "convert_gguf": "probing.model.gguf",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.model", _EXPORTS)
