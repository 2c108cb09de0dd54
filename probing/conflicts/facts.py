"""Facts to put in conflict with a statement: a subject, a relation, its gold answers and, drawn
once per fact whatever the model, a substitute object of the same relation.

A PopQA row (``question``, ``prop``, ``possible_answers``) becomes a ``Fact`` when its relation
has a ``RelationTemplate``: the subject is read back from the question with the relation's
question template (``"In what country is {subject}?"``), and the relation's statement template
(``"{subject} is in {object}."``) states any object about it. The substitute is drawn, seeded by
the fact, from the other objects of the relation in the same file and is never an alias of the
gold, so every model gets the same counterfactual statements.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from probing.errors import LirefError
from probing.evaluation.scorers import normalize_text

__all__ = [
    "POPQA_RELATIONS",
    "Fact",
    "RelationTemplate",
    "draw_substitutes",
    "facts_from_rows",
    "relation_templates",
]


@dataclass(frozen=True)
class RelationTemplate:
    """How a relation is asked and stated: ``question`` has the field ``{subject}`` (it must
    match the data's question text exactly), ``statement`` the fields ``{subject}`` and
    ``{object}``."""

    question: str
    statement: str

    def __post_init__(self) -> None:
        if "{subject}" not in self.question:
            raise LirefError(f"relation question template {self.question!r} has no {{subject}}")
        if "{subject}" not in self.statement or "{object}" not in self.statement:
            raise LirefError(f"relation statement template {self.statement!r} needs {{subject}} "
                             "and {object}")

    def subject(self, question: str) -> str | None:
        """The subject of ``question`` under this template, ``None`` when it does not match."""
        head, tail = self.question.split("{subject}", 1)
        match = re.fullmatch(re.escape(head) + "(.+?)" + re.escape(tail), question.strip())
        return match.group(1).strip() if match else None

    def state(self, subject: str, obj: str) -> str:
        return self.statement.format(subject=subject, object=obj)


#: PopQA's question templates (Mallen et al. 2023) and a statement for each relation whose object
#: is a short name; ``conflict.relations`` in the config overrides or extends them.
POPQA_RELATIONS: dict[str, dict[str, str]] = {
    "country": {"question": "In what country is {subject}?",
                "statement": "{subject} is in {object}."},
    "capital": {"question": "What is the capital of {subject}?",
                "statement": "The capital of {subject} is {object}."},
    "capital of": {"question": "What is {subject} the capital of?",
                   "statement": "{subject} is the capital of {object}."},
    "sport": {"question": "What sport does {subject} play?",
              "statement": "{subject} plays {object}."},
    "religion": {"question": "What is the religion of {subject}?",
                 "statement": "The religion of {subject} is {object}."},
    "occupation": {"question": "What is {subject}'s occupation?",
                   "statement": "{subject}'s occupation is {object}."},
    "genre": {"question": "What genre is {subject}?",
              "statement": "The genre of {subject} is {object}."},
    "color": {"question": "What color is {subject}?",
              "statement": "The color of {subject} is {object}."},
    "place of birth": {"question": "In what city was {subject} born?",
                       "statement": "{subject} was born in {object}."},
}


def relation_templates(relations: Mapping[str, Any]) -> dict[str, RelationTemplate]:
    """``{relation: RelationTemplate}`` from a config mapping of ``{question, statement}``."""
    if not relations:
        raise LirefError("conflict.relations is empty: name at least one relation with its "
                         "question and statement templates")
    out = {}
    for name, spec in relations.items():
        if not isinstance(spec, Mapping) or set(spec) != {"question", "statement"}:
            raise LirefError(f"conflict.relations[{name!r}] = {spec!r}; allowed: a mapping with "
                             "exactly 'question' and 'statement'")
        out[str(name)] = RelationTemplate(str(spec["question"]), str(spec["statement"]))
    return out


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, gold) fact and its drawn substitute.

    ``id``: ``<source>:<relation>:<normalised subject>`` (also the group of every item built
    from it); ``aliases``: the gold answers; ``substitute`` / ``substitute_aliases``: another
    object of the relation (none of its aliases is a gold alias)."""

    id: str
    relation: str
    subject: str
    question: str
    aliases: tuple[str, ...]
    statement: str  # the relation's statement template
    substitute: str = ""
    substitute_aliases: tuple[str, ...] = field(default=())

    def state(self, obj: str) -> str:
        return self.statement.format(subject=self.subject, object=obj)


def facts_from_rows(rows: Iterable[Mapping[str, Any]], relations: Mapping[str, RelationTemplate],
                    source: str = "popqa") -> tuple[list[Fact], dict[str, int]]:
    """Facts of the rows whose ``prop`` has a template (first row of a repeated fact kept),
    and ``{"no_template": n, "unparsed": n, "repeated": n, "no_answer": n}`` of those skipped."""
    facts: list[Fact] = []
    seen: set[str] = set()
    skipped = {"no_template": 0, "unparsed": 0, "repeated": 0, "no_answer": 0}
    for row in rows:
        relation = str(row.get("prop", ""))
        template = relations.get(relation)
        if template is None:
            skipped["no_template"] += 1
            continue
        question = str(row["question"]).strip()
        subject = template.subject(question)
        aliases = tuple(a for a in (str(x).strip() for x in row["possible_answers"]) if a)
        if subject is None:
            skipped["unparsed"] += 1
            continue
        if not aliases:
            skipped["no_answer"] += 1
            continue
        fid = f"{source}:{relation}:{normalize_text(subject)}"
        if fid in seen:
            skipped["repeated"] += 1
            continue
        seen.add(fid)
        facts.append(Fact(fid, relation, subject, question, aliases, template.statement))
    return facts, skipped


def _norms(aliases: Sequence[str]) -> set[str]:
    return {n for n in (normalize_text(a) for a in aliases) if n}


def draw_substitutes(facts: Sequence[Fact], seed: int = 0) -> list[Fact]:
    """Each fact with a substitute: an object of the same relation (the first alias of another
    fact's gold), drawn with ``random.Random(f"{seed}/{fact.id}")`` among those sharing no
    normalised alias with the gold. Depends only on the facts and the seed, never on a model.
    A fact whose relation offers no such object is dropped."""
    pools: dict[str, dict[str, tuple[str, ...]]] = {}
    for f in facts:  # the first fact's aliases per canonical name; drawn in name order
        pools.setdefault(f.relation, {}).setdefault(normalize_text(f.aliases[0]), f.aliases)
    out = []
    for f in facts:
        gold = _norms(f.aliases)
        objects = [a for _, a in sorted(pools[f.relation].items()) if not (_norms(a) & gold)]
        if not objects:
            continue
        pick = random.Random(f"{seed}/{f.id}").choice(objects)
        out.append(Fact(f.id, f.relation, f.subject, f.question, f.aliases, f.statement,
                        pick[0], tuple(pick)))
    return out
