"""Steering: interventions on the residual stream (``interventions``), the ``steer`` context
(``context``: one or several settings per batch, hooks through ``probing.model.hooks``),
published presets (``presets``), controls (``controls``: same-norm random directions,
orthogonalised directions, density-matched random latents), LEACE erasers of a probe run's
labels (``erasure``), readers of probe / matching run
folders (``sources``), the settings of a sweep (``sweep``), their evaluation on question sets
(``evaluate``) and a whole run (``run``: ``run_steering``)."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "AblateDirection": "probing.steering.interventions",
    "AddDirection": "probing.steering.interventions",
    "AddLatent": "probing.steering.interventions",
    "ClampLatent": "probing.steering.interventions",
    "EraseConcept": "probing.steering.interventions",
    "Intervention": "probing.steering.interventions",
    "ScaleProjection": "probing.steering.interventions",
    "Steering": "probing.steering.context",
    "steer": "probing.steering.context",
    "steer_settings": "probing.steering.context",
    "released_code": "probing.steering.presets",
    "mean_residual_norm": "probing.steering.controls",
    "orthogonalise": "probing.steering.controls",
    "random_directions": "probing.steering.controls",
    "random_latents": "probing.steering.controls",
    "MatchRun": "probing.steering.sources",
    "ProbeRun": "probing.steering.sources",
    "load_match_run": "probing.steering.sources",
    "load_probe_run": "probing.steering.sources",
    "LayerErasers": "probing.steering.erasure",
    "fit_eraser": "probing.steering.erasure",
    "fit_probe_erasers": "probing.steering.erasure",
    "load_erasers": "probing.steering.erasure",
    "save_erasers": "probing.steering.erasure",
    "EvalSet": "probing.steering.evaluate",
    "evaluate_generation": "probing.steering.evaluate",
    "evaluate_teacher_forced": "probing.steering.evaluate",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.steering", _EXPORTS)
