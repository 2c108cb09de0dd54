"""Probes: diff-in-means directions (``directions``, float64), estimators with one protocol
(``estimators``: diffmean, logistic, sparse) and their held-out evaluation (``evaluation``)."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "diff_in_means": "probing.probes.directions",
    "layer_directions": "probing.probes.directions",
    "load_direction": "probing.probes.directions",
    "load_directions": "probing.probes.directions",
    "save_directions": "probing.probes.directions",
    "project": "probing.probes.directions",
    "unit": "probing.probes.directions",
    "Probe": "probing.probes.estimators",
    "DiffMeanProbe": "probing.probes.estimators",
    "LogisticProbe": "probing.probes.estimators",
    "SparseProbe": "probing.probes.estimators",
    "PROBES": "probing.probes.estimators",
    "load_probe": "probing.probes.estimators",
    "make_probe": "probing.probes.estimators",
    "evaluate_layers": "probing.probes.evaluation",
    "evaluate_probe": "probing.probes.evaluation",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.probes", _EXPORTS)
