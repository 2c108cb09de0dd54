"""The one record type every question set is turned into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from probing.errors import LirefError

Label = Literal["reasoning", "memory"]
LABELS: tuple[str, ...] = ("reasoning", "memory")
#: Integer code used for probe targets: reasoning = 1, memory = 0.
LABEL_TO_INT: dict[str, int] = {"reasoning": 1, "memory": 0}


@dataclass(frozen=True)
class Question:
    """One question.

    Attributes:
        id: unique within its source, e.g. ``"gsm8k/test/17"``.
        question: the question text (no prompt template applied).
        answers: accepted answer strings (the first one is the canonical gold answer).
        label: ``"reasoning"`` or ``"memory"``.
        source: the question set it came from, e.g. ``"gsm8k"``.
        meta: anything else (multiple-choice ``choices``, ``reasoning_score``, ``kind``, ...).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    label: Label
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise LirefError(f"question {self.id!r}: label {self.label!r} is not one of {LABELS}")
        if not isinstance(self.answers, tuple):
            object.__setattr__(self, "answers", tuple(self.answers))

    @property
    def target(self) -> int:
        """Probe target: 1 for reasoning, 0 for memory."""
        return LABEL_TO_INT[self.label]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["answers"] = list(self.answers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        return cls(
            id=str(d["id"]),
            question=str(d["question"]),
            answers=tuple(d.get("answers", ())),
            label=d["label"],
            source=str(d.get("source", "")),
            meta=dict(d.get("meta", {})),
        )
