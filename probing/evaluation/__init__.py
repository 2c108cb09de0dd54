"""Evaluation of model outputs: greedy generation (``generation``), answer scorers
(``scorers``), teacher-forced answer scores and margins (``margins``), paired statistics against
an unsteered run (``paired``) and batched evaluation of steering settings (``sweep``)."""

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
    "EvalSet": "probing.evaluation.sweep",
    "Outcomes": "probing.evaluation.sweep",
    "evaluate_generation": "probing.evaluation.sweep",
    "evaluate_teacher_forced": "probing.evaluation.sweep",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("probing.evaluation", _EXPORTS)
