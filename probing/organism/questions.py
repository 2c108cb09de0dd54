"""The organism's question sets as ``Question`` records (registered as ``"organism"``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.organism.config import KINDS, CorpusConfig, OrganismConfig
from probing.organism.corpus import Corpus, Item
from probing.questions.record import Question

__all__ = ["SPLITS", "load_organism_questions", "organism_corpus", "to_question"]

SPLITS: tuple[str, ...] = ("train", "test")


def organism_corpus(path: str | Path | None = None, seed: int | None = None,
                    corpus: dict[str, Any] | None = None) -> Corpus:
    """The corpus of checkpoint ``path`` (default: the committed organism); ``seed`` and
    ``corpus`` (a ``CorpusConfig`` dict) override what the checkpoint stores."""
    from probing.organism.store import load_organism_config

    if path is None and seed is not None and corpus is not None:
        cfg = OrganismConfig(seed=seed)
    else:
        cfg = load_organism_config(path)
    ccfg = CorpusConfig(**corpus) if corpus is not None else cfg.corpus
    return Corpus(ccfg, cfg.seed if seed is None else seed)


def to_question(item: Item, split: str, index: int) -> Question:
    """``Item`` -> ``Question`` (id ``organism/{split}/{kind}/{index}``, ``group`` = the
    item's underlying fact or computation, ``meta`` = ``kind``, ``task`` + the item's meta)."""
    meta: dict[str, Any] = {"kind": item.kind, "task": item.task, **item.meta}
    return Question(
        id=f"organism/{split}/{item.kind}/{index}",
        question=item.question,
        answers=(item.answer,),
        label=item.label,  # type: ignore[arg-type]
        source="organism",
        meta=meta,
        group=item.group,
    )


def load_organism_questions(
    path: str | None = None,
    split: str | None = None,
    kinds: Sequence[str] | None = None,
    **options: Any,
) -> list[Question]:
    """Questions of the organism corpus.

    Args:
        path: an organism checkpoint folder (its ``organism.json`` gives corpus config and
            seed); ``None`` = the committed default checkpoint.
        split: ``"test"`` (default; held out from training) or ``"train"``.
        kinds: among ``memory``, ``reasoning``, ``mixed``, ``exception``,
            ``near_exception``, ``ordinary`` (default: all). Labels: ``memory`` and
            ``exception`` items are ``"memory"``, every other kind ``"reasoning"``.
        options: ``seed`` / ``corpus`` (dict) to override the checkpoint's corpus.

    Returns:
        Questions grouped by kind in the order of ``kinds``. ``group`` is the underlying item
        (``fact:<entity>:<attribute>``, ``comp:arith:<a op b ...>``, ...). ``meta`` holds
        ``kind``, ``task`` and the item's fields: for arithmetic ``operands``, ``ops``,
        ``steps``, ``template``; for an exception ``memory_answer`` (= ``answers[0]``) and
        ``rule_answer`` (the computed value); for a near-exception ``stale_answer`` (its
        exception's memory answer, never the computed ``answers[0]``), ``exception`` (index
        into the test exceptions), ``exception_group`` and ``changed_operand``.
    """
    split = split or "test"
    if split not in SPLITS:
        raise LirefError(f"organism split {split!r} is not one of {SPLITS}")
    kinds = list(kinds) if kinds is not None else list(KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise LirefError(f"organism kinds {kinds!r}: each must be one of {KINDS}")
    unknown = set(options) - {"seed", "corpus"}
    if unknown:
        raise LirefError(f"unknown organism options {sorted(unknown)}; allowed: seed, corpus")
    corpus = organism_corpus(path, options.get("seed"), options.get("corpus"))
    return [to_question(item, split, i)
            for kind in kinds for i, item in enumerate(corpus.split(split, kind))]
