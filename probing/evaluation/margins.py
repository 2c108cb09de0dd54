"""Teacher-forced answer scores: log-probabilities of candidate answers, no generation.

For each prompt and each candidate answer ``a``: ``log P(a | prompt)`` (summed over the answer's
tokens) and whether every token of ``a`` is the model's argmax under teacher forcing (for a
one-token answer: whether greedy decoding would start with it). The margin between two modes'
answers (the organism's rule vs memory answer, computed vs stale answer) is a difference of two
columns. When every candidate of a prompt is one token after the same context (the organism),
one forward pass of the prompt scores them all; otherwise each candidate is one row
``context + answer``.

Tokenisation: the answer's tokens are those of ``tokenize(prompt + answer)`` after its longest
common prefix with ``tokenize(prompt)``; the context is that prefix (a trailing space of the
prompt that merges into the answer's first token belongs to the answer, as in lm-eval). After a
prompt that ends without whitespace (``"...A:"``) an answer is scored with one leading space
(``" Paris"``), the way such a prompt is continued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from probing.batching import model_device, pad_right
from probing.errors import LirefError

__all__ = ["CandidateScores", "score_candidates", "split_answer"]


@dataclass
class CandidateScores:
    """``logprob [N, K]`` float64 (``log P(candidate k | prompt n)``) and ``greedy [N, K]`` bool
    (every token of candidate k is the argmax under teacher forcing)."""

    logprob: np.ndarray
    greedy: np.ndarray

    def margin(self, a: int = 0, b: int = 1) -> np.ndarray:
        """``[N]`` ``log P(candidate a) - log P(candidate b)``."""
        return self.logprob[:, a] - self.logprob[:, b]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def split_answer(tokenizer: Any, prompt: str, answer: str, add_special_tokens: bool = True,
                 ) -> tuple[list[int], list[int]]:
    """``(context ids, answer ids)`` of ``prompt + answer`` (see the module docstring)."""
    if prompt and not prompt[-1].isspace() and answer and not answer[0].isspace():
        answer = " " + answer
    ids_p = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    ids_full = tokenizer(prompt + answer, add_special_tokens=add_special_tokens)["input_ids"]
    cut = _common_prefix(list(ids_p), list(ids_full))
    if cut == 0 or cut == len(ids_full):
        raise LirefError(f"cannot score answer {answer!r} after prompt {prompt[-40:]!r}: it adds "
                         f"no token of its own (or the prompt has none)")
    return list(ids_full[:cut]), list(ids_full[cut:])


@dataclass
class _Row:
    """One forward row: ``ids`` (context, plus the answer in per-answer rows), the context
    length, and the candidates ``(k, answer ids)`` it scores."""

    item: int
    ids: list[int]
    context: int
    answers: list[tuple[int, list[int]]]


@torch.no_grad()
def score_candidates(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    batch_size: int = 64,
    add_special_tokens: bool = True,
    steering: Any | None = None,
    row_settings: Sequence[int] | None = None,
    progress: bool = False,
) -> CandidateScores:
    """Teacher-forced scores of ``candidates[n]`` (K answers each) after ``prompts[n]``.

    Args:
        steering, row_settings: a ``probing.steering.Steering`` handle and the setting of each
            prompt (``-1`` = none): each batch's rows get their settings (and their prompt
            lengths, so ``positions="prompt"`` covers the context and ``"generated"`` the
            answer tokens). Without the handle, a surrounding ``steer`` sees each row as all
            prompt (answer tokens included).

    Returns:
        ``CandidateScores`` with ``[N, K]`` arrays in the order of ``prompts``.
    """
    n = len(prompts)
    if len(candidates) != n:
        raise LirefError(f"{len(candidates)} candidate lists for {n} prompts; need one each")
    k = len(candidates[0]) if n else 0
    if any(len(c) != k for c in candidates) or (n and k == 0):
        raise LirefError("every prompt needs the same number (>= 1) of candidate answers")
    if row_settings is not None and len(row_settings) != n:
        raise LirefError(f"{len(row_settings)} row settings for {n} prompts")
    split_cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def split(p: str, a: str) -> tuple[list[int], list[int]]:
        key = (p, a)
        if key not in split_cache:
            split_cache[key] = split_answer(tokenizer, p, a, add_special_tokens)
        return split_cache[key]

    # one row per prompt when every candidate is one token after one context, else per answer
    rows: list[_Row] = []
    for i, (p, cands) in enumerate(zip(prompts, candidates, strict=True)):
        parts = [split(p, a) for a in cands]
        contexts = {tuple(c) for c, _ in parts}
        if len(contexts) == 1 and all(len(ans) == 1 for _, ans in parts):
            ctx = parts[0][0]
            rows.append(_Row(i, ctx, len(ctx), [(j, ans) for j, (_, ans) in enumerate(parts)]))
        else:
            rows.extend(_Row(i, c + ans, len(c), [(j, ans)]) for j, (c, ans) in enumerate(parts))
    logprob = np.zeros((n, k), dtype=np.float64)
    misses = np.zeros((n, k), dtype=np.int64)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r].ids))
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="teacher-forced", disable=not progress or len(starts) < 4):
            batch = [rows[r] for r in order[start : start + batch_size]]
            ids, mask = pad_right([b.ids for b in batch], pad_id)
            if steering is not None:
                steering.set_rows(None if row_settings is None else
                                  [int(row_settings[b.item]) for b in batch])
                steering.set_prompt_lengths([b.context for b in batch])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           use_cache=False).logits
            # every answer token t of candidate j is predicted at the position before it
            r_idx, pos, tgt, item, cand = [], [], [], [], []
            for r, row in enumerate(batch):
                for j, ans in row.answers:
                    for t, token in enumerate(ans):
                        r_idx.append(r)
                        pos.append(row.context - 1 + t)
                        tgt.append(token)
                        item.append(row.item)
                        cand.append(j)
            r_t, pos_t = torch.tensor(r_idx), torch.tensor(pos)
            tgt_t = torch.tensor(tgt, device=logits.device)
            picked = logits[r_t, pos_t].float()  # [M, V]
            lp = (picked.gather(1, tgt_t[:, None])[:, 0] - torch.logsumexp(picked, dim=1))
            hit = picked.argmax(1) == tgt_t
            np.add.at(logprob, (item, cand), lp.double().cpu().numpy())
            np.add.at(misses, (item, cand), (~hit).long().cpu().numpy())
    finally:
        model.train(was_training)
        if steering is not None:
            steering.set_prompt_lengths(None)
    return CandidateScores(logprob, misses == 0)

