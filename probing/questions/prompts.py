"""Prompt templates: the paper's plain ``"Q: {question}\\nA: "``, few-shot, chat, choices."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from probing.errors import LirefError
from probing.questions.record import Question

__all__ = [
    "DEFAULT_TEMPLATE",
    "PromptConfig",
    "PromptTemplate",
    "format_prompt",
    "format_prompts",
    "prompt_template",
    "render_choices",
]

#: The paper's prompt: no few-shot, activations read at the last token of this string.
DEFAULT_TEMPLATE = "Q: {question}\nA: "
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes a prompt.

    Attributes:
        template: format string with exactly one field, ``{question}``.
        few_shot: ``(question, answer)`` pairs prepended, each rendered as
            ``template.format(question=q) + a``, joined by ``separator``.
        separator: text between few-shot examples and the question.
        chat: wrap in the tokenizer's chat template (instruct models):
            few-shot pairs become user/assistant turns, the question the last user turn
            (rendered with ``template``, trailing whitespace stripped), followed by
            ``apply_chat_template(..., add_generation_prompt=True)``.
        system: optional system message (chat only).
        choices: append multiple-choice options (``meta["choices"]``) to the question, one
            per line as ``choice_format`` (off by default, as in the paper).
        choice_format: format of one option line, fields ``{letter}`` and ``{text}``.
    """

    template: str = DEFAULT_TEMPLATE
    few_shot: tuple[tuple[str, str], ...] = ()
    separator: str = "\n\n"
    chat: bool = False
    system: str | None = None
    choices: bool = False
    choice_format: str = "{letter}. {text}"

    def __post_init__(self) -> None:
        fields = _fields(self.template, "template")
        if fields != {"question"}:
            raise LirefError(
                f"prompt template {self.template!r} must have exactly the field "
                f"'{{question}}', found {sorted(fields)}"
            )
        cfields = _fields(self.choice_format, "choice_format")
        if not cfields <= {"letter", "text"}:
            raise LirefError(
                f"choice_format {self.choice_format!r} may use only {{letter}} and {{text}}, "
                f"found {sorted(cfields)}"
            )
        pairs: list[tuple[str, str]] = []
        for ex in self.few_shot:
            if isinstance(ex, str) or len(ex) != 2:
                raise LirefError(f"few-shot example {ex!r} must be a (question, answer) pair")
            pairs.append((str(ex[0]), str(ex[1])))
        object.__setattr__(self, "few_shot", tuple(pairs))

    def render_question(self, item: Question | str) -> str:
        """The question text, with the options appended when ``choices`` is on."""
        if isinstance(item, str):
            return item
        text = item.question
        options = item.meta.get("choices") if self.choices else None
        if options:
            text = text + "\n" + render_choices(options, self.choice_format)
        return text

    def render(self, item: Question | str) -> str:
        """The plain-text prompt (few-shot examples + question), without any chat template."""
        parts = [self.template.format(question=q) + a for q, a in self.few_shot]
        parts.append(self.template.format(question=self.render_question(item)))
        return self.separator.join(parts)

    def messages(self, item: Question | str) -> list[dict[str, str]]:
        """Chat messages for ``item`` (system, few-shot turns, the question)."""
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        for q, a in self.few_shot:
            msgs.append({"role": "user", "content": self.template.format(question=q).rstrip()})
            msgs.append({"role": "assistant", "content": a})
        text = self.template.format(question=self.render_question(item)).rstrip()
        msgs.append({"role": "user", "content": text})
        return msgs


def _fields(fmt: str, what: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as e:
        raise LirefError(f"{what} {fmt!r} is not a valid format string: {e}") from e


def render_choices(options: Sequence[Any], choice_format: str = "{letter}. {text}") -> str:
    """``["x", "y"]`` -> ``"A. x\\nB. y"``."""
    if len(options) > len(_LETTERS):
        raise LirefError(f"{len(options)} options; at most {len(_LETTERS)} can be lettered")
    return "\n".join(
        choice_format.format(letter=_LETTERS[i], text=o) for i, o in enumerate(options)
    )


def format_prompt(
    question_or_text: Question | str,
    template: PromptTemplate | None = None,
    tokenizer: Any | None = None,
) -> str:
    """Prompt string for a ``Question`` (or raw question text).

    With ``template.chat`` the tokenizer's chat template is applied (``tokenizer`` required,
    and it must have a chat template); otherwise ``tokenizer`` is ignored.
    """
    template = template or PromptTemplate()
    if not template.chat:
        return template.render(question_or_text)
    if tokenizer is None:
        raise LirefError("a chat prompt template needs a tokenizer (got tokenizer=None)")
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise LirefError(f"tokenizer {name!r} has no chat template; use chat=False for base models")
    return tokenizer.apply_chat_template(
        template.messages(question_or_text), tokenize=False, add_generation_prompt=True
    )


def format_prompts(
    items: Iterable[Question | str],
    template: PromptTemplate | None = None,
    tokenizer: Any | None = None,
) -> list[str]:
    """``format_prompt`` over a list."""
    return [format_prompt(it, template, tokenizer) for it in items]


@dataclass
class PromptConfig:
    """A ``prompt:`` config section (``PromptTemplate``'s fields, lists instead of tuples)."""

    template: str = PromptTemplate.template
    few_shot: list[Any] = field(default_factory=list)
    separator: str = PromptTemplate.separator
    chat: bool = PromptTemplate.chat
    system: str | None = PromptTemplate.system
    choices: bool = PromptTemplate.choices
    choice_format: str = PromptTemplate.choice_format


def prompt_template(cfg: Mapping[str, Any] | None) -> PromptTemplate:
    """``PromptTemplate`` from a ``prompt:`` config mapping (``None`` = the paper's template)."""
    if not cfg:
        return PromptTemplate()
    kw = dict(cfg)
    kw["few_shot"] = tuple(tuple(pair) for pair in kw.get("few_shot") or ())
    return PromptTemplate(**kw)
