"""The steering section of the report after a held-out choice of strengths: the chosen strengths,
the halves' sizes and the prompting baseline beside the interventions; the findings read the
steered rates from the report half."""

from __future__ import annotations

import json

from tests.report.test_findings import lines, parse, write_run


def test_the_steer_section_shows_the_held_out_choice_and_the_prompt_baseline(tmp_path):
    run = write_run(tmp_path, stages=("probe", "steer"))
    steer = run / "steer"
    m = json.loads((steer / "metrics.json").read_text())
    m.update({"headline/add/fixed": 0.0, "headline/add/objective": 0.25,
              "selection/exceptions/n_choice": 20.0, "selection/exceptions/n_report": 22.0,
              "selection/near_exceptions/n_choice": 15.0,
              "selection/near_exceptions/n_report": 15.0,
              "exceptions/teacher_forced/prompt/direction/diff": 0.05,
              "exceptions/teacher_forced/prompt/direction/diff_ci_low": -0.05,
              "exceptions/teacher_forced/prompt/direction/diff_ci_high": 0.15,
              "exceptions/teacher_forced/prompt/direction/p_value": 0.5})
    (steer / "metrics.json").write_text(json.dumps(m))
    rows = json.loads((steer / "results.json").read_text())
    # the report half's rows: the steered rate the findings show comes from there
    report = [{**r, "rate_rule": r["rate_rule"] + 0.1} if r.get("condition") == "direction"
              and r.get("set") == "exceptions" else r for r in rows]
    (steer / "results_report.json").write_text(json.dumps(report))
    page, md = parse(run)
    assert ("each strength chosen on half A (35 items) by the objective, every figure below "
            "measured on half B (37 items)") in md
    assert "strengths chosen on half A, measured on half B" in md
    assert "| add | 1.000 | half A | 0.250 |" in md
    assert "| exceptions | 20 | 22 |" in md
    assert "| prompt | direction | 0.050 [-0.050, 0.150] | 0.500 |" in md
    assert any(s.endswith("; prompting 0.050 [-0.050, 0.150]") for s in page.summaries)
    assert "0.100 \u2192 0.700 (add, strength 1" in lines(page)["+LiReF on exceptions"]
    assert "The prompting baseline" in md
