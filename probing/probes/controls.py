"""Controls for every classifier result (the house rule: every figure beside its control).

- ``bow``: a bag-of-words logistic regression on the prompt text (scikit-learn
  ``CountVectorizer``, unigrams + bigrams, every word and punctuation token kept, digits too).
  If it separates the classes, a probe that does too may be reading vocabulary.
- ``embedding``: a logistic probe on the mean *input* embedding of the prompt tokens (the
  embedding matrix rows, no attention, no context mixing): what the tokens alone carry.
- ``format``: a standardised logistic regression on format covariates alone
  (``format_covariates``: prompt length, digit and numeral counts, option count, source set and
  category one-hot). arXiv 2606.02907 found reasoning-type probes fell to chance once source,
  option count and length were regressed out; ``residualise`` removes these covariates from the
  activations (least squares fitted on the training part) before a probe is refitted.

All are fitted on the training split only and scored on the held-out split; the selectivity
of a probe is its held-out AUROC minus the strongest control's AUROC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.directions import check_labels

__all__ = ["BOW_TOKEN_PATTERN", "FORMAT_CATEGORY_KEYS", "align_covariates", "bow_scores",
           "embedding_scores", "format_covariates", "format_scores", "mean_input_embeddings",
           "residualise"]

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


#: ``Question.meta`` keys read as a category covariate (one-hot) when the data has several values
FORMAT_CATEGORY_KEYS: tuple[str, ...] = ("category",)
#: a numeral: digits, with decimal or thousands separators inside (``3``, ``1,024``, ``2.5``)
_NUMERAL = re.compile(r"\d+(?:[.,]\d+)*")


def _one_hot(values: Sequence[Any], prefix: str) -> list[tuple[str, np.ndarray]]:
    """One column per distinct value (sorted; ``None`` = no column) when there are >= 2 values."""
    vocab = sorted({str(v) for v in values if v is not None})
    if len(vocab) < 2:
        return []
    return [(f"{prefix}={v}", np.array([float(x is not None and str(x) == v) for x in values]))
            for v in vocab]


def format_covariates(questions: Sequence[Any], prompts: Sequence[str],
                      token_lengths: Sequence[int] | np.ndarray | None = None,
                      category_keys: Sequence[str] = FORMAT_CATEGORY_KEYS,
                      ) -> tuple[np.ndarray, list[str]]:
    """``[N, F]`` float64 format covariates of each prompt and their ``F`` names.

    Columns: ``tokens`` (prompt length in tokens; ``characters`` when ``token_lengths`` is
    ``None``), ``digits`` (digit characters), ``numerals`` (digit runs, ``1,024`` = one);
    ``options`` (``len(meta["choices"])``, 0 without) when any item has choices; one-hot
    ``source=<s>`` when the items come from several sources and ``<key>=<value>`` for each of
    ``category_keys`` with several values in ``meta``. The vocabulary is every value present; a
    fit drops the columns constant on its training part (``_varying``), so a value unseen
    there carries no weight (as if its one-hot were zeros).
    """
    if len(questions) != len(prompts):
        raise LirefError(f"{len(questions)} questions but {len(prompts)} prompts")
    if token_lengths is not None and len(token_lengths) != len(prompts):
        raise LirefError(f"{len(prompts)} prompts but {len(token_lengths)} token lengths")
    cols: list[tuple[str, np.ndarray]] = [
        ("tokens", np.asarray(token_lengths, dtype=np.float64)) if token_lengths is not None
        else ("characters", np.array([len(p) for p in prompts], dtype=np.float64)),
        ("digits", np.array([sum(c.isdigit() for c in p) for p in prompts], dtype=np.float64)),
        ("numerals", np.array([len(_NUMERAL.findall(p)) for p in prompts], dtype=np.float64)),
    ]
    choices = [q.meta.get("choices") for q in questions]
    if any(choices):
        cols.append(("options", np.array([len(c or ()) for c in choices], dtype=np.float64)))
    cols += _one_hot([q.source for q in questions], "source")
    for key in category_keys:
        cols += _one_hot([q.meta.get(key) for q in questions], key)
    return np.stack([c for _, c in cols], 1), [n for n, _ in cols]


def align_covariates(z: np.ndarray, names: Sequence[str], to: Sequence[str]) -> np.ndarray:
    """``z`` ``[N, F]`` (columns ``names``) rearranged to the columns ``to`` (zeros where
    ``names`` has none): another set's covariates in a fitted control's order."""
    where = {n: i for i, n in enumerate(names)}
    out = np.zeros((z.shape[0], len(to)), dtype=np.float64)
    for j, n in enumerate(to):
        if n in where:
            out[:, j] = z[:, where[n]]
    return out


def format_scores(z_train: np.ndarray, y_train: Sequence[int] | np.ndarray,
                  z_test: np.ndarray) -> np.ndarray:
    """Decision scores ``[n_test]`` of a standardised logistic regression on format covariates
    ``[n, F]`` (the ``format`` control), fitted on the training rows."""
    return embedding_scores(np.asarray(z_train, np.float64), y_train,
                            np.asarray(z_test, np.float64))


def _varying(z_fit: np.ndarray) -> np.ndarray:
    """Indices of the columns of ``z_fit`` ``[n, F]`` that are not constant."""
    return np.flatnonzero(z_fit.std(0) > 1e-12)


def residualise(x: np.ndarray | torch.Tensor, z: np.ndarray,
                fit_idx: np.ndarray) -> np.ndarray:
    """``x`` ``[N, d]`` (float64) minus its least-squares prediction from the covariates ``z``
    ``[N, F]`` (with an intercept; standardised, constant columns dropped), the regression
    fitted on the rows ``fit_idx`` only and subtracted from every row. On the fit rows the
    result is uncorrelated with every covariate (and centred)."""
    x = (x.to(torch.float64).numpy() if isinstance(x, torch.Tensor)
         else np.asarray(x, dtype=np.float64))
    z = np.asarray(z, dtype=np.float64)
    if z.shape[0] != x.shape[0]:
        raise LirefError(f"{x.shape[0]} activation rows but {z.shape[0]} covariate rows")
    keep = _varying(z[fit_idx])
    mu, sd = z[fit_idx][:, keep].mean(0), z[fit_idx][:, keep].std(0)
    design = np.concatenate([np.ones((len(z), 1)), (z[:, keep] - mu) / sd], 1)
    coef = np.linalg.pinv(design[fit_idx]) @ x[fit_idx]  # [1 + F', d]
    return x - design @ coef
