"""Held-out means held out: no duplicate, paraphrase group or document on both sides of a split,
on the organism and on the real benchmark files."""

from __future__ import annotations

import numpy as np

from probing.activations.corpus import load_corpus
from probing.probes.evaluation import grouped_split
from probing.questions import load_questions
from probing.questions.record import normalize_question
from tests.shared_data import shared


def _assert_disjoint(questions, seed=0):
    y = np.array([q.target for q in questions])
    split = grouped_split(y, [q.group for q in questions], 0.2, 0.25, seed)
    parts = [split.train, split.val, split.test]
    texts = [{normalize_question(questions[i].question) for i in p} for p in parts]
    groups = [{questions[i].group for i in p} for p in parts]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not texts[a] & texts[b]
            assert not groups[a] & groups[b]
    keys = [normalize_question(q.question) for q in questions]
    assert len(keys) == len(set(keys))  # no duplicate survives loading


def test_organism_questions_split_disjoint():
    questions = load_questions([{"name": "organism", "split": "test",
                                 "kinds": ["memory", "reasoning"]}])
    _assert_disjoint(questions)


def test_organism_sae_corpus_heldout_documents_are_not_trained_on():
    corpus = load_corpus("organism", max_texts=20000)
    assert corpus.n_duplicates > 0  # drawn with replacement: repeats were dropped
    train, held = corpus.split(256)
    assert len(held) == 256 and not set(train.texts) & set(held.texts)
    assert len(train) + len(held) == len(corpus)


def test_real_files_deduplicated_and_split_disjoint():
    gsm8k = str(shared("gsm8k/test.jsonl"))
    mgsm = str(shared("mgsm/mgsm_en.tsv"))
    popqa = str(shared("popqa/popqa_questions_full.jsonl"))
    mmlu = str(shared("mmlu_pro/test.jsonl"))
    # MGSM's 250 problems are the first 250 GSM8K test problems: all dropped as duplicates
    both = load_questions([{"name": "gsm8k", "path": gsm8k}, {"name": "mgsm", "path": mgsm}])
    assert len(both) == 1319 and not [q for q in both if q.source == "mgsm"]
    qs = load_questions([{"name": "gsm8k", "path": gsm8k, "n": 300},
                         {"name": "popqa", "path": popqa, "n": 300},
                         {"name": "mmlu_pro", "path": mmlu, "n": 600}], seed=1)
    _assert_disjoint(qs, seed=1)
    popqa_all = load_questions([{"name": "popqa", "path": popqa}])
    assert len(popqa_all) < 14265  # PopQA repeats question texts across subjects


def test_real_question_corpus_heldout_documents_are_not_trained_on():
    popqa = str(shared("popqa/popqa_questions_full.jsonl"))
    corpus = load_corpus("questions", question_sets=[{"name": "popqa", "path": popqa}])
    train, held = corpus.split(256)
    assert not set(train.texts) & set(held.texts)
