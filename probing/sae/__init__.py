"""Sparse autoencoders: training with sae-lens (``training``), runs over a token corpus
(``runs``) and sae-lens-defined quality metrics (``metrics``). Matching latents to the LiReF is
the next stage: ``probing.matching``."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "ARCHITECTURES": "probing.sae.training",
    "SAETrainConfig": "probing.sae.training",
    "load_sae": "probing.sae.training",
    "save_sae": "probing.sae.training",
    "train_sae": "probing.sae.training",
    "SAEDataConfig": "probing.sae.runs",
    "train_sae_on_corpus": "probing.sae.runs",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.sae", _EXPORTS)
