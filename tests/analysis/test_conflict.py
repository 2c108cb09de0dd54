"""The knowledge-conflict stage end to end on the organism (built from its memorized facts and
asked of the committed checkpoint), and the steering of the conflict sets."""

from __future__ import annotations

import json

from probing.conflicts.build import fact_group
from probing.report.results import latest_run


def test_conflict_stage_reads_behaviour_transfer_and_knob(organism_study):
    run = latest_run("pipeline", organism_study / "outputs")
    m = json.loads((run / "conflict" / "metrics.json").read_text())
    summary = json.loads((run / "conflict" / "conflict.json").read_text())
    total = summary["total"]
    # every organism fact is asked (3 attributes); context + memory + other = known
    assert set(summary["counts"]) == {"colour", "town", "number"}
    assert total["context"] + total["memory"] + total["other"] == total["known"] > 0
    assert m["n_context"] == total["context"] and m["n_memory"] == total["memory"]
    for key in ("best/auroc", "control/bow_auroc", "control/embedding_auroc",
                "control/format_auroc", "best/residualised_auroc",
                "transfer/organism/auroc", "knob/organism/cosine", "knob/organism/p_value",
                "margin/auroc"):
        assert key in m, key
    assert m["best/auroc_ci_low"] <= m["best/auroc"] <= m["best/auroc_ci_high"]
    assert m["knob/organism/null_low"] < m["knob/organism/null_high"]
    # the behavioural label and the continuous margin agree (same prompts, same model)
    assert m["margin/mean_context"] > m["margin/mean_memory"]
    # the probe's chosen layer is where the LiReF is read
    assert m["transfer/organism/layer"] == json.loads(
        (run / "probe" / "metrics.json").read_text())["best_layer"]
    split = json.loads((run / "conflict" / "split.json").read_text())
    groups = [{fact_group(i) for i in split[p]} for p in ("train", "val", "test")]
    assert not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_conflict_sets_are_steered_with_the_knob_on_held_out_facts(organism_study):
    run = latest_run("pipeline", organism_study / "outputs")
    rows = json.loads((run / "steer" / "results.json").read_text())
    sets = {r["set"] for r in rows}
    assert {"conflict_counterfactual", "conflict_consistent", "conflict_closed_book"} <= sets
    conds = {r["condition"] for r in rows if r["set"] == "conflict_counterfactual"}
    assert {"direction", "negated", "random", "conflict", "negated_conflict"} <= conds
    cf = [r for r in rows if r["set"] == "conflict_counterfactual" and r["intervention"] == "add"]
    assert all("rate_context_diff" in r for r in cf)
    assert all("margin_diff" in r for r in cf)
    items = json.loads((run / "steer" / "items.json").read_text())
    split = json.loads((run / "conflict" / "split.json").read_text())
    fitted = {fact_group(i) for i in split["train"] + split["val"]}
    steered = {fact_group(i) for key, v in items.items() if key.startswith("conflict_")
               for i in v["item_ids"]}
    assert steered and not steered & fitted
    report = (run / "report.md").read_text()
    assert "## Knowledge conflicts" in report and "conflict sets under steering" in report


def test_conflict_job_on_a_tiny_model_and_a_popqa_file(tmp_path, monkeypatch, capsys):
    """``analysis.conflict`` end to end on a tiny random model and a PopQA-like file, then the
    steering job on its set with the conflict run as probe run and knob, greedy answers of the
    set's build stood in for (a random model knows nothing)."""
    import probing.conflicts.build as build
    from tests.conflicts.test_build import FakeAnswers
    from tests.job_fixtures import run_main_in_process, write_questions
    from tests.tiny_models import save_tiny_model

    rows = [{"question": f"In what country is Town{i}?", "prop": "country",
             "possible_answers": [f"Land{i % 8}"]} for i in range(60)]
    popqa = tmp_path / "popqa.jsonl"
    popqa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(build, "_generate", FakeAnswers(rows))
    model = save_tiny_model("llama", tmp_path / "model")
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=12)
    common = ["model=local", f"model.name={model}", "data=local_file",
              f"data.sets.0.path={questions}", "logger=disabled", "eval.n_resamples=50"]
    code, err = run_main_in_process(
        "analysis.conflict", [*common, f"conflict_data.sets.0.path={popqa}",
                              "n_permutations=50", "hydra.run.dir=conflict"],
        tmp_path, monkeypatch, capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "conflict" / "metrics.json").read_text())
    assert m["counts/known"] == 30 and m["n_context"] + m["n_memory"] == 20
    assert not [k for k in m if k.startswith(("transfer/", "knob/"))]  # no probe_dir given
    # the format control, the fact's relation as its category covariate
    controls = json.loads((tmp_path / "conflict" / "controls.json").read_text())
    assert controls["format_category_keys"] == ["relation"]
    assert {"control/format_auroc", "best/residualised_auroc", "best/selectivity_bow"} <= set(m)
    code, err = run_main_in_process(
        "analysis.steer", [*common[:2], "logger=disabled", "probe_dir=conflict",
                           "conflict_dir=conflict", "steering.controls.n_random=1",
                           "steering.controls.n_permuted=1",
                           "steer=benchmarks_cpu", f"steer.root={tmp_path}",
                           "steer.sets=[{set: cf, name: popqa_conflict, path: " + str(popqa)
                           + ", kinds: [counterfactual], contrast: [context_answer, "
                           "memory_answer], rates: {context: context_answer}, generate_n: 6}]",
                           "steering.strengths.add=[1.0]", "steering.n_resamples=50",
                           "hydra.run.dir=steer"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    steered = json.loads((tmp_path / "steer" / "results.json").read_text())
    assert {r["condition"] for r in steered} >= {"direction", "conflict", "negated_conflict"}
    # erase (a default): the conflict run's labels erased, beside one permuted-label eraser
    assert {(r["condition"], r["seed"]) for r in steered if r["intervention"] == "erase"} == \
        {("direction", None), ("permuted", 0)}
    assert {r["metric"] for r in steered if r["set"] == "cf"} == {"teacher_forced", "generate"}
    # the facts the knob was fitted on are left out of the steering set
    split = json.loads((tmp_path / "conflict" / "split.json").read_text())
    fitted = {fact_group(i) for i in split["train"] + split["val"]}
    items = json.loads((tmp_path / "steer" / "items.json").read_text())
    assert not {fact_group(i) for i in items["cf/teacher_forced"]["item_ids"]} & fitted
