"""The one record type every question set is turned into."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from probing.errors import LirefError

Label = Literal["reasoning", "memory"]
LABELS: tuple[str, ...] = ("reasoning", "memory")
#: Integer code used for probe targets: reasoning = 1, memory = 0.
LABEL_TO_INT: dict[str, int] = {"reasoning": 1, "memory": 0}


def check_classes(classes: Sequence[str] | None) -> tuple[str, str]:
    """The two class names of a data config (``classes: [positive, negative]``), checked.

    A file's labels are these names; the first class is the positive one (probe target 1, the
    direction points towards it, stored as ``Question.label == "reasoning"``), the second the
    negative one (target 0, ``"memory"``). ``None`` = ``LABELS`` (reasoning, memory).
    """
    if classes is None:
        return LABELS[0], LABELS[1]
    if isinstance(classes, str) or len(classes) != 2:
        raise LirefError(f"classes must name two classes, positive first (e.g. [positive, "
                         f"negative]); got {classes!r}")
    names = (str(classes[0]).strip(), str(classes[1]).strip())
    if not all(names) or names[0].lower() == names[1].lower():
        raise LirefError(f"classes must be two different non-empty names; got {list(classes)}")
    return names


def normalize_question(text: str) -> str:
    """The text two questions must share to count as duplicates: Unicode NFKC, case-folded,
    whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


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
        group: the underlying item (paraphrases, the same fact, the same computation share
            one); held-out splits never put one group on both sides. Default: the normalised
            question text, so exact duplicates always share a group.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    label: Label
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", "text:" + normalize_question(self.question))
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
            group=str(d.get("group") or ""),
        )
