"""Activations: prompt positions (``extract``), token streams (``tokens``), the on-disk cache
(``cache``) and text corpora for SAEs (``corpus``).

Layer ``l`` = output of decoder block ``l`` = HF ``hidden_states[l + 1]`` for every block but
the last (HF applies the final norm to its last entry; liref never does).
"""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "extract_activations": "probing.activations.extract",
    "tokenize_prompts": "probing.activations.extract",
    "POSITIONS": "probing.activations.extract",
    "ActivationCache": "probing.activations.cache",
    "CachedActivations": "probing.activations.cache",
    "cached_extract": "probing.activations.cache",
    "TokenActivationCache": "probing.activations.tokens",
    "TokenStreamConfig": "probing.activations.tokens",
    "iter_residual_tokens": "probing.activations.tokens",
    "TextCorpus": "probing.activations.corpus",
    "load_corpus": "probing.activations.corpus",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.activations", _EXPORTS)
