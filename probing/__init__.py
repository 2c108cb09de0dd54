"""liref's library: plain Python, importable in a notebook, no Hydra and no wandb here.

Public entry points are re-exported lazily so that ``import probing`` stays fast.
"""

from __future__ import annotations

from probing.lazy import lazy_getattr
from probing.version import __version__

_EXPORTS: dict[str, str] = {
    "load_model": "probing.model.loading",
    "decoder_layers": "probing.model.blocks",
    "extract_activations": "probing.activations.extract",
    "ActivationCache": "probing.activations.cache",
    "cached_extract": "probing.activations.cache",
    "load_activations": "probing.activations.cache",
    "latest_run": "probing.report.results",
    "diff_in_means": "probing.probes.directions",
    "load_direction": "probing.probes.directions",
    "load_directions": "probing.probes.directions",
    "load_results": "probing.report.results",
    "load_probe": "probing.probes.estimators",
    "DiffMeanProbe": "probing.probes.estimators",
    "LogisticProbe": "probing.probes.estimators",
    "SparseProbe": "probing.probes.estimators",
    "load_question_set": "probing.questions",
    "Question": "probing.questions",
    "load_sae": "probing.sae.training",
    "seed_everything": "probing.seeding",
    "steer": "probing.steering.context",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__ = lazy_getattr("probing", _EXPORTS)
