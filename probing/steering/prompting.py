"""The prompting baseline (AxBench, arXiv 2501.17148: prompting beat every steering method):
an instruction added to each question, evaluated unsteered (hooks off) on the same items and
compared with the unsteered run by the same paired statistics as every steering setting.

Rows: ``intervention="prompt"`` (no layer, no strength), condition ``direction`` = the
instruction of the set's mode (``reasoning``, ``memory`` or ``context``: a statement before the
question) and ``negated`` = the opposite mode's (reasoning <-> memory, context -> memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from probing.errors import LirefError
from probing.questions.record import Question

__all__ = ["MODES", "Prompting", "instructed_prompts", "merge_outcomes", "prompt_outcomes",
           "prompt_settings", "set_mode"]

MODES: tuple[str, ...] = ("reasoning", "memory", "context")
OPPOSITE: dict[str, str] = {"reasoning": "memory", "memory": "reasoning", "context": "memory"}


def _default_instructions() -> dict[str, str]:
    return {"reasoning": "Think step by step.", "memory": "Answer from memory.",
            "context": "Answer using the text above."}


@dataclass
class Prompting:
    """The ``prompt`` settings of a steering run (``steer.prompting``).

    ``run``: evaluate them. ``instructions``: per mode, the text added to the question.
    ``negated``: also the opposite mode's instruction. ``after``: modes whose instruction
    follows the question text (``context``: "the text above" is the statement); the others
    precede it (the start of the user turn, after any few-shot examples)."""

    run: bool = False
    instructions: dict[str, str] = field(default_factory=_default_instructions)
    negated: bool = True
    after: list[str] = field(default_factory=lambda: ["context"])

    def __post_init__(self) -> None:
        bad = [m for m in [*self.instructions, *self.after] if m not in MODES]
        if bad:
            raise LirefError(f"prompting modes {bad}; allowed: {list(MODES)}")
        missing = [m for m in MODES if not str(self.instructions.get(m) or "").strip()]
        if self.run and missing:
            raise LirefError(f"prompting.instructions has no text for {missing}")


def set_mode(questions: Sequence[Question], mode: str | None = None) -> str:
    """A set's mode: ``mode`` when given (a set's ``mode:`` in ``steer.sets``); ``context``
    when most items hold a statement to answer from (``meta["context_answer"]``: counterfactual
    or consistent conflict items); else the majority label."""
    if mode is not None:
        if mode not in MODES:
            raise LirefError(f"set mode {mode!r}; allowed: {list(MODES)}")
        return mode
    if 2 * sum("context_answer" in q.meta for q in questions) > len(questions):
        return "context"
    return "reasoning" if 2 * sum(q.label == "reasoning" for q in questions) >= len(questions) \
        else "memory"


def instructed_prompts(questions: Sequence[Question], template: Any, tokenizer: Any,
                       text: str, after: bool = False) -> list[str]:
    """The prompts of ``questions`` under ``template`` with ``text`` before (``after``: after)
    each question's text."""
    from probing.questions.prompts import format_prompts

    edited = [replace(q, question=f"{q.question} {text}" if after else f"{text} {q.question}")
              for q in questions]
    return format_prompts(edited, template, tokenizer)


def merge_outcomes(a: Any, b: Any) -> Any:
    """``Outcomes`` ``a`` [S, N] and ``b`` [T, N] of the same items as one [S + T, N]."""
    if a.item_ids != b.item_ids or a.metric != b.metric:
        raise LirefError("outcomes to merge must score the same items with the same metric")

    def cat(x: Any, y: Any) -> Any:
        return None if x is None or y is None else np.concatenate([x, y])

    completions = (None if a.completions is None or b.completions is None
                   else [*a.completions, *b.completions])
    return replace(a, correct=cat(a.correct, b.correct),
                   scores={k: cat(v, b.scores[k]) for k, v in a.scores.items()},
                   parse_failed=cat(a.parse_failed, b.parse_failed),
                   length=cat(a.length, b.length), completions=completions)


def prompt_settings(prompting: Prompting, mode: str) -> list[tuple[str, str, bool]]:
    """``[(condition, instruction, after)]`` of a set of ``mode``."""
    out = [("direction", mode)]
    if prompting.negated:
        out.append(("negated", OPPOSITE[mode]))
    return [(cond, prompting.instructions[m], m in prompting.after) for cond, m in out]


def prompt_outcomes(model: Any, tokenizer: Any, evalset: Any, template: Any,
                    prompting: Prompting, mode: str, evaluate: Any,
                    ) -> tuple[Any, list[dict[str, Any]], dict[str, str]]:
    """``(Outcomes [k, N], k setting infos, {condition: instruction})``: ``evaluate(evalset,
    [[]])`` (a teacher-forced or generation pass, hooks off) on the set's items with each
    instruction."""
    from probing.steering.sweep import INFO_KEYS

    merged, infos, texts = None, [], {}
    for cond, text, after in prompt_settings(prompting, mode):
        es = replace(evalset, prompts=instructed_prompts(evalset.questions, template, tokenizer,
                                                         text, after))
        out = evaluate(es, [[]])
        merged = out if merged is None else merge_outcomes(merged, out)
        infos.append({**dict.fromkeys(INFO_KEYS), "intervention": "prompt", "condition": cond})
        texts[cond] = text
    return merged, infos, texts

