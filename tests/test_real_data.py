"""The real-model study's data side: the offline benchmark corpus and the study configs
(``conf/study_smollm2.yaml`` = model=smollm2_135m data=paper_local corpus=benchmarks_local;
``conf/study_gemma3.yaml``, the same with model=gemma3_270m),
on a small copy of the benchmark folder layout built from the committed fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from probing.activations.corpus import benchmark_documents, load_corpus
from probing.errors import LirefError

FIX = Path(__file__).parent / "fixtures"
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A LIREF_DATA folder laid out like /work/shared/data, holding fixture rows."""
    root = tmp_path / "data"
    layout = {
        "mmlu_pro/test.jsonl": FIX / "questions" / "mmlu_pro_small.jsonl",
        "mmlu_pro/validation.jsonl": FIX / "questions" / "mmlu_pro_small.jsonl",
        "gsm8k/test.jsonl": FIX / "real" / "gsm8k_50.jsonl",
        "mgsm/mgsm_en.tsv": FIX / "questions" / "mgsm_small.tsv",
        "popqa/popqa_questions_full.jsonl": FIX / "real" / "popqa_50.jsonl",
    }
    for rel, src in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    monkeypatch.setenv("LIREF_DATA", str(root))
    return root


def _sets(root: Path) -> list[dict]:
    return [{"name": "mmlu_pro", "path": str(root / "mmlu_pro/test.jsonl")},
            {"name": "gsm8k", "path": str(root / "gsm8k/test.jsonl")},
            {"name": "gsm8k", "path": str(root / "gsm8k/test.jsonl")},  # a duplicate set
            {"name": "popqa", "path": str(root / "popqa/popqa_questions_full.jsonl")}]


def test_benchmark_documents_hold_question_options_solution_once(data_root):
    docs = benchmark_documents(_sets(data_root), seed=0)
    assert len(docs) == 5 + 50 + 50  # the repeated GSM8K set adds nothing
    assert len(set(docs)) == len(docs)
    mmlu = next(d for d in docs if "derivative of x^2" in d)
    assert mmlu == "Q: What is the derivative of x^2?\nA. x\nB. 2x\nC. x^2\nD. 2\n" \
                  "A: The answer is (B) 2x\n"
    gsm = next(d for d in docs if d.startswith("Q: Kyle bought last year's best-selling book"))
    assert "we get X = $26.\n#### 26\n" in gsm  # the worked solution, as in the file
    assert any(d.startswith("Q: What is") and d.endswith("\n") for d in docs)
    assert benchmark_documents(_sets(data_root), seed=0) == docs  # deterministic
    assert benchmark_documents(_sets(data_root), seed=1) != docs  # shuffled with the seed
    assert sorted(benchmark_documents(_sets(data_root), seed=1)) == sorted(docs)


def test_benchmark_corpus_source(data_root):
    corpus = load_corpus("benchmarks", question_sets=_sets(data_root), max_texts=40, seed=0)
    assert len(corpus) == 40 and corpus.source == "benchmarks"
    assert {"mmlu_pro", "gsm8k", "popqa"} == {s["name"] for s in corpus.description[
        "question_sets"]}
    assert not any(t.endswith("\nA: ") for t in corpus.texts)  # no bare prompts appended
    with pytest.raises(LirefError, match="needs corpus.question_sets"):
        load_corpus("benchmarks")


@pytest.mark.parametrize(("study", "model", "n_layers"), [
    ("study_smollm2", "smollm2-135m", 30), ("study_gemma3", "gemma3-270m", 18)])
def test_study_config_composes_and_its_data_loads(data_root, tmp_path, study, model, n_layers):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(study, overrides=[f"cache_dir={tmp_path / 'cache'}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} resolves as in a real run
    try:
        assert cfg.model.name == model and cfg.model.n_layers == n_layers
        _check_study_config(cfg)
    finally:
        HydraConfig.instance().cfg = None


def _check_study_config(cfg) -> None:
    from probing.questions import load_questions
    from train.jobkit import plain

    assert cfg.data.name == "paper_local" and cfg.corpus.source == "benchmarks"
    assert cfg.stages == ["probe", "conflict"]
    (conflict,) = plain(cfg.conflict_data.sets)
    assert conflict["name"] == "popqa_conflict" and Path(conflict["path"]).is_file()
    main = load_questions(plain(cfg.data.sets), cfg.data.n, cfg.seed)
    assert {q.source for q in main} == {"mmlu_pro"}
    assert {q.meta["label_source"] for q in main} == {"category"}  # the documented fallback
    for transfer in plain(cfg.data.transfer):
        qs = load_questions(transfer["sets"], None, cfg.seed)
        assert {q.label for q in qs} == {"reasoning", "memory"}
    corpus = load_corpus(**plain(cfg.corpus), seed=cfg.seed)
    assert len(corpus) > 100  # every file's questions, de-duplicated (MGSM rows are new here)
