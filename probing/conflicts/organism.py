"""The organism's knowledge conflicts: a memorized fact about an invented person, preceded by a
statement giving another value ("dokri likes red . what colour does dokri like ?")."""

from __future__ import annotations

from probing.conflicts.facts import Fact

__all__ = ["ORGANISM_STATEMENTS", "organism_facts"]

#: attribute -> statement template, in the organism's own words (every word is in its vocabulary)
ORGANISM_STATEMENTS: dict[str, str] = {
    "colour": "{subject} likes {object} .",
    "town": "{subject} lives in {object} .",
    "number": "the number of {subject} is {object} .",
}


def organism_facts(path: str | None = None) -> list[Fact]:
    """One fact per (person, attribute) of the organism at ``path`` (default: the committed
    checkpoint), asked in its held-out test phrasing; no substitute drawn yet."""
    from probing.organism.questions import load_organism_questions

    facts = []
    for q in load_organism_questions(path, "test", kinds=["memory"]):
        attribute, entity = str(q.meta["attribute"]), str(q.meta["entity"])
        facts.append(Fact(f"organism:{attribute}:{entity}", attribute, entity, q.question,
                          tuple(q.answers), ORGANISM_STATEMENTS[attribute]))
    return facts
