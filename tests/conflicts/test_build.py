"""Conflict sets built for a model: closed-book pass, three items per known fact, behaviour,
margins, caching keyed on the model, and the guard against another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import probing.conflicts.build as build
from probing.conflicts.build import (
    ConflictConfig,
    ensure_conflict_set,
    fact_group,
    known_answer,
    load_conflict_set,
    prepare_sets,
)
from probing.errors import LirefError
from probing.evaluation.scorers import normalize_text
from probing.fingerprint import model_fingerprint
from probing.model.loading import load_model
from probing.questions import load_question_set
from probing.questions.prompts import PromptTemplate
from tests.tiny_models import save_tiny_model

ROWS = ([{"question": f"In what country is Town{i}?", "prop": "country",
          "possible_answers": [f"Land{i % 5}", f"L{i % 5}"]} for i in range(12)]
        + [{"question": f"What is the capital of State{i}?", "prop": "capital",
            "possible_answers": [f"City{i}"]} for i in range(6)]
        + [{"question": "Who is the author of Book?", "prop": "author",
            "possible_answers": ["Writer"]}])


class FakeAnswers:
    """Stands in for greedy generation: closed-book, the gold for every other fact; after a
    counterfactual statement the statement's object, the gold or neither, in turn; after a
    consistent statement the gold. Counts its calls."""

    def __init__(self, rows: list[dict] | None = None) -> None:
        self.calls = 0
        self.gold = {r["question"]: r["possible_answers"][0] for r in rows or ROWS}

    def __call__(self, model, tokenizer, prompts, template, cfg):  # noqa: ANN001, ANN204
        self.calls += 1
        out = []
        for k, p in enumerate(prompts):
            body = p.split("Q: ", 1)[1].split("\n", 1)[0]
            if body.count("?") == 1 and body.startswith(("In what", "What is")):
                i = int("".join(c for c in body.split("?")[0] if c.isdigit()))
                gold = self.gold[body]
                out.append(f" {gold} is the answer" if i % 2 == 0 else " no idea")
            else:
                statement, q = body.split(". ", 1)
                stated = statement.split(" ")[-1]  # "Town0 is in Land3" -> Land3
                gold = self.gold[q]
                turn = k % 3
                out.append(f" {stated}" if turn == 0 else f" {gold}" if turn == 1 else " hmm")
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "m")
    return load_model(str(folder))


@pytest.fixture
def popqa_file(tmp_path: Path) -> Path:
    path = tmp_path / "popqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeAnswers:
    answers = FakeAnswers()
    monkeypatch.setattr(build, "_generate", answers)
    return answers


def test_known_answer_is_the_alias_given() -> None:
    assert known_answer(" It is the French Republic.", ["France", "French Republic"]) \
        == "French Republic"
    assert known_answer(" Spain", ["France"]) is None


def test_set_has_three_items_per_known_fact_one_group(tiny, popqa_file, fake, tmp_path) -> None:
    model, tok = tiny
    path = ensure_conflict_set(model, tok, "popqa_conflict", str(popqa_file), None,
                               ConflictConfig(), PromptTemplate(), tmp_path / "cache")
    data = json.loads(path.read_text())
    assert data["model_fingerprint"] == model_fingerprint(model)
    # relations with a template only; every other fact known (even index)
    assert data["counts"]["country"]["questions"] == 12 and "author" not in data["counts"]
    assert data["counts"]["country"]["known"] == 6 and data["counts"]["capital"]["known"] == 3
    items = load_conflict_set(built=str(path))
    assert len(items) == 3 * 9
    by_group: dict[str, list] = {}
    for q in items:
        by_group.setdefault(q.group, []).append(q)
        assert fact_group(q.id) == q.group
    assert all(sorted(q.meta["kind"] for q in g) == ["closed_book", "consistent",
                                                      "counterfactual"]
               for g in by_group.values())
    for q in items:
        if q.meta["kind"] == "counterfactual":
            gold = {normalize_text(a) for a in q.answers}
            assert normalize_text(q.meta["context_answer"]) not in gold
            assert q.question.startswith(f"{q.meta['subject']} is in {q.meta['context_answer']}.")\
                or q.question.startswith(f"The capital of {q.meta['subject']} is "
                                         f"{q.meta['context_answer']}.")
            assert q.label == ("reasoning" if q.meta["behaviour"] == "context" else "memory")
        if q.meta["kind"] == "consistent":
            assert f" {q.meta['memory_answer']}" in q.question
    total = data["total"]
    assert total["context"] + total["memory"] + total["other"] == total["known"] == 9
    assert min(total["context"], total["memory"], total["other"]) >= 1


def test_margin_equals_a_hand_computation(tiny, popqa_file, fake, tmp_path) -> None:
    model, tok = tiny
    template = PromptTemplate()
    path = ensure_conflict_set(model, tok, "popqa_conflict", str(popqa_file), None,
                               ConflictConfig(), template, tmp_path / "cache")
    for q in load_conflict_set(built=str(path), kinds=["counterfactual"])[:3]:
        prompt = template.template.format(question=q.question)

        def logp(answer: str, prompt: str = prompt) -> float:
            ids_p = tok(prompt)["input_ids"]
            ids = tok(prompt + answer)["input_ids"]
            cut = next(i for i, (a, b) in enumerate(zip(ids_p + [-1], ids, strict=False))
                       if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
            return float(sum(logits[t - 1, ids[t]] for t in range(cut, len(ids))))

        hand = logp(q.meta["context_answer"]) - logp(q.meta["memory_answer"])
        assert q.meta["margin"] == pytest.approx(hand, abs=1e-4)


def test_built_once_per_model_and_refused_for_another(tiny, popqa_file, fake, tmp_path) -> None:
    model, tok = tiny
    cache = tmp_path / "cache"
    first = ensure_conflict_set(model, tok, "popqa_conflict", str(popqa_file), None,
                                ConflictConfig(), PromptTemplate(), cache)
    calls = fake.calls
    assert ensure_conflict_set(model, tok, "popqa_conflict", str(popqa_file), None,
                               ConflictConfig(), PromptTemplate(), cache) == first
    assert fake.calls == calls  # nothing generated again
    other = load_model(str(save_tiny_model("llama", tmp_path / "other", seed=1)))[0]
    with pytest.raises(LirefError, match="built for model fingerprint"):
        load_question_set("popqa_conflict", built=str(first),
                          model_fingerprint=model_fingerprint(other))
    second = ensure_conflict_set(other, tok, "popqa_conflict", str(popqa_file), None,
                                 ConflictConfig(), PromptTemplate(), cache)
    assert second != first and fake.calls > calls  # rebuilt for the other model
    # the same substitutes for every model: sets are comparable
    subs = [{q.group: q.meta["context_answer"] for q in load_conflict_set(
        built=str(p), kinds=["counterfactual"])} for p in (first, second)]
    common = subs[0].keys() & subs[1].keys()
    assert common and all(subs[0][g] == subs[1][g] for g in common)


def test_prepare_sets_fills_the_built_file_and_filters(tiny, popqa_file, fake, tmp_path) -> None:
    model, tok = tiny
    sets = prepare_sets([{"name": "popqa_conflict", "path": str(popqa_file),
                          "kinds": ["counterfactual"], "behaviours": ["context", "memory"]},
                         {"name": "popqa", "path": str(popqa_file)}],
                        model, tok, ConflictConfig(), PromptTemplate(), tmp_path / "cache",
                        add_prompt=True)
    assert sets[1] == {"name": "popqa", "path": str(popqa_file)}
    assert sets[0]["prompt"]["template"] == "Q: {question}\nA:"
    spec = {k: v for k, v in sets[0].items() if k != "prompt"}
    items = load_question_set(**spec)
    assert items and all(q.meta["behaviour"] in ("context", "memory") for q in items)


def test_unbuilt_set_and_bad_filters_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LirefError, match="built for one model"):
        load_question_set("popqa_conflict", path=str(tmp_path))
    with pytest.raises(LirefError, match="max_new_tokens"):
        ConflictConfig(max_new_tokens=0)


def test_conflict_prompt_drops_only_the_template_trailing_spaces() -> None:
    from probing.conflicts.build import conflict_template

    assert conflict_template(ConflictConfig(), PromptTemplate()).template == "Q: {question}\nA:"
    kept = conflict_template(ConflictConfig(strip_trailing_space=False), PromptTemplate())
    assert kept == PromptTemplate()
    chat = PromptTemplate(template="{question}\n", chat=True)
    assert conflict_template(ConflictConfig(), chat) == chat  # a newline is kept
