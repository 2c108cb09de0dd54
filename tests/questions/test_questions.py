"""Question-set loaders, balanced sampling and their errors (fixtures + the shared real data)."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from probing.errors import LirefError
from probing.questions import Question, load_question_set
from probing.questions._io import parse_answers
from probing.questions.gsm8k import gold_from_solution, load_gsm8k
from probing.questions.mgsm import load_mgsm
from probing.questions.mmlu_pro import CATEGORY_LABELS, load_mmlu_pro
from probing.questions.popqa import load_popqa
from probing.questions.sampling import balanced_quotas, sample_balanced
from probing.questions.tabular import load_csv, load_jsonl, load_tsv
from tests.shared_data import shared

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "questions"


def q(i: int, label: str) -> Question:
    return Question(id=f"t/{i}", question=f"question {i}", answers=("a",), label=label, source="t")


# ---------------------------------------------------------------------------------------------
# GSM8K


def test_gsm8k_fixture_gold_commas_and_meta() -> None:
    qs = load_gsm8k(str(FIX / "gsm8k_small.jsonl"))
    assert [x.answers for x in qs] == [("7",), ("1000",), ("-3",)]
    assert {x.label for x in qs} == {"reasoning"}
    assert qs[1].meta["solution"].endswith("#### 1,000")
    assert qs[0].id == "gsm8k/test/0" and qs[0].source == "gsm8k"
    assert qs[0].question.startswith("Tom has 3 apples")


def test_gsm8k_gold_from_solution_errors() -> None:
    assert gold_from_solution("a\n#### 2,125") == "2125"
    with pytest.raises(LirefError, match="no '#### <number>'"):
        gold_from_solution("no final line", "f.jsonl line 4")
    with pytest.raises(LirefError, match="'ten' is not a number"):
        gold_from_solution("x #### ten", "f.jsonl line 4")


def test_gsm8k_real_test_split() -> None:
    qs = load_gsm8k(str(shared("gsm8k/test.jsonl")))
    assert len(qs) == 1319
    assert qs[0].answers == ("18",) and qs[0].question.startswith("Janet")
    assert qs[1].answers == ("3",)
    assert qs[2].answers == ("70000",)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", x.answers[0]) for x in qs)
    golds = {x.answers[0] for x in qs}
    assert {"2125", "1450000", "5600"} <= golds  # "2,125", "1,450,000", "5,600" in the file
    assert len({x.id for x in qs}) == 1319


def test_gsm8k_real_folder_path_finds_split_file() -> None:
    qs = load_question_set("gsm8k", path=str(shared("gsm8k")), n=10, seed=1)
    assert len(qs) == 10 and all(x.label == "reasoning" for x in qs)


# ---------------------------------------------------------------------------------------------
# MGSM


def test_mgsm_fixture_strips_thousands_and_keeps_quotes() -> None:
    qs = load_mgsm(str(FIX / "mgsm_small.tsv"))
    assert [x.answers for x in qs] == [("5600",), ("3",), ("6",)]
    assert '"lucky"' in qs[2].question
    assert all(x.label == "reasoning" and x.source == "mgsm" for x in qs)


def test_mgsm_real_250_rows_match_gsm8k() -> None:
    qs = load_mgsm(str(shared("mgsm/mgsm_en.tsv")))
    assert len(qs) == 250
    golds = [x.answers[0] for x in qs]
    assert {"5600", "2125", "114200", "276000"} <= set(golds)
    assert all("," not in g for g in golds)
    gsm = load_gsm8k(str(shared("gsm8k/test.jsonl")))
    # MGSM English = the first 250 GSM8K test questions
    assert golds == [x.answers[0] for x in gsm[:250]]


def test_mgsm_bad_row_names_line(tmp_path: Path) -> None:
    f = tmp_path / "m.tsv"
    f.write_text("q1\t1\nq2 without answer\n")
    with pytest.raises(LirefError, match=r"m\.tsv line 2: expected 2"):
        load_mgsm(str(f))
    f.write_text("q1\t1\nq2\tmany\n")
    with pytest.raises(LirefError, match=r"line 2: MGSM answer 'many' is not a number"):
        load_mgsm(str(f))


# ---------------------------------------------------------------------------------------------
# MMLU-Pro


def test_mmlu_pro_fixture_choices_and_category_labels() -> None:
    qs = load_mmlu_pro(str(FIX / "mmlu_pro_small.jsonl"))
    assert [x.label for x in qs] == ["reasoning", "memory", "reasoning", "memory", "memory"]
    first = qs[0]
    assert first.answers == ("B", "2x")
    assert first.meta["choices"] == ["x", "2x", "x^2", "2"]
    assert first.meta["answer_index"] == 1
    assert first.meta["category"] == "math" and first.meta["question_id"] == 1
    assert first.meta["label_source"] == "category"
    assert "reasoning_score" not in first.meta
    assert first.id == "mmlu_pro/test/1"


def test_mmlu_pro_bad_or_missing_score(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text(
        "question,options,answer_index,category,memory_reason_score\n"
        'q1,"[""a"", ""b""]",0,law,0.8\n'
        'q2,"[""a"", ""b""]",1,math,\n'
        'q3,"[""a"", ""b""]",1,math,high\n'
    )
    with pytest.raises(LirefError, match=r"s\.csv line 4: memory_reason_score 'high' is not a"):
        load_mmlu_pro(str(f))
    f.write_text(f.read_text().rsplit("q3", 1)[0])
    qs = load_mmlu_pro(str(f))
    assert [(x.label, x.meta["label_source"]) for x in qs] == [
        ("reasoning", "score"),
        ("reasoning", "category"),
    ]
    assert qs[0].meta["choices"] == ["a", "b"] and qs[1].answers == ("B", "b")


def test_mmlu_pro_score_field_and_threshold() -> None:
    qs = load_mmlu_pro(str(FIX / "mmlu_pro_scored.jsonl"))
    # score beats category: math 0.2 -> memory, law 0.7 -> reasoning; 0.5 is not > 0.5
    assert [x.label for x in qs] == ["reasoning", "memory", "reasoning", "memory"]
    assert [x.meta["reasoning_score"] for x in qs] == [0.9, 0.2, 0.7, 0.5]
    assert all(x.meta["label_source"] == "score" for x in qs)
    low = load_mmlu_pro(str(FIX / "mmlu_pro_scored.jsonl"), threshold=0.1)
    assert all(x.label == "reasoning" for x in low)
    by_cat = load_mmlu_pro(str(FIX / "mmlu_pro_scored.jsonl"), score_field="absent")
    assert [x.label for x in by_cat] == ["reasoning", "reasoning", "memory", "memory"]


def test_mmlu_pro_categories_filter_and_errors(tmp_path: Path) -> None:
    qs = load_mmlu_pro(str(FIX / "mmlu_pro_small.jsonl"), categories=["math", "law"])
    assert [x.meta["category"] for x in qs] == ["math", "law"]
    assert len(load_mmlu_pro(str(FIX / "mmlu_pro_small.jsonl"), categories="history")) == 1
    with pytest.raises(LirefError, match=r"unknown categories \['poetry'\]; allowed: .*'math'"):
        load_mmlu_pro(str(FIX / "mmlu_pro_small.jsonl"), categories=["poetry"])
    f = tmp_path / "odd.jsonl"
    f.write_text(
        json.dumps({"question": "x", "options": ["a", "b"], "answer_index": 0, "category": "art"})
        + "\n"
    )
    with pytest.raises(LirefError, match=r"category 'art' has no label"):
        load_mmlu_pro(str(f))
    assert load_mmlu_pro(str(f), category_labels={"art": "memory"})[0].label == "memory"
    with pytest.raises(LirefError, match=r"bad label 'creative'"):
        load_mmlu_pro(str(f), category_labels={"art": "creative"})
    f.write_text(
        json.dumps({"question": "x", "options": ["a", "b"], "answer_index": 5, "category": "law"})
        + "\n"
    )
    with pytest.raises(LirefError, match=r"line 1: answer_index 5 out of range for 2 options"):
        load_mmlu_pro(str(f))
    with pytest.raises(LirefError, match=r"unknown option\(s\) \['treshold'\]"):
        load_mmlu_pro(str(FIX / "mmlu_pro_small.jsonl"), treshold=0.3)


def test_mmlu_pro_real_test_split() -> None:
    qs = load_mmlu_pro(str(shared("mmlu_pro/test.jsonl")))
    assert len(qs) == 12032
    cats = Counter(x.meta["category"] for x in qs)
    assert set(cats) == set(CATEGORY_LABELS)
    assert cats["math"] == 1351 and cats["history"] == 381 and cats["law"] == 1101
    labels = Counter(x.label for x in qs)
    reasoning_cats = [c for c, lab in CATEGORY_LABELS.items() if lab == "reasoning"]
    assert labels["reasoning"] == sum(cats[c] for c in reasoning_cats)
    assert labels["memory"] == 12032 - labels["reasoning"] > 0
    for x in qs:
        choices = x.meta["choices"]
        assert 3 <= len(choices) <= 10
        assert x.answers == ("ABCDEFGHIJ"[x.meta["answer_index"]], choices[x.meta["answer_index"]])
        assert x.label == CATEGORY_LABELS[x.meta["category"]]
    assert qs[0].meta["question_id"] == 70 and qs[0].answers[0] == "I"


def test_mmlu_pro_real_validation_split_via_folder() -> None:
    qs = load_question_set("mmlu_pro", path=str(shared("mmlu_pro")), split="validation")
    assert len(qs) == 70
    assert all(x.meta.get("cot_content") for x in qs)
    assert Counter(x.meta["category"] for x in qs) == dict.fromkeys(CATEGORY_LABELS, 5)


# ---------------------------------------------------------------------------------------------
# PopQA


def test_popqa_original_tsv_format() -> None:
    qs = load_popqa(str(FIX / "popqa_small.tsv"))
    assert qs[0].answers == ("politician", "political leader")
    assert qs[1].answers == ("Carl Jung", "C. G. Jung", "Jung")
    assert qs[0].id == "popqa/test/4222362"
    assert qs[0].meta["prop"] == "occupation" and qs[0].meta["subj"] == "George Rankin"
    assert qs[0].meta["s_pop"] == 142 and qs[0].meta["obj"] == "politician"
    assert all(x.label == "memory" and x.source == "popqa" for x in qs)


def test_popqa_list_or_string_answers_and_props() -> None:
    qs = load_popqa(str(FIX / "popqa_small.jsonl"))
    assert qs[0].answers == ("journalist", "journo")
    assert qs[1].answers == ("progressive rock",)
    assert qs[1].meta == {"prop": "genre", "answer_type": "text"}
    assert [x.meta["prop"] for x in load_popqa(str(FIX / "popqa_small.jsonl"), props="genre")] == [
        "genre"
    ]
    with pytest.raises(LirefError, match=r"unknown props \['colour'\]"):
        load_popqa(str(FIX / "popqa_small.jsonl"), props=["colour"])


def test_popqa_real_all_rows_have_answers() -> None:
    qs = load_popqa(str(shared("popqa/popqa_questions_full.jsonl")))
    assert len(qs) == 14265
    assert all(len(x.answers) >= 1 and all(a.strip() for a in x.answers) for x in qs)
    assert qs[0].question == "What is George Rankin's occupation?"
    assert qs[0].answers[0] == "politician"
    props = Counter(x.meta["prop"] for x in qs)
    assert len(props) == 16 and props["director"] == 1999 and props["color"] == 34


# ---------------------------------------------------------------------------------------------
# Generic jsonl / csv / tsv

MAP = {"question": "q", "answers": "gold", "label": "type", "id": "uid"}


def test_jsonl_column_mapping_and_answer_shapes() -> None:
    qs = load_jsonl(str(FIX / "generic.jsonl"), columns=MAP)
    assert [x.id for x in qs] == ["g1", "g2", "g3", "g4"]
    assert qs[0].answers == ("5",)
    assert qs[1].answers == ("William Shakespeare", "Shakespeare")
    assert qs[2].answers == ("Paris", "City of Paris")
    assert qs[3].answers == ("6",)
    assert [x.label for x in qs] == ["reasoning", "memory", "memory", "reasoning"]
    assert qs[0].meta == {"difficulty": "easy"}
    assert qs[0].source == "generic"


def test_csv_and_tsv_loaders() -> None:
    qs = load_csv(str(FIX / "generic.csv"), columns=MAP, source="mine")
    assert [x.id for x in qs] == ["c1", "c2", "c3"]
    assert qs[1].answers == ("Mars", "planet Mars")
    assert qs[2].question == "What is 7 times 6, in words, with a comma, please?"
    assert qs[0].source == "mine"
    ts = load_question_set("tsv", path=str(FIX / "generic.tsv"))
    assert [(x.id, x.answers, x.label) for x in ts] == [
        ("t1", ("6",), "reasoning"),
        ("t2", ("France",), "memory"),
    ]
    fixed = load_tsv(str(FIX / "generic.tsv"), columns={"id": "id"}, source="t", label_map={})
    assert [x.id for x in fixed] == ["t1", "t2"] and fixed[0].source == "t"


def test_fixed_label_and_answer_fallback() -> None:
    qs = load_jsonl(str(FIX / "nolabel.jsonl"), label="reasoning")
    assert [x.label for x in qs] == ["reasoning", "reasoning"]
    assert [x.answers for x in qs] == [("2",), ("4",)]
    assert [x.id for x in qs] == ["nolabel/0", "nolabel/1"]
    with pytest.raises(LirefError, match=r"missing column 'label' in .*nolabel\.jsonl line 1.*"):
        load_jsonl(str(FIX / "nolabel.jsonl"))
    with pytest.raises(LirefError, match="either a fixed label"):
        load_jsonl(str(FIX / "generic.jsonl"), columns=MAP, label="memory")
    with pytest.raises(LirefError, match="bad label 'easy'"):
        load_jsonl(str(FIX / "nolabel.jsonl"), label="easy")


def test_label_map_and_numeric_labels(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("question,label\nq1,math\nq2,trivia\nq3,1\nq4,0\n")
    qs = load_csv(str(f), label_map={"math": "reasoning", "trivia": "memory"})
    assert [x.label for x in qs] == ["reasoning", "memory", "reasoning", "memory"]
    assert all(x.answers == () for x in qs)


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_column_names_column_file_and_present() -> None:
    with pytest.raises(LirefError) as e:
        load_jsonl(str(FIX / "generic.jsonl"), columns={"question": "text", "label": "type"})
    msg = str(e.value)
    assert "'text'" in msg and "generic.jsonl" in msg and "'q'" in msg and "'uid'" in msg
    with pytest.raises(LirefError, match=r"missing column 'prop' in .*nolabel\.jsonl line 1"):
        load_popqa(str(FIX / "nolabel.jsonl"))
    with pytest.raises(LirefError, match=r"missing column 'options'"):
        load_mmlu_pro(str(FIX / "gsm8k_small.jsonl"))
    with pytest.raises(LirefError, match="unknown field"):
        load_jsonl(str(FIX / "generic.jsonl"), columns={"prompt": "q"})


def test_malformed_json_line_number() -> None:
    with pytest.raises(LirefError, match=r"malformed JSON in .*malformed\.jsonl line 3"):
        load_jsonl(str(FIX / "malformed.jsonl"))


def test_empty_file_and_empty_set(tmp_path: Path) -> None:
    with pytest.raises(LirefError, match=r"empty\.jsonl' is empty"):
        load_jsonl(str(FIX / "empty.jsonl"), label="memory")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(LirefError, match="is empty"):
        load_gsm8k(str(blank))
    header_only = tmp_path / "h.csv"
    header_only.write_text("question,answers,label\n")
    with pytest.raises(LirefError, match="is empty"):
        load_csv(str(header_only))


def test_bad_label_value_names_line() -> None:
    with pytest.raises(LirefError, match=r"unknown label value\(s\) 'math' in column 'label' "
                                         r"\(first at .*bad_label\.csv line 3\); allowed: "
                                         r"\['reasoning', 'memory'\] \(or 1/0\)"):
        load_csv(str(FIX / "bad_label.csv"))


def test_classes_name_a_files_two_labels(tmp_path: Path) -> None:
    """``classes=[positive, negative]``: the first is the positive class (label "reasoning",
    target 1); case and 1/0 as for the default names; the default names are then unknown."""
    f = tmp_path / "concept.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "question": f"text {i}", "label": lab}) + "\n"
                         for i, lab in enumerate(["positive", "negative", "Positive", "0", "1"])))
    qs = load_jsonl(str(f), classes=["positive", "negative"])
    assert [x.target for x in qs] == [1, 0, 1, 0, 1]
    assert [x.label for x in qs] == ["reasoning", "memory", "reasoning", "memory", "reasoning"]
    assert [x.target for x in load_jsonl(str(f), classes=["negative", "positive"])] == [
        0, 1, 0, 0, 1]  # the order decides; 1/0 still mean first/second class
    fixed = load_jsonl(str(FIX / "nolabel.jsonl"), label="negative",
                       classes=["positive", "negative"])
    assert {x.label for x in fixed} == {"memory"}
    with pytest.raises(LirefError, match=r"'positive', 'negative'.*allowed: \['reasoning', "):
        load_jsonl(str(f))


def test_unknown_labels_are_one_error_naming_them_all(tmp_path: Path) -> None:
    f = tmp_path / "concept.csv"
    f.write_text("question,label\na,positive\nb,neutral\nc,negative\nd,unsure\ne,neutral\n")
    with pytest.raises(LirefError) as e:
        load_csv(str(f), classes=["positive", "negative"])
    msg = str(e.value)
    assert "'neutral', 'unsure'" in msg and "concept.csv line 3" in msg
    assert "allowed: ['positive', 'negative'] (or 1/0)" in msg and "classes:" in msg
    for bad in (["a"], ["a", "A"], "ab", ["a", ""]):
        with pytest.raises(LirefError, match="classes must"):
            load_csv(str(f), classes=bad)


def test_load_questions_gives_classes_to_file_labelled_sets_only(tmp_path: Path) -> None:
    from probing.questions import load_questions

    f = tmp_path / "concept.jsonl"
    f.write_text("".join(json.dumps({"question": f"item {i}", "label": lab}) + "\n"
                         for i, lab in enumerate(["yes", "no"] * 3)))
    sets = [{"name": "jsonl", "path": str(f)},
            {"name": "gsm8k", "path": str(FIX / "gsm8k_small.jsonl")}]
    qs = load_questions(sets, classes=["yes", "no"])
    by_source = Counter((x.source, x.target) for x in qs)
    assert by_source == {("concept", 1): 3, ("concept", 0): 3, ("gsm8k", 1): 3}
    with pytest.raises(LirefError, match="'yes', 'no'"):
        load_questions(sets)  # without classes the file's labels are unknown


def test_missing_local_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(LirefError, match=r"nope\.jsonl' does not exist"):
        load_gsm8k(str(tmp_path / "nope.jsonl"))
    with pytest.raises(LirefError, match=r"does not exist"):
        load_question_set("popqa", path=str(tmp_path / "missing.tsv"))
    odd = tmp_path / "x.parquet"
    odd.write_text("x")
    with pytest.raises(LirefError, match=r"unsupported suffix '\.parquet'"):
        load_gsm8k(str(odd))
    with pytest.raises(LirefError, match="no single data file"):
        load_jsonl(str(FIX), label="memory")


def test_duplicate_ids_and_empty_question(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n')
    with pytest.raises(LirefError, match=r"line 2: duplicate id '1' \(first at .*line 1\)"):
        load_jsonl(str(f), label="memory")
    f.write_text('{"question": "  "}\n')
    with pytest.raises(LirefError, match="empty question"):
        load_jsonl(str(f), label="memory")


def test_unknown_set_and_unknown_option() -> None:
    with pytest.raises(LirefError, match=r"unknown question set 'gsm9k'; allowed: .*'gsm8k'"):
        load_question_set("gsm9k")
    with pytest.raises(LirefError, match=r"gsm8k: unknown option\(s\) \['columns'\]"):
        load_question_set("gsm8k", path=str(FIX / "gsm8k_small.jsonl"), columns={})
    with pytest.raises(LirefError, match="needs a local path"):
        load_jsonl(None)


def test_parse_answers_shapes() -> None:
    assert parse_answers(' ["a", " b ", "a", ""] ') == ("a", "b")
    assert parse_answers("['x', 'y']") == ("x", "y")  # Python-style list from pandas
    assert parse_answers("[not json") == ("[not json",)
    assert parse_answers(18.0) == ("18",) and parse_answers(None) == ()
    with pytest.raises(LirefError, match="must be a string"):
        parse_answers({"a": 1}, "f line 1")


# ---------------------------------------------------------------------------------------------
# The hub (no network here: a stand-in ``datasets`` module)


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]] | None) -> list:
    calls: list = []

    def load_dataset(name: str, config: str | None = None, split: str | None = None) -> list:
        calls.append((name, config, split))
        if rows is None:
            raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)")
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gsm8k", ("openai/gsm8k", "main", "test")),
        ("mmlu_pro", ("TIGER-Lab/MMLU-Pro", None, "test")),
        ("mgsm", ("juletxara/mgsm", "en", "test")),
        ("popqa", ("akariasai/PopQA", None, "test")),
    ],
)
def test_hub_unreachable_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, name: str, expected: tuple
) -> None:
    calls = _fake_datasets(monkeypatch, None)
    with pytest.raises(LirefError) as e:
        load_question_set(name)
    assert calls == [expected]
    msg = str(e.value)
    assert expected[0] in msg and "unreachable" in msg and "path=" in msg


def test_hub_rows_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_datasets(
        monkeypatch,
        [{"question": "q?", "answer": None, "answer_number": 5600, "equation_solution": None}],
    )
    assert load_mgsm(None, language="en")[0].answers == ("5600",)
    _fake_datasets(
        monkeypatch,
        [
            {
                "id": 7,
                "subj": "S",
                "prop": "genre",
                "obj": "rock",
                "s_pop": 12,
                "question": "What genre is S?",
                "possible_answers": '["rock", "rock music"]',
            }
        ],
    )
    pq = load_popqa(None)[0]
    assert pq.id == "popqa/test/7" and pq.answers == ("rock", "rock music")
    assert pq.meta["s_pop"] == 12
    calls = _fake_datasets(monkeypatch, [{"question": "q", "answer": "a\n#### 4"}])
    assert load_gsm8k(None, split="train")[0].id == "gsm8k/train/0"
    assert calls == [("openai/gsm8k", "main", "train")]
    calls = _fake_datasets(monkeypatch, [{"text": "q1", "gold": ["a", "b"]}])
    cols = {"question": "text", "answers": "gold"}
    gen = load_jsonl(None, "test", hub="org/my_set", config="c", label="memory", columns=cols)
    assert calls == [("org/my_set", "c", "test")]
    assert (gen[0].id, gen[0].answers, gen[0].source) == ("my_set/0", ("a", "b"), "my_set")


# ---------------------------------------------------------------------------------------------
# Balanced sampling


def test_sample_balanced_equal_per_label() -> None:
    qs = [q(i, "reasoning") for i in range(30)] + [q(i, "memory") for i in range(30, 50)]
    s = sample_balanced(qs, n=10, seed=0)
    assert Counter(x.label for x in s) == {"reasoning": 5, "memory": 5}
    odd = sample_balanced(qs, n=11, seed=0)
    assert Counter(x.label for x in odd) == {"reasoning": 6, "memory": 5}
    assert [x.id for x in s] == sorted((x.id for x in s), key=lambda i: int(i.split("/")[1]))


def test_sample_balanced_short_label_gives_rest_to_other() -> None:
    qs = [q(i, "reasoning") for i in range(30)] + [q(i, "memory") for i in range(30, 33)]
    s = sample_balanced(qs, n=10, seed=1)
    assert Counter(x.label for x in s) == {"reasoning": 7, "memory": 3}
    assert len(sample_balanced(qs, n=1000, seed=1)) == 33  # never more than exist
    assert len({x.id for x in sample_balanced(qs, n=1000, seed=1)}) == 33
    one = [q(i, "memory") for i in range(5)]
    assert len(sample_balanced(one, n=3, seed=0)) == 3


def test_sample_balanced_deterministic_and_nested() -> None:
    qs = [q(i, "reasoning" if i % 3 else "memory") for i in range(300)]
    a = sample_balanced(qs, n=40, seed=7)
    assert a == sample_balanced(qs, n=40, seed=7)
    assert a != sample_balanced(qs, n=40, seed=8)
    assert {x.id for x in sample_balanced(qs, n=20, seed=7)} <= {x.id for x in a}
    assert sample_balanced(qs, n=None) == qs


def test_sample_balanced_bad_n() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(LirefError, match="must be a positive integer"):
            sample_balanced([q(0, "memory")], n=bad)  # type: ignore[arg-type]


def test_balanced_quotas() -> None:
    assert balanced_quotas({"reasoning": 4, "memory": 100}, 10) == {"reasoning": 4, "memory": 6}
    assert balanced_quotas({"reasoning": 4, "memory": 3}, 10) == {"reasoning": 4, "memory": 3}
    assert balanced_quotas({"reasoning": 9, "memory": 9}, 9) == {"reasoning": 5, "memory": 4}


def test_load_question_set_samples_through_registry() -> None:
    qs = load_question_set("jsonl", path=str(FIX / "generic.jsonl"), n=2, seed=0, columns=MAP)
    assert Counter(x.label for x in qs) == {"reasoning": 1, "memory": 1}


def test_registered_custom_loader_gets_dedupe_and_balanced_sampling(monkeypatch) -> None:
    """``register_question_set`` (the notebook way to plug a loader of one's own in): its
    questions go through the same de-duplication and balanced sampling as the built-in sets."""
    import probing.questions as pq

    monkeypatch.setattr(pq, "_CUSTOM", {})  # the registry is global: leave it as found
    seen: dict[str, Any] = {}

    def mine(path: str | None, split: str | None, **options: Any) -> list[Question]:
        seen.update(path=path, split=split, **options)
        return [q(i, "memory") for i in range(6)] + [q(i, "reasoning") for i in range(6, 9)] + [
            Question(id="t/dup", question="QUESTION 0", answers=("a",), label="memory",
                     source="t")]

    pq.register_question_set("mine", mine)
    qs = load_question_set("mine", path="p", split="s", n=4, seed=0, flavour="x")
    assert seen == {"path": "p", "split": "s", "flavour": "x"}
    assert Counter(x.label for x in qs) == {"reasoning": 2, "memory": 2}
    assert len(load_question_set("mine")) == 9  # "QUESTION 0" duplicates "question 0"
    with pytest.raises(LirefError, match="'mine'"):  # the error lists registered names too
        load_question_set("nope")
