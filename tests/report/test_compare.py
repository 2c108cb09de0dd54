"""The side-by-side table of finished runs (``probing.report.compare``), on two tiny finished
runs: one with every stage (written by hand, as the report's tests do) and one that stopped
after a real probe stage on a tiny model. One row per run with the model its probe stage
recorded; every number equal to its stage's metrics.json; ``—`` where a stage did not run; one
clear error for a folder that is not a finished run."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from probing.errors import LirefError
from probing.io import write_json, write_metrics
from probing.report.build import build_report
from probing.report.compare import COLUMNS, MISSING, build_compare
from tests.report.test_findings import write_run

#: a conflict stage's metrics (the behavioural readout beside its controls)
CONFLICT = {"best_layer": 20, "best/auroc": 0.734, "best/auroc_ci_low": 0.6,
            "best/auroc_ci_high": 0.854, "control/bow_auroc": 0.781,
            "control/format_auroc": 0.853, "control/embedding_auroc": 0.612,
            "counts/known": 463, "counts/context": 133, "counts/memory": 106, "counts/other": 9}
#: the steering stage's conflict-set effects (generated scoring)
CONFLICT_STEER = {
    "conflict_counterfactual/generate/unsteered/rate_memory": 0.3,
    "conflict_counterfactual/generate/unsteered/rate_context": 0.6,
    "conflict_counterfactual/generate/add/negated/rate_memory_diff": 0.25,
    "conflict_counterfactual/generate/add/negated/rate_memory_diff_ci_low": 0.05,
    "conflict_counterfactual/generate/add/negated/rate_memory_diff_ci_high": 0.45,
    "conflict_counterfactual/generate/add/random/rate_memory_diff": -0.033,
    "conflict_counterfactual/generate/add/direction/rate_context_diff": -0.4,
    "conflict_counterfactual/generate/add/direction/rate_context_diff_ci_low": -0.6,
    "conflict_counterfactual/generate/add/direction/rate_context_diff_ci_high": -0.2,
    "conflict_counterfactual/generate/add/random/rate_context_diff": -0.37}


def full_run(root: Path, model: str = "SmolLM2-135M", n_layers: int = 30) -> Path:
    """A finished run with every stage (metrics and the files the report reads), its probe
    stage recording ``model`` with ``n_layers`` blocks."""
    run = write_run(root)
    write_json(run / "probe" / "directions" / "directions.json",
               {"model": model, "n_layers": n_layers, "d_model": 64, "best_layer": 2})
    write_metrics(run / "conflict", CONFLICT)
    steer = json.loads((run / "steer" / "metrics.json").read_text())
    write_metrics(run / "steer", {**steer, **CONFLICT_STEER})
    return run


def probe_only_run(root: Path, tiny_llama: Any) -> Path:
    """A run that stopped after a real probe stage on a tiny model (with a transfer set)."""
    from probing.probes.data import probe_data
    from probing.probes.run import run_probe_stage
    from probing.questions import load_questions
    from tests.job_fixtures import write_questions

    model, tok = tiny_llama
    questions = load_questions([{"name": "jsonl", "path": str(
        write_questions(root / "q.jsonl", n_per_label=16))}])
    data = probe_data(model, tok, questions, root / "cache", layers=[0, 1, 2])
    run = root / "probe_only"
    report = run_probe_stage(data, run / "probe", n_resamples=50,
                             metadata={"n_layers": model.config.num_hidden_layers},
                             transfer={"again": data})
    write_metrics(run / "probe", report.metrics)
    return run


class _Table(HTMLParser):
    """The rows of the page's first table: per cell its text and its ``data-key`` spans."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[dict[str, Any]]] = []
        self.tables = 0
        self._cell: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables += 1
        elif tag == "tr" and self.tables == 1:
            self.rows.append([])
        elif tag == "td" and self.tables == 1:
            self._cell = {"text": "", "spans": []}
            self.rows[-1].append(self._cell)
        if tag in ("span", "td") and "data-key" in a and self._cell is not None:
            self._cell["spans"].append((a["data-key"], float(a["data-value"] or "nan")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data


def _recorded(run: Path, source: str) -> float:
    stage, key = source.split(":", 1)
    return json.loads((run / stage / "metrics.json").read_text())[key]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Any) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    return full_run(root / "full"), probe_only_run(root, tiny_llama)


def test_one_row_per_run_with_its_model_and_its_stages_numbers(two_runs, tmp_path):
    full, probe_only = two_runs
    md, page, data = build_compare([full, probe_only], tmp_path / "out")
    table = json.loads(data.read_text())
    assert [c["key"] for c in table["columns"]] == [k for k, _, _ in COLUMNS]
    assert all(c["how_to_read"] for c in table["columns"])
    rows = table["rows"]
    assert len(rows) == 2
    tiny_model = json.loads((probe_only / "probe" / "directions" / "directions.json"
                             ).read_text())["model"]
    assert [r["model"] for r in rows] == ["SmolLM2-135M", tiny_model]
    assert [r["run"] for r in rows] == [str(full), str(probe_only)]
    # every number a cell shows equals its stage's metrics.json value, in each run
    for run, row in zip((full, probe_only), rows, strict=True):
        shown = [(k, v) for cell in row["cells"].values() for k, v in cell["values"].items()]
        assert shown
        for source, value in shown:
            assert value == _recorded(run, source), (run, source)
    # the full run: every finding, with the values of its artifacts
    cells = rows[0]["cells"]
    assert MISSING not in [c["text"] for c in cells.values()]
    assert rows[0]["n_blocks"] == 30 and rows[0]["depth"] == pytest.approx(2 / 30)
    assert cells["block"]["text"] == "2 of 30 (0.07)"
    assert cells["probe"]["text"] == ("0.962 [0.931, 0.985] vs format covariates 0.935")
    assert cells["probe"]["values"] == {"probe:best/auroc": 0.962,
                                        "probe:best/auroc_ci_low": 0.931,
                                        "probe:best/auroc_ci_high": 0.985,
                                        "probe:control/format_auroc": 0.935}
    assert cells["transfer"]["text"] == ("matched (exception vs ordinary): 0.512 [0.440, 0.580] "
                                         "vs embedding probe 0.497")
    assert cells["conflict"]["text"] == "block 20: 0.734 [0.600, 0.854] vs format covariates 0.853"
    assert cells["conflict_steer"]["text"] == (
        "-LiReF memory-answer rate +0.250 [+0.050, +0.450] vs random -0.033; "
        "+LiReF context-answer rate -0.400 [-0.600, -0.200] vs random -0.370")
    assert cells["sae"]["text"] == ("block 2, width 512: EV 0.874, CE recovered 0.953, "
                                    "dead 0.125")
    assert cells["latent"]["text"] == ("latent 17: cosine 0.444; permuted null 95% 0.401, "
                                       "p 0.021; random null 95% 0.233, p 0.002")
    assert cells["steer"]["text"].startswith(
        "+LiReF on exceptions: rule-answer rate +0.500 [+0.420, +0.580] vs random +0.150; "
        "-LiReF on near-exceptions: stale-answer rate +0.060 [-0.020, +0.140] vs random -0.005")
    assert cells["steer"]["text"].endswith("(add, strength 1 at layer 2)")
    # the run that stopped after its probe stage: probe and transfer, "—" for every later stage
    cells = rows[1]["cells"]
    probe = json.loads((probe_only / "probe" / "metrics.json").read_text())
    assert cells["block"]["values"] == {"probe:best_layer": probe["best_layer"]}
    assert rows[1]["n_blocks"] == 3
    assert cells["probe"]["values"]["probe:best/auroc"] == probe["best/auroc"]
    assert cells["transfer"]["values"]["probe:transfer/again/auroc"] == probe[
        "transfer/again/auroc"]
    for key in ("conflict", "conflict_steer", "sae", "latent", "steer"):
        assert cells[key] == {"text": MISSING, "values": {}}, key
    # the page: one table, two rows, each number a span sourced to its stage's metrics.json
    parsed = _Table()
    parsed.feed(page.read_text())
    body = [r for r in parsed.rows if r]
    assert len(body) == 2
    for run, row, cells_json in zip((full, probe_only), body, rows, strict=True):
        assert [c["text"] for c in row] == [cells_json["cells"][k]["text"]
                                            for k, _, _ in COLUMNS]
        for cell in row:
            for source, value in cell["spans"]:
                assert value == _recorded(run, source), source
    assert body[0][0]["text"] == "SmolLM2-135M (run)"
    # the Markdown: the same two rows, headline figures bold, a how-to-read line per column
    text = md.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # the header and two rows
    assert lines[1].startswith("| SmolLM2-135M (run) | 2 of 30 (0.07) | **0.962** [0.931, 0.985]")
    assert lines[2].count(f"| {MISSING} ") == 5
    reading = text[text.index("## How to read"):]
    assert len(re.findall(r"^\*\*.+?\*\*: ", reading, flags=re.M)) == len(COLUMNS)


def test_the_numbers_are_those_of_the_single_run_report(two_runs, tmp_path):
    """The same figure, the same number: every source the comparison shows of a run is a number
    its own report shows too, with the same value."""
    full, _ = two_runs
    _, _, data = build_compare([full], tmp_path / "out")
    shown = {k: v for cell in json.loads(data.read_text())["rows"][0]["cells"].values()
             for k, v in cell["values"].items()}
    _, page = build_report(full)
    in_report = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page.read_text()))
    missing = {k for k in shown if k not in in_report}
    assert not missing
    assert all(float(in_report[k]) == v for k, v in shown.items())


def test_a_folder_that_is_not_a_finished_run_is_one_clear_error(two_runs, tmp_path):
    full, _ = two_runs
    partial = tmp_path / "stopped"
    (partial / "probe").mkdir(parents=True)  # the probe stage never finished
    write_json(partial / "probe" / "per_layer.json", [])
    for bad, why in ((partial, "holds no finished probe stage"),
                     (tmp_path / "nowhere", "does not exist"),
                     (full / "probe" / "directions" / "directions.json", "holds no finished")):
        with pytest.raises(LirefError, match="is not a finished run folder") as err:
            build_compare([full, bad], tmp_path / "out")
        assert str(bad) in str(err.value) and why in str(err.value)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(LirefError, match="give the run folders to compare"):
        build_compare([], tmp_path / "out")
