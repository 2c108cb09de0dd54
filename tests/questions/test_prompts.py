"""Prompt templates: the paper's plain prompt, few-shot, choices and chat templates."""

from __future__ import annotations

from typing import Any

import pytest

from probing.errors import LirefError
from probing.questions import Question
from probing.questions.prompts import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    format_prompt,
    format_prompts,
    render_choices,
)

MC = Question(
    id="mmlu_pro/test/1",
    question="What is the derivative of x^2?",
    answers=("B", "2x"),
    label="reasoning",
    source="mmlu_pro",
    meta={"choices": ["x", "2x", "x^2"], "answer_index": 1},
)
PLAIN = Question(
    id="p/0", question="Who wrote Hamlet?", answers=("Shakespeare",), label="memory", source="p"
)


def test_default_prompt_is_the_papers() -> None:
    assert DEFAULT_TEMPLATE == "Q: {question}\nA: "
    assert format_prompt(PLAIN) == "Q: Who wrote Hamlet?\nA: "
    assert format_prompt("What is 2 + 2?") == "Q: What is 2 + 2?\nA: "
    # choices are off by default (the paper's plain prompt)
    assert format_prompt(MC) == "Q: What is the derivative of x^2?\nA: "


def test_format_prompts_list_and_custom_template() -> None:
    t = PromptTemplate(template="Question: {question}\nAnswer:")
    assert format_prompts([PLAIN, "x?"], t) == [
        "Question: Who wrote Hamlet?\nAnswer:",
        "Question: x?\nAnswer:",
    ]
    assert format_prompts([]) == []


def test_few_shot_prepended_in_same_format() -> None:
    t = PromptTemplate(few_shot=[["What is 1 + 1?", "2"], ("Capital of France?", "Paris")])
    assert t.few_shot == (("What is 1 + 1?", "2"), ("Capital of France?", "Paris"))
    assert format_prompt(PLAIN, t) == (
        "Q: What is 1 + 1?\nA: 2\n\nQ: Capital of France?\nA: Paris\n\nQ: Who wrote Hamlet?\nA: "
    )
    t2 = PromptTemplate(few_shot=(("a?", "b"),), separator="\n")
    assert format_prompt("c?", t2) == "Q: a?\nA: b\nQ: c?\nA: "


def test_choices_rendering_option() -> None:
    t = PromptTemplate(choices=True)
    assert format_prompt(MC, t) == ("Q: What is the derivative of x^2?\nA. x\nB. 2x\nC. x^2\nA: ")
    # questions without choices are unchanged
    assert format_prompt(PLAIN, t) == "Q: Who wrote Hamlet?\nA: "
    t2 = PromptTemplate(choices=True, choice_format="({letter}) {text}")
    assert "(B) 2x" in format_prompt(MC, t2)
    assert render_choices(["p", "q"]) == "A. p\nB. q"
    with pytest.raises(LirefError, match="at most 26"):
        render_choices([str(i) for i in range(27)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"template": "Q: {text}\nA: "}, r"exactly the field '\{question\}', found \['text'\]"),
        ({"template": "no field"}, r"found \[\]"),
        ({"template": "{question} {answer}"}, r"found \['answer', 'question'\]"),
        ({"template": "Q: {question"}, "not a valid format string"),
        ({"choice_format": "{letter}) {option}"}, r"only \{letter\} and \{text\}"),
        ({"few_shot": [("only a question",)]}, "must be a \\(question, answer\\) pair"),
        ({"few_shot": ["ab"]}, "must be a \\(question, answer\\) pair"),
    ],
)
def test_bad_templates(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(LirefError, match=match):
        PromptTemplate(**kwargs)


class RecordingTokenizer:
    """Stand-in with ``apply_chat_template`` that records its call."""

    chat_template = "stub"

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def apply_chat_template(self, messages: list[dict[str, str]], **kw: Any) -> str:
        self.calls.append((messages, kw))
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def test_chat_messages_and_generation_prompt() -> None:
    tok = RecordingTokenizer()
    t = PromptTemplate(chat=True, system="Be brief.", few_shot=(("1+1?", "2"),))
    out = format_prompt(PLAIN, t, tok)
    messages, kw = tok.calls[0]
    assert kw == {"tokenize": False, "add_generation_prompt": True}
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: 1+1?\nA:"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Q: Who wrote Hamlet?\nA:"},
    ]
    assert out.endswith("user:Q: Who wrote Hamlet?\nA:|assistant:")


def test_chat_with_real_hf_tokenizer() -> None:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "Q": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    with pytest.raises(LirefError, match="has no chat template"):
        format_prompt(PLAIN, PromptTemplate(chat=True), tok)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    t = PromptTemplate(template="{question}", chat=True)
    assert format_prompt(PLAIN, t, tok) == "<|user|>Who wrote Hamlet?\n<|assistant|>"
    # a tokenizer is ignored without chat
    assert format_prompt(PLAIN, PromptTemplate(), tok) == "Q: Who wrote Hamlet?\nA: "


def test_chat_needs_tokenizer() -> None:
    with pytest.raises(LirefError, match="needs a tokenizer"):
        format_prompt(PLAIN, PromptTemplate(chat=True))
