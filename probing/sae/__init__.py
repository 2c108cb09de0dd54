"""Sparse autoencoders: training with sae-lens (``training``), runs over a corpus (``runs``),
sae-lens-defined metrics (``metrics``), and matching latents to the LiReF (``matching``:
geometry; ``nulls``, ``scores``, ``sparse_probing``, ``injection``; ``match_run``: a whole
run)."""

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
    "decoder_cosines": "probing.sae.matching",
    "encoder_cosines": "probing.sae.matching",
    "reconstruct_direction": "probing.sae.matching",
    "reconstruction_curve": "probing.sae.matching",
    "load_match": "probing.sae.matching",
    "load_match_inputs": "probing.sae.matching",
    "MatchSettings": "probing.sae.match_run",
    "run_matching": "probing.sae.match_run",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.sae", _EXPORTS)
