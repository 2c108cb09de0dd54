"""Knowledge conflicts: a statement before a question contradicts a fact the model knows; does
it answer from the statement (context) or from memory? Built per model (``build``), read with
probes and reference directions (``readout``, ``run``)."""

from probing.conflicts.build import (
    BEHAVIOURS,
    CONFLICT_SETS,
    KINDS,
    ConflictConfig,
    build_conflict_set,
    ensure_conflict_set,
    load_conflict_set,
    prepare_sets,
)
from probing.conflicts.facts import POPQA_RELATIONS, Fact, RelationTemplate

__all__ = [
    "BEHAVIOURS",
    "CONFLICT_SETS",
    "KINDS",
    "POPQA_RELATIONS",
    "ConflictConfig",
    "Fact",
    "RelationTemplate",
    "build_conflict_set",
    "ensure_conflict_set",
    "load_conflict_set",
    "prepare_sets",
]
