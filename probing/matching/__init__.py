"""Matching SAE latents to the LiReF: dictionary geometry (``geometry``: decoder/encoder
cosines, sparse reconstruction), nulls (``nulls``), activation scores incl. ReasonScore
(``scores``), sparse probes (``sparse_probes``), token injection (``injection``), the inputs of a
run (``inputs``: a probe run + an SAE, checked against each other) and a whole run (``run``:
``run_matching``; its plots in ``plots``)."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "decoder_cosines": "probing.matching.geometry",
    "encoder_cosines": "probing.matching.geometry",
    "reconstruct_direction": "probing.matching.geometry",
    "reconstruction_curve": "probing.matching.geometry",
    "load_match": "probing.matching.inputs",
    "load_match_inputs": "probing.matching.inputs",
    "MatchSettings": "probing.matching.run",
    "run_matching": "probing.matching.run",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.matching", _EXPORTS)
