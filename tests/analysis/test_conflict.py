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
    assert all("margin_diff" in r for r in cf if r["metric"] == "teacher_forced")
    assert {r["metric"] for r in cf} == {"teacher_forced", "generate"}  # generate_n: a sample
    items = json.loads((run / "steer" / "items.json").read_text())
    split = json.loads((run / "conflict" / "split.json").read_text())
    fitted = {fact_group(i) for i in split["train"] + split["val"]}
    steered = {fact_group(i) for key, v in items.items() if key.startswith("conflict_")
               for i in v["item_ids"]}
    assert steered and not steered & fitted
    report = (run / "report.md").read_text()
    assert "## Knowledge conflicts" in report and "conflict sets under steering" in report
