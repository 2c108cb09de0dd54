"""Labelled question sets ready for probing: prompts -> cached activations ``[N, L, d]`` plus
the control features (prompt texts, mean input embeddings, format covariates)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing.activations.cache import CachedActivations, cached_extract
from probing.probes.controls import (
    FORMAT_CATEGORY_KEYS,
    format_covariates,
    mean_input_embeddings,
)
from probing.questions import LABEL_TO_INT, Question
from probing.questions.prompts import PromptTemplate, format_prompts


def extract_for_questions(model: Any, tokenizer: Any, questions: Sequence[Question],
                          cache_dir: str | Path, layers: Sequence[int] | None = None,
                          position: str = "last", batch_size: int = 8,
                          template: PromptTemplate | None = None) -> CachedActivations:
    """Prompt the questions and return their (cached) activations ``[N, L, d]``."""
    return probe_data(model, tokenizer, questions, cache_dir, layers, position, batch_size,
                      template, controls=False).cached


@dataclass
class ProbeData:
    """One labelled question set ready for probing.

    Attributes:
        cached: activations ``[N, L, d]`` (from the cache).
        questions: the N questions (labels, groups, ids).
        prompts: the N prompt strings (the bag-of-words control reads them).
        embeddings: ``[N, d]`` mean input embedding of each prompt's tokens (the embedding
            control), or ``None``.
        template: the prompt template (recorded in every saved probe).
        token_lengths: ``[N]`` prompt lengths in tokens (the format control), or ``None``
            (then the prompt length in characters is used).
        category_keys: ``Question.meta`` keys read as a category covariate of the format
            control (the conflict stage uses ``("relation",)``).
    """

    cached: CachedActivations
    questions: list[Question]
    prompts: list[str]
    embeddings: torch.Tensor | None = None
    template: PromptTemplate = field(default_factory=PromptTemplate)
    token_lengths: np.ndarray | None = None
    category_keys: tuple[str, ...] = FORMAT_CATEGORY_KEYS

    @property
    def targets(self) -> np.ndarray:
        """``[N]`` int64: 1 reasoning, 0 memory."""
        return _targets(self.questions)

    @property
    def groups(self) -> list[str]:
        return [q.group for q in self.questions]

    def format_covariates(self) -> tuple[np.ndarray, list[str]]:
        """``[N, F]`` format covariates and their names (``probing.probes.controls``)."""
        return format_covariates(self.questions, self.prompts, self.token_lengths,
                                 self.category_keys)

    def controls(self) -> dict[str, Any]:
        """Inputs of the controls: ``{"texts": prompts, "embeddings": [N, d], "format":
        [N, F], "format_names": [F]}``."""
        out: dict[str, Any] = {"texts": self.prompts}
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings.numpy()
        out["format"], out["format_names"] = self.format_covariates()
        return out


def probe_data(model: Any, tokenizer: Any, questions: Sequence[Question], cache_dir: str | Path,
               layers: Sequence[int] | None = None, position: str = "last", batch_size: int = 8,
               template: PromptTemplate | None = None, controls: bool = True) -> ProbeData:
    """Prompts, cached activations ``[N, L, d]`` and (``controls``) mean input embeddings and
    prompt lengths in tokens."""
    template = template or PromptTemplate()
    prompts = format_prompts(questions, template, tokenizer)
    special = not template.chat  # a chat template's string already holds its BOS
    cached = cached_extract(model, tokenizer, prompts, cache_dir, layers=layers,
                            position=position, batch_size=batch_size,
                            labels=[q.label for q in questions], ids=[q.id for q in questions],
                            add_special_tokens=special)
    embeddings = lengths = None
    if controls:
        from probing.activations.extract import tokenize_prompts

        embeddings = mean_input_embeddings(model, tokenizer, prompts, special)
        lengths = np.array([len(ids) for ids in tokenize_prompts(tokenizer, prompts, special)],
                           dtype=np.int64)
    return ProbeData(cached, list(questions), prompts, embeddings, template, lengths)


def _targets(questions: Sequence[Question]) -> np.ndarray:
    return np.array([LABEL_TO_INT[q.label] for q in questions], dtype=np.int64)
