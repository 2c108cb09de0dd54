"""Evaluation of model outputs: greedy generation (``generation``) and answer scorers
(``scorers``)."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "greedy_generate": "probing.evaluation.generation",
    "is_correct": "probing.evaluation.scorers",
    "score_completions": "probing.evaluation.scorers",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.evaluation", _EXPORTS)
