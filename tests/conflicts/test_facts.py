"""Facts from PopQA-like rows: subjects read back with the templates, substitutes never an alias."""

from __future__ import annotations

import pytest

from probing.conflicts.facts import (
    POPQA_RELATIONS,
    RelationTemplate,
    draw_substitutes,
    facts_from_rows,
    relation_templates,
)
from probing.errors import LirefError
from probing.evaluation.scorers import normalize_text

ROWS = [
    {"question": "In what country is Alba?", "prop": "country",
     "possible_answers": ["France", "French Republic"]},
    {"question": "In what country is Bora?", "prop": "country",
     "possible_answers": ["Chile"]},
    {"question": "In what country is Cova?", "prop": "country",
     "possible_answers": ["French Republic", "France"]},
    {"question": "In what country is Alba?", "prop": "country",
     "possible_answers": ["France"]},  # the same fact again
    {"question": "What is the capital of Dune?", "prop": "capital",
     "possible_answers": ["Eton"]},
    {"question": "What is the capital of Fen?", "prop": "capital",
     "possible_answers": ["Gale"]},
    {"question": "Who is the author of Hark?", "prop": "author",  # no template
     "possible_answers": ["Ivo"]},
    {"question": "Where is Jura?", "prop": "country",  # does not match the template
     "possible_answers": ["Peru"]},
]


def test_subject_is_read_back_with_the_question_template() -> None:
    t = RelationTemplate(**POPQA_RELATIONS["occupation"])
    assert t.subject("What is George Rankin's occupation?") == "George Rankin"
    assert t.subject("What sport does X play?") is None
    assert t.state("A", "b") == "A's occupation is b."


def test_facts_keep_templated_parsed_first_rows_and_count_the_rest() -> None:
    facts, skipped = facts_from_rows(ROWS, relation_templates(POPQA_RELATIONS))
    assert [f.subject for f in facts] == ["Alba", "Bora", "Cova", "Dune", "Fen"]
    assert skipped == {"no_template": 1, "unparsed": 1, "repeated": 1, "no_answer": 0}
    assert facts[0].id == "popqa:country:alba"


def test_substitute_is_another_object_of_the_relation_never_a_gold_alias() -> None:
    facts, _ = facts_from_rows(ROWS, relation_templates(POPQA_RELATIONS))
    for seed in range(5):
        drawn = {f.subject: f for f in draw_substitutes(facts, seed)}
        for f in drawn.values():
            gold = {normalize_text(a) for a in f.aliases}
            assert not gold & {normalize_text(a) for a in f.substitute_aliases}
            assert f.substitute in {g.aliases[0] for g in facts if g.relation == f.relation}
        # France and French Republic are one entity: Alba and Cova can only get Chile
        assert drawn["Alba"].substitute == drawn["Cova"].substitute == "Chile"
        assert drawn["Dune"].substitute == "Gale" and drawn["Fen"].substitute == "Eton"


def test_substitutes_depend_on_the_seed_and_facts_only() -> None:
    rows = [{"question": f"In what country is S{i}?", "prop": "country",
             "possible_answers": [f"Land{i}"]} for i in range(30)]
    facts, _ = facts_from_rows(rows, relation_templates(POPQA_RELATIONS))
    a = [f.substitute for f in draw_substitutes(facts, 0)]
    assert a == [f.substitute for f in draw_substitutes(facts, 0)]
    assert a != [f.substitute for f in draw_substitutes(facts, 1)]
    # a fact's draw does not depend on the other facts' order
    rev = {f.id: f.substitute for f in draw_substitutes(facts[::-1], 0)}
    assert rev == {f.id: s for f, s in zip(facts, a, strict=True)}


@pytest.mark.parametrize("bad", [{}, {"country": {"question": "In what country?",
                                                  "statement": "{subject} is in {object}."}},
                                 {"country": {"question": "In {subject}?"}}])
def test_bad_relation_templates_are_one_clear_error(bad: dict) -> None:
    with pytest.raises(LirefError, match="relation"):
        relation_templates(bad)
