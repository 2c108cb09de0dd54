"""The stage functions the jobs are made of (``probing.probes.run``)."""

from __future__ import annotations

import pytest

from probing.errors import LirefError
from probing.probes.data import extract_for_questions
from probing.questions import Question, load_questions
from probing.questions.prompts import PromptTemplate, prompt_template
from tests.job_fixtures import write_questions

QS = [Question(id=f"q{i}", question=f"what is {i} plus {i} ?", answers=(str(2 * i),),
               label="reasoning" if i % 2 else "memory", source="t") for i in range(6)]


def test_chat_prompts_are_tokenized_without_a_second_bos(tiny_llama, tmp_path):
    model, tok = tiny_llama
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    plain = extract_for_questions(model, tok, QS, tmp_path, layers=[0])
    chat = extract_for_questions(model, tok, QS, tmp_path, layers=[0],
                                 template=PromptTemplate(chat=True))
    assert plain.manifest["add_special_tokens"] is True
    assert chat.manifest["add_special_tokens"] is False
    assert chat.folder != plain.folder


def test_load_questions_concatenates_balances_and_drops_duplicates(tmp_path):
    path = write_questions(tmp_path / "q.jsonl", n_per_label=10)
    qs = load_questions([{"name": "jsonl", "path": str(path)}], n=8, seed=1)
    assert len(qs) == 8 and sum(q.label == "reasoning" for q in qs) == 4
    # the same set twice: the second copy of every question is a duplicate
    both = load_questions([{"name": "jsonl", "path": str(path)}] * 2)
    assert len(both) == 20
    # duplicates up to case and spacing, inside one file, are dropped before sampling
    rows = path.read_text().splitlines()
    rows.append(rows[0].replace("what is 0 plus", "WHAT  is 0 plus").replace('"r0"', '"dup"'))
    path.write_text("\n".join(rows) + "\n")
    again = load_questions([{"name": "jsonl", "path": str(path)}])
    assert len(again) == 20 and "dup" not in {q.id for q in again}
    with pytest.raises(LirefError, match="data.sets is empty"):
        load_questions([])
    with pytest.raises(LirefError, match="has no 'name'"):
        load_questions([{"path": str(path)}])


def test_prompt_template_from_config():
    t = prompt_template({"template": "Question: {question}\nAnswer:",
                         "few_shot": [["1+1?", "2"]], "chat": False})
    assert t.few_shot == (("1+1?", "2"),)
    assert prompt_template(None).template == "Q: {question}\nA: "
