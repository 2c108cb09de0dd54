"""The built-in model organism: corpus, labels, tokenizer, committed checkpoint, training, job.

Answers are re-derived here from the question text alone (regexes below), independently of
the generator in ``probing/organism/corpus.py``; held-out-by-content is checked by replaying
the training stream.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from probing.errors import LirefError
from probing.organism import DEFAULT_CHECKPOINT
from probing.organism.config import CorpusConfig, OrganismConfig
from probing.organism.corpus import Corpus, format_prompt, format_text
from probing.organism.questions import load_organism_questions
from tests.job_fixtures import REPO, run_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = ("memory", "reasoning", "mixed", "exception", "near_exception", "ordinary")
METRIC_KEYS = ("accuracy_memory", "accuracy_reasoning", "accuracy_mixed",
               "accuracy_exception_memory", "rule_rate_exception", "accuracy_near_exception",
               "stale_rate_near_exception", "accuracy_ordinary", "train_seconds")

#: a organism small enough to train in seconds (used by the training and job tests)
TINY = {
    "corpus": {"n_entities": 12, "n_towns": 4, "n_keys": 12, "max_steps": 1, "max_compare": 9,
               "max_list": 2, "max_pairs": 2, "n_exceptions": 8, "exception_steps": 1,
               "n_near_exception": 1, "n_test_reasoning": 60,
               "n_test_mixed": 20, "reasoning_tasks": ["arithmetic", "compare"]},
    "model": {"hidden_size": 64, "n_layers": 2, "n_heads": 4, "intermediate_size": 128},
    # batch 128 and weight decay 0.1: its test items are unseen computations (held out by
    # content), which batch 32 did not generalize to in 600 steps (1-step arithmetic 0.2)
    "train": {"steps": 600, "batch_size": 128, "lr": 0.005, "weight_decay": 0.1, "warmup": 20,
              "eval_every": 200, "prelude_steps": 0,
              "mix": {"memory": 0.4, "arithmetic": 0.3, "compare": 0.3, "mixed": 0.1,
                      "exception": 0.05}},
}


# --------------------------------------------------------------------------- independent oracle
NUM = r"\d+"
EXPR = rf"({NUM}(?: (?:plus|minus) {NUM})*)"
ARITH = [re.compile(rf"^{t} \?$") for t in (f"what is {EXPR}", f"how much is {EXPR}",
                                              f"what does {EXPR} give", f"work out {EXPR}")]
PAIR_CMP = re.compile(rf"^which is (larger|smaller) , ({NUM}) or ({NUM}) \?$")
LIST_CMP = re.compile(rf"^what is the (largest|smallest) of ({NUM}(?: {NUM})+) \?$")
LOOKUP = re.compile(r"^(.+) \. what is (\w+) \?$")
MIXED = re.compile(rf"^what is the number of (\w+) (plus|minus) ({NUM}) \?$")


def eval_expression(expr: str) -> int:
    tokens = expr.split()
    value = int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2], strict=True):
        value = value + int(x) if op == "plus" else value - int(x)
    return value


def solve(question: str, numbers: dict[str, int] | None = None) -> str:
    """The answer of a reasoning/mixed question, from its text (+ memorized numbers)."""
    for pattern in ARITH:
        if m := pattern.match(question):
            return str(eval_expression(m.group(1)))
    if m := PAIR_CMP.match(question):
        a, b = int(m.group(2)), int(m.group(3))
        return str(max(a, b) if m.group(1) == "larger" else min(a, b))
    if m := LIST_CMP.match(question):
        nums = [int(x) for x in m.group(2).split()]
        return str(max(nums) if m.group(1) == "largest" else min(nums))
    if m := MIXED.match(question):
        assert numbers is not None
        return str(eval_expression(f"{numbers[m.group(1)]} {m.group(2)} {m.group(3)}"))
    if m := LOOKUP.match(question):
        pairs = dict(p.split(" is ") for p in m.group(1).split(" , "))
        return pairs[m.group(2)]
    raise AssertionError(f"unparsed question {question!r}")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(CorpusConfig(), seed=0)


# --------------------------------------------------------------------------- corpus
def _texts(c: Corpus) -> list[str]:
    return [format_text(it.question, it.answer) for split in ("train", "test")
            for kind in KINDS for it in c.split(split, kind)]


def test_corpus_is_deterministic(corpus: Corpus) -> None:
    again = Corpus(CorpusConfig(), seed=0)
    assert _texts(again) == _texts(corpus)
    assert again.vocabulary == corpus.vocabulary
    other = Corpus(CorpusConfig(), seed=1)
    assert _texts(other) != _texts(corpus)
    r1, r2 = random.Random(5), random.Random(5)
    s1 = [corpus.sample_train(r1, s, 0.5).question for s in ("arithmetic", "lookup", "mixed") * 20]
    s2 = [again.sample_train(r2, s, 0.5).question for s in ("arithmetic", "lookup", "mixed") * 20]
    assert s1 == s2


def test_questions_loader_labels_and_groups(corpus: Corpus) -> None:
    qs = load_organism_questions(split="test")
    assert {q.meta["kind"] for q in qs} == set(KINDS)
    for q in qs:
        assert q.source == "organism" and len(q.answers) == 1
        assert q.label == ("memory" if q.meta["kind"] in ("memory", "exception") else "reasoning")
        fact = q.meta["kind"] == "memory"
        assert q.group.startswith("fact:" if fact else "comp:"), q
        if q.meta["task"] in ("arithmetic", "exception"):
            expr = " ".join([str(q.meta["operands"][0])] + [
                f"{op} {x}" for op, x in zip(q.meta["ops"], q.meta["operands"][1:], strict=True)])
            assert q.group == f"comp:arith:{expr}" and expr in q.question
    assert len({q.id for q in qs}) == len(qs)
    # one group per underlying item, whatever the phrasing: the same fact/exception in train
    # and test shares it; distinct test computations never do
    train = load_organism_questions(split="train", kinds=["memory", "exception"])
    by_group = {q.group: q for q in qs if q.meta["kind"] in ("memory", "exception")}
    for q in train:
        assert by_group[q.group].answers == q.answers and by_group[q.group].question != q.question
    computed = [q.group for q in qs if q.meta["kind"] not in ("memory", "exception")]
    assert len(set(computed)) == len(computed)
    only = load_organism_questions(split="test", kinds=["memory", "reasoning"])
    assert {q.label for q in only} == {"memory", "reasoning"}
    from probing.questions import load_question_set

    for name, kinds in [("organism", ["memory", "reasoning"]),
                        ("organism_matched", ["exception", "ordinary"])]:
        sets = yaml.safe_load((REPO / f"conf/data/{name}.yaml").read_text())["sets"]
        via = [q for kw in sets for q in load_question_set(**kw)]
        assert [q.id for q in via] == [q.id for q in load_organism_questions(kinds=kinds)]
    with pytest.raises(LirefError, match="kinds"):
        load_organism_questions(kinds=["poetry"])
    with pytest.raises(LirefError, match="split"):
        load_organism_questions(split="dev")


@pytest.mark.parametrize("tasks", [None, ["arithmetic", "compare", "lookup"]])
def test_reasoning_answers_recomputed_from_text(corpus: Corpus, tasks: list[str] | None) -> None:
    if tasks is not None:
        corpus = Corpus(CorpusConfig(reasoning_tasks=tasks, n_keys=20), seed=3)
    numbers: dict[str, int] = {}
    for it in corpus.split("train", "memory"):
        if it.meta["attribute"] == "number":
            numbers.setdefault(it.meta["entity"], int(it.answer))
    for split in ("train", "test"):
        for kind in ("reasoning", "mixed", "near_exception", "ordinary"):
            items = corpus.split(split, kind)
            assert items or (split, kind) == ("train", "near_exception")
            for it in items:
                assert solve(it.question, numbers) == it.answer, it
        for it in corpus.split(split, "exception"):  # recalled, not computed
            assert it.answer == it.meta["memory_answer"] != solve(it.question)
            assert it.meta["rule_answer"] == solve(it.question)
    tasks_seen = {it.task for it in corpus.split("test", "reasoning")}
    assert tasks_seen == set(tasks or CorpusConfig().reasoning_tasks)
    rng = random.Random(1)
    for _ in range(300):  # the training stream is labelled right too
        it = corpus.sample_train(rng, rng.choice(sorted(tasks_seen)))
        assert solve(it.question) == it.answer


def test_memory_split_asks_trained_facts_in_new_phrasings(corpus: Corpus) -> None:
    train = corpus.split("train", "memory")
    test = corpus.split("test", "memory")
    answers: dict[tuple[str, str], set[str]] = {}
    phrasings: dict[tuple[str, str], set[int]] = {}
    for it in train:
        key = (it.meta["entity"], it.meta["attribute"])
        answers.setdefault(key, set()).add(it.answer)
        phrasings.setdefault(key, set()).add(it.meta["phrasing"])
        assert it.meta["entity"] in it.question.split()
    assert all(len(a) == 1 for a in answers.values())  # one fact per pair
    train_texts = {it.question for it in train}
    for it in test:
        key = (it.meta["entity"], it.meta["attribute"])
        assert answers[key] == {it.answer}  # the fact is in training...
        assert it.meta["phrasing"] not in phrasings[key]  # ...but never in this phrasing
        assert it.question not in train_texts


def _phrasing(question: str) -> str:
    return re.sub(rf"{EXPR}", "{x}", question)


def test_exceptions_share_the_surface_of_ordinary_problems(corpus: Corpus) -> None:
    from scipy.stats import chisquare

    cfg = CorpusConfig()
    exceptions = corpus.split("test", "exception")
    ordinary = corpus.split("test", "ordinary")
    assert 60 <= len(exceptions) == cfg.n_exceptions == len(ordinary) <= 200
    trained: dict[str, set[str]] = {}
    for it in corpus.split("train", "exception"):
        trained.setdefault(it.meta["memory_answer"], set())
        trained.setdefault(it.group, set()).add(_phrasing(it.question))
    templates = {_phrasing(it.question) for it in ordinary}
    assert len(templates) == 4  # the ordinary phrasings; each exception asked in the one...
    for it in exceptions:  # ...it was not trained in, after 3 trained ones
        assert trained[it.group] | {_phrasing(it.question)} == templates
        assert _phrasing(it.question) not in trained[it.group]
        assert it.meta["steps"] == cfg.exception_steps
        assert all(0 <= x <= cfg.max_operand for x in it.meta["operands"])
        assert 0 <= int(it.meta["memory_answer"]) <= cfg.max_operand * (cfg.exception_steps + 1)
    # every operand value (per position), operator pair and phrasing occurs among exceptions
    # about as often as among all ordinary problems of their step count
    comps = corpus.computations(cfg.exception_steps)
    features = [(lambda ops, x: x[0], lambda it: it.meta["operands"][0]),
                (lambda ops, x: x[1], lambda it: it.meta["operands"][1]),
                (lambda ops, x: x[2], lambda it: it.meta["operands"][2]),
                (lambda ops, x: ops, lambda it: tuple(it.meta["ops"]))]
    for of_comp, of_item in features:
        expected: dict = {}
        for operands, ops in comps:
            key = of_comp(ops, operands)
            expected[key] = expected.get(key, 0) + len(exceptions) / len(comps)
        observed = [sum(of_item(it) == k for it in exceptions) for k in expected]
        assert chisquare(observed, list(expected.values())).pvalue > 0.01
    counts = [sum(_phrasing(it.question) == t for it in exceptions) for t in sorted(templates)]
    assert chisquare(counts).pvalue > 0.01


def test_near_exceptions_are_one_operand_from_an_exception(corpus: Corpus) -> None:
    exceptions = corpus.split("test", "exception")
    near = corpus.split("test", "near_exception")
    # (a few exceptions, e.g. ``1 minus 0 minus 1``, have no valid neighbour that is adjacent
    # to no other exception and not held out elsewhere)
    assert len(near) >= len(exceptions)
    assert len({it.meta["exception"] for it in near}) >= 0.95 * len(exceptions)
    exception_groups = {it.group for it in exceptions}
    for it in near:
        ex = exceptions[it.meta["exception"]]
        assert it.meta["exception_group"] == ex.group and it.group not in exception_groups
        assert it.meta["stale_answer"] == ex.meta["memory_answer"] != it.answer
        a, b = it.question.split(), ex.question.split()  # a minimal pair: one operand differs
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        assert len(a) == len(b) and len(diff) == 1 and a[diff[0]].isdigit()
        assert it.label == "reasoning" and solve(it.question) == it.answer


def test_matched_set_defeats_a_bag_of_words_probe() -> None:
    """On exceptions vs ordinary problems a bag-of-words logistic regression (unigrams +
    bigrams of the prompt) is near chance on held-out groups, while on the lexical sets
    (memory facts vs reasoning) the same control separates perfectly."""
    from threadpoolctl import threadpool_limits

    from probing.probes.controls import bow_scores
    from probing.probes.evaluation import grouped_folds
    from probing.questions import load_question_set
    from probing.stats import auroc

    def held_out_auroc(data: str) -> float:
        conf = yaml.safe_load((REPO / f"conf/data/{data}.yaml").read_text())
        qs = [q for kw in conf["sets"] for q in load_question_set(**kw)]
        texts = [format_prompt(q.question) for q in qs]
        y = np.array([q.target for q in qs])
        values = []
        for repeat in range(3):  # grouped 5-fold, out-of-fold scores, 3 shuffles
            scores = np.zeros(len(qs))
            for tr, te in grouped_folds(y, [q.group for q in qs], 5, seed=repeat):
                scores[te] = bow_scores([texts[i] for i in tr], y[tr], [texts[i] for i in te])
            values.append(auroc(y, scores))
        return float(np.mean(values))

    matched = load_organism_questions(kinds=["exception", "ordinary"])
    assert sum(q.label == "memory" for q in matched) * 2 == len(matched)  # balanced
    with threadpool_limits(1):  # BLAS threads crawl on a shared box
        assert held_out_auroc("organism_matched") <= 0.6
        assert held_out_auroc("organism") >= 0.95


def test_training_stream_is_held_out_by_content(corpus: Corpus) -> None:
    """Replaying the training sampler: no test computation is ever trained (whatever the
    phrasing); exceptions only in their own stream and trained phrasings; memory facts only in
    trained phrasings. The default corpus's stream (a short schedule reaching full hardness)
    and a tiny organism's full stream, prelude included."""
    from probing.organism.training import replay_training_stream

    short = OrganismConfig.from_dict({"train": {"steps": 500, "curriculum": 0.2,
                                                "prelude_steps": 0}})
    tiny = OrganismConfig.from_dict({**TINY, "corpus": {**TINY["corpus"], "reasoning_tasks": [
        "arithmetic", "compare", "lookup"]}, "train": {**TINY["train"], "prelude_steps": 30,
                                                       "mix": {**TINY["train"]["mix"],
                                                               "lookup": 0.1}}})
    for cfg, prelude in ((short, 0), (tiny, 30)):
        c = Corpus(cfg.corpus, cfg.seed)
        held_out = {it.group for k in ("reasoning", "mixed", "near_exception", "ordinary")
                    for it in c.split("test", k)}
        exceptions = {it.group for it in c.split("test", "exception")}
        test_texts = {it.question for k in ("memory", "exception") for it in c.split("test", k)}
        kinds, steps = set(), set()
        for it in replay_training_stream(cfg, prelude, corpus=c):
            assert it.group not in held_out, it
            assert (it.group in exceptions) == (it.kind == "exception"), it
            assert it.question not in test_texts, it
            kinds.add(it.kind)
            steps.add(it.meta.get("steps"))
        assert kinds == {"memory", "reasoning", "mixed", "exception"}
        assert {1, cfg.corpus.max_steps} <= steps
        assert held_out and exceptions


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip(corpus: Corpus, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from probing.organism.tokenizer import save_tokenizer

    save_tokenizer(corpus.vocabulary, tmp_path)
    for folder in (tmp_path, DEFAULT_CHECKPOINT):
        tok = AutoTokenizer.from_pretrained(str(folder))
        newline = tok.convert_tokens_to_ids("##\n")
        for text in _texts(corpus)[::7]:
            ids = tok(text).input_ids
            assert tok.unk_token_id not in ids
            assert newline in ids
            assert tok.decode(ids) == text
        prompt = tok(format_prompt("what is 3 plus 4 ?")).input_ids
        assert tok.convert_ids_to_tokens(prompt)[-2:] == ["##\n", "##A:"]
        assert tok.decode([newline]) == "\n"  # a completion may start with the newline
        assert tok.decode(tok("3\n").input_ids) == "3\n"


# --------------------------------------------------------------------------- committed checkpoint
def test_committed_checkpoint_meets_quality_bars() -> None:
    from probing import load_model
    from probing.evaluation.generation import greedy_generate

    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 8 * 2**20
    assert (DEFAULT_CHECKPOINT / "COMMAND").read_text().startswith("python -m train.organism")
    stored = json.loads((DEFAULT_CHECKPOINT / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(stored)
    assert stored["train_seconds"] <= 20 * 60  # the budget (2 CPU cores, 2 threads)
    model, tok = load_model("organism")
    assert model.config.model_type == "llama"
    n_layers = yaml.safe_load((REPO / "conf/model/organism.yaml").read_text())["n_layers"]
    assert model.config.num_hidden_layers == n_layers
    questions = load_organism_questions(split="test", kinds=list(KINDS))
    outs = [o.strip() for o in greedy_generate(
        model, tok, [format_prompt(q.question) for q in questions], max_new_tokens=3,
        batch_size=128)]
    right: dict[str, list[bool]] = {}
    for q, o in zip(questions, outs, strict=True):
        key = q.meta["task"] if q.meta["kind"] == "reasoning" else q.meta["kind"]
        right.setdefault(key, []).append(o == q.answers[0])
        if q.meta["kind"] == "reasoning":
            right.setdefault("reasoning", []).append(o == q.answers[0])
    acc = {k: sum(v) / len(v) for k, v in right.items()}
    assert acc["memory"] >= 0.95
    assert acc["reasoning"] >= 0.90
    # every reasoning task the issue names is in the test split and learned, not just on average
    for task in ("arithmetic", "compare", "lookup"):
        assert acc[task] >= 0.90, (task, acc)
    # the same surface, two modes: exceptions recalled (not computed), ordinary ones computed
    assert acc["exception"] >= 0.90, acc
    assert acc["ordinary"] >= 0.90, acc
    for key, stored_key in (("memory", "accuracy_memory"), ("exception", "accuracy_exception_memory"),
                            ("ordinary", "accuracy_ordinary"),
                            ("near_exception", "accuracy_near_exception")):
        assert acc[key] == pytest.approx(stored[stored_key], abs=0.02)  # metrics.json is this model's


def test_default_config_matches_yaml_and_checkpoint() -> None:
    from hydra import compose, initialize_config_dir

    import train.configs  # noqa: F401  (registers the job schemas)
    from probing.organism import ensure_organism, load_organism_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        conf = compose("organism")
    from_yaml = OrganismConfig.from_dict({**conf["organism"], "seed": conf["seed"]})
    assert from_yaml.config_hash() == OrganismConfig().config_hash()
    assert load_organism_config().config_hash() == OrganismConfig().config_hash()
    assert ensure_organism(None, retrain=False, cache_dir="/nonexistent") == DEFAULT_CHECKPOINT
    with pytest.raises(LirefError, match="unknown organism"):
        OrganismConfig.from_dict({"modle": {}})
    with pytest.raises(LirefError, match="n_heads"):
        OrganismConfig.from_dict({"model": {"hidden_size": 30, "n_heads": 4}})
    with pytest.raises(LirefError, match="lookup"):
        OrganismConfig.from_dict({"corpus": {"reasoning_tasks": ["arithmetic"]},
                                  "train": {"mix": {"memory": 1, "lookup": 1},
                                            "prelude_steps": 0}})
    with pytest.raises(LirefError, match="reasoning_tasks"):
        OrganismConfig.from_dict({"corpus": {"reasoning_tasks": ["poetry"]}})
    no_lookup = {"reasoning_tasks": ["arithmetic"]}
    with pytest.raises(LirefError, match="lookup"):
        OrganismConfig.from_dict({"corpus": no_lookup,
                                  "train": {"mix": {"memory": 1}, "prelude_steps": 10}})
    with pytest.raises(LirefError, match="prelude_mix"):
        OrganismConfig.from_dict({"train": {"prelude_mix": {"poetry": 1}}})
    with pytest.raises(LirefError, match="prelude_steps"):
        OrganismConfig.from_dict({"train": {"prelude_steps": -1}})
    with pytest.raises(LirefError, match="prelude_lr"):
        OrganismConfig.from_dict({"train": {"prelude_lr": 0}})
    # a prelude that never runs may name streams the corpus lacks
    OrganismConfig.from_dict({"corpus": no_lookup, "train": {"mix": {"memory": 1},
                                                           "prelude_steps": 0}})


def test_learning_rate_is_constant_through_the_prelude_then_decays() -> None:
    from probing.organism.training import _lr_factor

    cfg = OrganismConfig.from_dict({"train": {"steps": 100, "prelude_steps": 50, "warmup": 10,
                                              "min_lr_ratio": 0.1}})
    factors = [_lr_factor(s, cfg, None if s < 50 else 50) for s in range(150)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(f == 1.0 for f in factors[10:51])
    assert all(a > b for a, b in zip(factors[51:149], factors[52:150], strict=True))
    assert factors[149] == pytest.approx(0.1, abs=0.01)


def test_prelude_trains_its_streams_first() -> None:
    from probing.organism.training import train_organism

    cfg = OrganismConfig.from_dict({
        **TINY,
        "corpus": {**TINY["corpus"], "reasoning_tasks": ["arithmetic", "compare", "lookup"]},
        "train": {**TINY["train"], "steps": 4, "prelude_steps": 6, "eval_every": 2,
                  "warmup": 1, "lr": 0.005, "prelude_lr": 0.0005},
    })
    seen: list[tuple[str, ...]] = []
    rows: dict[int, dict[str, float]] = {}
    from probing.organism import corpus as corpus_module

    original = corpus_module.Corpus.sample_train

    def spy(self, rng, stream, hardness=1.0):
        seen.append((stream, hardness))
        return original(self, rng, stream, hardness)

    corpus_module.Corpus.sample_train = spy
    try:
        train_organism(cfg, log_fn=lambda row, step: rows.setdefault(step, row), progress=False)
    finally:
        corpus_module.Corpus.sample_train = original
    batch, probe = TINY["train"]["batch_size"], 128  # the prelude's stopping probe comes first
    assert len(seen) == probe + 10 * batch
    assert {s for s, _ in seen[: probe + 6 * batch]} == {"lookup"}
    assert {h for _, h in seen[: probe + 6 * batch]} == {0.0}
    assert {s for s, _ in seen[probe + 6 * batch:]} > {"memory"}
    assert sorted(rows) == [2, 4, 6, 8, 10]
    assert "train/prelude_accuracy" in rows[6]
    assert rows[2]["train/lr"] == pytest.approx(0.0005) and rows[8]["train/lr"] > 0.002
    assert "quick/accuracy_reasoning_lookup" in rows[10]


def test_prelude_ends_once_its_target_is_reached() -> None:
    from probing.organism.training import train_organism

    # a target of 0 is met at the first check: the prelude stops there, not at its maximum
    cfg = OrganismConfig.from_dict({**TINY, "train": {
        **TINY["train"], "steps": 3, "prelude_steps": 500, "prelude_target": 0.0,
        "prelude_mix": {"memory": 1.0}}})
    _, _, stats = train_organism(cfg, progress=False)
    assert stats["prelude_steps_run"] == 50


# --------------------------------------------------------------------------- training
def test_training_is_deterministic() -> None:
    from probing.organism.training import train_organism

    cfg = OrganismConfig.from_dict({**TINY, "train": {**TINY["train"], "steps": 8}})
    m1, _, _ = train_organism(cfg, progress=False)
    m2, _, _ = train_organism(cfg, progress=False)
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_ensure_organism_trains_into_cache_once(tmp_path: Path, monkeypatch) -> None:
    from probing import load_model
    from probing.organism import training

    cfg = {**TINY, "train": {**TINY["train"], "steps": 5}}
    folder = training.ensure_organism(cfg, retrain=False, cache_dir=tmp_path)
    assert folder == tmp_path / f"organism-{OrganismConfig.from_dict(cfg).config_hash()}"
    assert (folder / "metrics.json").is_file() and not list(tmp_path.glob(".*tmp*"))
    model, tok = load_model(str(folder))
    assert model.config.num_hidden_layers == 2

    def no_training(*args, **kwargs):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(training, "train_and_save", no_training)
    assert training.ensure_organism(cfg, retrain=True, cache_dir=tmp_path) == folder
    qs = load_organism_questions(str(folder), kinds=["memory"])
    assert len(qs) == 12 * 3


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m train.organism`` with the tiny config; returns its run dir."""
    cwd = tmp_path_factory.mktemp("organism-job")
    overrides = [f"organism.{sec}.{k}={json.dumps(v).replace(' ', '')}"
                 for sec, d in TINY.items() for k, v in d.items() if k != "mix"]
    mix = ",".join(f"{k}:{v}" for k, v in TINY["train"]["mix"].items())
    # a dict override merges into the default mix: drop its lookup stream explicitly
    proc = run_module("train.organism", *overrides, f"organism.train.mix={{{mix}}}",
                      "~organism.train.mix.lookup",
                      "logger=disabled", "progress=false", f"hydra.run.dir={cwd / 'run'}",
                      cwd=cwd, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


def test_job_writes_metrics_and_checkpoint(tiny_job: Path) -> None:
    from probing import load_model

    metrics = json.loads((tiny_job / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    ckpt = tiny_job / "checkpoint"
    assert json.loads((ckpt / "metrics.json").read_text())["accuracy_memory"] == pytest.approx(
        metrics["accuracy_memory"])
    assert (ckpt / "COMMAND").read_text().startswith("python -m train.organism ")
    model, _ = load_model(str(ckpt))
    assert model.config.hidden_size == 64
    assert metrics["train_seconds"] > 0  # recorded (speed is measured by benchmarks, not tests)


def test_tiny_organism_clearly_beats_chance(tiny_job: Path) -> None:
    metrics = json.loads((tiny_job / "metrics.json").read_text())
    # chance: at most 1/4 on memory (4 towns; 10 colours, 10 numbers), about 1/19 on one-step
    # arithmetic (answers 0..18), 1/2 on two-number comparisons; test computations are never
    # trained (measured: memory 1.0, arithmetic 0.78, reasoning 0.80)
    assert metrics["accuracy_memory"] >= 0.6
    assert metrics["accuracy_reasoning_arithmetic"] >= 0.5
    assert metrics["accuracy_reasoning"] >= 0.6
