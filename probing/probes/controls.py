"""Controls for every classifier result (the house rule: every figure beside its control).

- ``bow``: a bag-of-words logistic regression on the prompt text (scikit-learn
  ``CountVectorizer``, unigrams + bigrams, every word and punctuation token kept, digits too).
  If it separates the classes, a probe that does too may be reading vocabulary.
- ``embedding``: a logistic probe on the mean *input* embedding of the prompt tokens (the
  embedding matrix rows, no attention, no context mixing): what the tokens alone carry.

Both are fitted on the training split only and scored on the held-out split; the selectivity
of a probe is its held-out AUROC minus the bag-of-words AUROC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.directions import check_labels

__all__ = ["BOW_TOKEN_PATTERN", "bow_scores", "embedding_scores", "mean_input_embeddings"]

#: words (letters/digits/underscore, single characters included) and single punctuation marks
BOW_TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"


def bow_scores(train_texts: Sequence[str], y_train: Sequence[int] | np.ndarray,
               test_texts: Sequence[str], C: float = 1.0, ngram_range: tuple[int, int] = (1, 2),
               max_iter: int = 2000) -> np.ndarray:
    """Decision scores ``[n_test]`` (> 0 = reasoning) of a bag-of-words logistic regression
    fitted on ``train_texts`` (vocabulary from the training texts only); 0 sits at the threshold
    with the best balanced accuracy on the training texts, as for every probe."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    y = check_labels(np.empty((len(train_texts), 0)), y_train)
    vec = CountVectorizer(ngram_range=ngram_range, token_pattern=BOW_TOKEN_PATTERN,
                          lowercase=True, binary=True)
    try:
        x_train = vec.fit_transform(list(train_texts))
    except ValueError as exc:  # empty vocabulary
        raise LirefError(f"bag-of-words control: the training texts have no tokens ({exc})") from exc
    from probing.stats import balanced_threshold

    clf = LogisticRegression(C=C, max_iter=max_iter).fit(x_train, y)
    cut = balanced_threshold(y, clf.decision_function(x_train))
    return clf.decision_function(vec.transform(list(test_texts))) - cut


@torch.no_grad()
def mean_input_embeddings(model: Any, tokenizer: Any, prompts: Sequence[str],
                          add_special_tokens: bool = True) -> torch.Tensor:
    """``[N, d_model]`` float32: the mean of the input-embedding rows of each prompt's tokens
    (``model.get_input_embeddings()``; no forward pass, no positions, no context)."""
    from probing.activations.extract import tokenize_prompts

    table = model.get_input_embeddings()
    out = torch.empty((len(prompts), table.weight.shape[1]), dtype=torch.float32)
    for i, ids in enumerate(tokenize_prompts(tokenizer, prompts, add_special_tokens)):
        idx = torch.tensor(ids, dtype=torch.long, device=table.weight.device)
        out[i] = table(idx).float().mean(0).cpu()
    return out


def embedding_scores(x_train: torch.Tensor | np.ndarray, y_train: Sequence[int] | np.ndarray,
                     x_test: torch.Tensor | np.ndarray) -> np.ndarray:
    """Decision scores ``[n_test]`` of a standardised logistic probe on embedding features."""
    from probing.probes.estimators import LogisticProbe

    return LogisticProbe().fit(x_train, y_train).decision_function(x_test)
