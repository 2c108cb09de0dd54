"""Evaluation of model outputs: greedy generation (``generation``), answer scorers
(``scorers``), teacher-forced answer scores and margins (``margins``), and paired statistics against
an unsteered run (``paired``). Nothing here imports a higher stage: evaluating steering
settings over question sets is ``probing.steering.evaluate``."""

from __future__ import annotations

from probing.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "greedy_generate": "probing.evaluation.generation",
    "is_correct": "probing.evaluation.scorers",
    "score_answer": "probing.evaluation.scorers",
    "score_completions": "probing.evaluation.scorers",
    "CandidateScores": "probing.evaluation.margins",
    "score_candidates": "probing.evaluation.margins",
    "compare_settings": "probing.evaluation.paired",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.evaluation", _EXPORTS)
