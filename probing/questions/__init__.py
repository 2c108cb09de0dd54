"""Question sets: one record type, loaders for the paper's benchmarks and local files.

``load_question_set(name, ...)`` dispatches to a loader by name; loaders are imported lazily.
Every loader has the signature ``loader(path: str | None, split: str | None, **options)
-> list[Question]``; sampling (``n``, ``seed``) is applied here, balanced per label.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from probing.errors import LirefError
from probing.questions.record import LABEL_TO_INT, LABELS, Label, Question, check_classes
from probing.questions.sampling import dedupe_questions, sample_balanced

__all__ = [
    "DataConfig",
    "FILE_LABELLED_SETS",
    "LABELS",
    "LABEL_TO_INT",
    "Label",
    "Question",
    "QUESTION_SETS",
    "check_classes",
    "load_question_set",
    "load_questions",
    "register_question_set",
]

#: name -> "module:function" of its loader (imported on first use).
QUESTION_SETS: dict[str, str] = {
    "mmlu_pro": "probing.questions.mmlu_pro:load_mmlu_pro",
    "gsm8k": "probing.questions.gsm8k:load_gsm8k",
    "mgsm": "probing.questions.mgsm:load_mgsm",
    "popqa": "probing.questions.popqa:load_popqa",
    "jsonl": "probing.questions.tabular:load_jsonl",
    "csv": "probing.questions.tabular:load_csv",
    "tsv": "probing.questions.tabular:load_tsv",
    "organism": "probing.organism.questions:load_organism_questions",
    # built per model by the jobs (probing.conflicts.prepare_sets), then read from the built file
    "popqa_conflict": "probing.conflicts.build:load_conflict_set",
    "organism_conflict": "probing.conflicts.build:load_conflict_set",
}

#: the sets whose labels are read from the file: they take a data config's ``classes``
FILE_LABELLED_SETS: tuple[str, ...] = ("jsonl", "csv", "tsv")

_CUSTOM: dict[str, Callable[..., list[Question]]] = {}


def register_question_set(name: str, loader: Callable[..., list[Question]]) -> None:
    """Register a custom loader ``loader(path, split, **options) -> list[Question]``."""
    _CUSTOM[name] = loader


def _resolve(name: str) -> Callable[..., list[Question]]:
    if name in _CUSTOM:
        return _CUSTOM[name]
    target = QUESTION_SETS.get(name)
    if target is None:
        allowed = sorted({*QUESTION_SETS, *_CUSTOM})
        raise LirefError(f"unknown question set {name!r}; allowed: {allowed}")
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def load_question_set(
    name: str,
    path: str | None = None,
    split: str | None = None,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> list[Question]:
    """Load question set ``name`` (from a HF hub name or a local ``path``).

    Args:
        name: one of ``QUESTION_SETS`` (or a registered custom name).
        path: local file or folder; ``None`` uses the hub data set of that name.
        split: data set split (loader default when ``None``).
        n: keep at most ``n`` questions, balanced across labels, drawn with ``seed`` (after
            duplicates, by normalised text, are dropped).
        options: loader-specific options (column mapping, threshold, kinds, ...).

    Returns:
        list of ``Question`` in source order (with ``n``: the kept subset, still in source order).
    """
    questions = _resolve(name)(path=path, split=split, **options)
    if not questions:
        raise LirefError(f"question set {name!r} (path={path!r}, split={split!r}) is empty")
    questions = dedupe_questions(questions)
    if n is not None:
        questions = sample_balanced(questions, n=n, seed=seed)
    return questions


@dataclass
class DataConfig:
    """The labelled questions a job probes (``conf/data/*.yaml``).

    ``sets``: ``load_question_set`` mappings, concatenated then de-duplicated; ``n``: at most
    this many, balanced across labels; ``transfer``: ``[{name, sets}]`` other labelled sets the
    fitted probe is also read on; ``root``: folder the sets' paths are written against.
    """

    name: str = ""
    sets: list[Any] = field(default_factory=list)
    n: int | None = None
    transfer: list[Any] = field(default_factory=list)
    root: str | None = None
    #: the two label values of file-labelled sets, positive first (the direction points to it)
    classes: list[str] = field(default_factory=lambda: list(LABELS))

    def __post_init__(self) -> None:
        check_classes(self.classes)


def load_questions(sets: Sequence[Mapping[str, Any]], n: int | None = None, seed: int = 0,
                   organism_path: str | None = None, classes: Sequence[str] | None = None,
                   ) -> list[Question]:
    """Concatenate question sets (each a kwargs mapping for ``load_question_set``), drop
    duplicates across sets (normalised text), then draw at most ``n`` balanced across labels.

    ``organism_path``: checkpoint whose question sets an ``organism`` entry without a ``path``
    reads (so a retrained organism is probed on its own corpus). ``classes``: the data
    config's two class names, positive first (``None`` = reasoning, memory), given to every
    set that reads its labels from a file (``FILE_LABELLED_SETS``) unless it names its own."""
    if not sets:
        raise LirefError("data.sets is empty: name at least one question set")
    names = None if classes is None else list(check_classes(classes))
    questions: list[Question] = []
    for spec in sets:
        spec = dict(spec)
        if "name" not in spec:
            raise LirefError(f"question set entry {spec} has no 'name'")
        if spec["name"] == "organism" and spec.get("path") is None and organism_path:
            spec["path"] = organism_path
        if names is not None and spec["name"] in FILE_LABELLED_SETS:
            spec.setdefault("classes", names)
        questions.extend(load_question_set(**{"seed": seed, **spec}))
    questions = dedupe_questions(questions)  # across sets too (MGSM repeats GSM8K items)
    if n is not None:
        questions = sample_balanced(questions, n=n, seed=seed)
    return questions
