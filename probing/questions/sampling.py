"""Balanced sampling of questions per label."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from probing.errors import LirefError
from probing.questions.record import LABELS, Question, normalize_question

__all__ = ["balanced_quotas", "dedupe_questions", "sample_balanced"]

log = logging.getLogger(__name__)


def dedupe_questions(questions: Sequence[Question]) -> list[Question]:
    """Keep the first of every set of questions with the same normalised text
    (``normalize_question``), so no duplicate can sit on both sides of a held-out split.
    Duplicates with different labels are dropped with the first kept and a warning."""
    seen: dict[str, Question] = {}
    out: list[Question] = []
    conflicts = 0
    for q in questions:
        key = normalize_question(q.question)
        first = seen.get(key)
        if first is None:
            seen[key] = q
            out.append(q)
        elif first.label != q.label:
            conflicts += 1
    if len(out) < len(questions):
        log.info("dropped %d duplicate question(s) (same normalised text)",
                 len(questions) - len(out))
    if conflicts:
        log.warning("%d duplicate question(s) had another label than their first copy; the "
                    "first copy's label was kept", conflicts)
    return out


def balanced_quotas(counts: dict[str, int], n: int) -> dict[str, int]:
    """How many to take per label: at most ``n`` in total, as equal as possible, never more
    than a label has. A label with too few items gives its unused share to the others."""
    quotas = dict.fromkeys(counts, 0)
    remaining = n
    open_labels = [lab for lab in counts if counts[lab] > 0]
    while remaining > 0 and open_labels:
        share, extra = divmod(remaining, len(open_labels))
        for i, lab in enumerate(open_labels):
            want = share + (1 if i < extra else 0)
            take = min(want, counts[lab] - quotas[lab])
            quotas[lab] += take
            remaining -= take
        open_labels = [lab for lab in open_labels if quotas[lab] < counts[lab]]
    return quotas


def sample_balanced(questions: Sequence[Question], n: int | None, seed: int = 0) -> list[Question]:
    """Keep at most ``n`` questions, balanced across the labels present.

    Each label gets ``n // k`` questions (``k`` labels present; the remainder goes to labels in
    ``LABELS`` order), a label with fewer gives its unused share to the others, and nothing is
    ever duplicated. Within a label, questions are drawn by a permutation seeded with ``seed``,
    so the draw is deterministic and a smaller ``n`` keeps a subset of a larger one.
    The kept questions are returned in their source order. ``n=None`` keeps everything.
    """
    if n is None:
        return list(questions)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LirefError(f"sample size n={n!r} must be a positive integer or None")
    groups: dict[str, list[int]] = {lab: [] for lab in LABELS}
    for i, q in enumerate(questions):
        groups.setdefault(q.label, []).append(i)
    counts = {lab: len(idx) for lab, idx in groups.items() if idx}
    quotas = balanced_quotas(counts, n)
    keep: list[int] = []
    for lab, quota in quotas.items():
        rng = random.Random(f"{seed}/{lab}")
        order = list(groups[lab])
        rng.shuffle(order)
        keep.extend(order[:quota])
    return [questions[i] for i in sorted(keep)]
