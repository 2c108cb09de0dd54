"""The report's Findings block and layout, on a run folder written here by hand (no model): the
block comes first, has at most 12 lines, each links to an anchor of the page and shows the
numbers of the stages' metrics.json; a stage that did not run drops its lines; long tables are
collapsed, every table scrolls in its own box, steering figures are as wide as the page."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from probing.figures import agg_figure
from probing.report.blocks import slug
from probing.report.build import build_report
from probing.report.findings import MAX_FINDINGS
from probing.steering.plots import SWEEP_LAYOUT, plot_sweep

PROBE = {
    "best_layer": 2, "n_questions": 200,
    "best/accuracy": 0.91, "best/accuracy_ci_low": 0.86, "best/accuracy_ci_high": 0.95,
    "best/auroc": 0.962, "best/auroc_ci_low": 0.931, "best/auroc_ci_high": 0.985,
    "best/selectivity": 0.027, "best/selectivity_bow": 0.041,
    "best/residualised_auroc": 0.552, "best/residualised_auroc_ci_low": 0.47,
    "best/residualised_auroc_ci_high": 0.63,
    "control/format_auroc": 0.935, "control/format_auroc_ci_low": 0.9,
    "control/format_auroc_ci_high": 0.96,
    "control/bow_auroc": 0.921, "control/bow_auroc_ci_low": 0.88, "control/bow_auroc_ci_high": 0.95,
    "control/embedding_auroc": 0.843, "control/embedding_auroc_ci_low": 0.79,
    "control/embedding_auroc_ci_high": 0.89,
    "transfer/matched/auroc": 0.512, "transfer/matched/auroc_ci_low": 0.44,
    "transfer/matched/auroc_ci_high": 0.58,
    "transfer/matched/control/bow_auroc": 0.473, "transfer/matched/control/bow_auroc_ci_low": 0.4,
    "transfer/matched/control/bow_auroc_ci_high": 0.55,
    "transfer/matched/control/embedding_auroc": 0.497,
    "transfer/matched/control/embedding_auroc_ci_low": 0.42,
    "transfer/matched/control/embedding_auroc_ci_high": 0.57,
    "transfer/matched/selectivity": 0.039,
}
SAE = {"layer": 2, "d_sae": 512, "l0": 12.5, "explained_variance": 0.874, "mse": 3.2,
       "dead_fraction": 0.125, "ce_loss_recovered": 0.953}
MATCH = {"top1_latent": 17, "top1_cosine": 0.444, "top1_p": 0.021, "top1_p_random": 0.002,
         "null_max_abs_cosine_permutation_95": 0.401, "null_max_abs_cosine_random_95": 0.233,
         "n_significant_q05": 3, "n_significant_q05_random": 40,
         "sparse_latents_auroc_k1": 0.701, "sparse_latents_auroc_k5": 0.83,
         "sparse_neurons_auroc_k1": 0.66, "sparse_neurons_auroc_k5": 0.8, "dense_auroc": 0.97,
         "bow_auroc": 0.921,
         **{f"sparse_probe/saebench/{kind}_k{k}_{name}": value + k / 100
            for kind, base in (("latents", 0.7), ("neurons", 0.6)) for k in (1, 2, 5)
            for name, value in (("accuracy", base), ("accuracy_ci_low", base - 0.1),
                                ("accuracy_ci_high", base + 0.1), ("auroc", base + 0.05),
                                ("auroc_ci_low", base - 0.05), ("auroc_ci_high", base + 0.15),
                                ("balanced_accuracy", base))}}
#: (set, rate): unsteered rate, then the change under (direction, negated, random seeds...)
ORGANISM_RATES = {("exceptions", "rate_rule"): (0.1, {"direction": 0.5, "negated": 0.05,
                                                       "random": [0.1, 0.2]}),
                  ("near_exceptions", "rate_stale"): (0.02, {"direction": 0.01, "negated": 0.06,
                                                            "random": [0.0, -0.01]})}


def _steer_organism() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """metrics.json and results.json of an organism steering run (add at strength 1)."""
    metrics: dict[str, Any] = {"headline/add/strength": 1.0, "headline/add/layer": 2.0}
    rows: list[dict[str, Any]] = []
    for (set_, rate), (base, diffs) in ORGANISM_RATES.items():
        pre = f"{set_}/teacher_forced/"
        metrics[pre + "unsteered/accuracy"] = 0.9
        metrics[pre + f"unsteered/{rate}"] = base
        common = {"set": set_, "metric": "teacher_forced", "rank": None, "latent": None}
        rows.append({**common, "intervention": "none", "layer": None, "strength": 0.0,
                     "condition": "unsteered", "seed": None, "accuracy": 0.9, "ci_low": 0.8,
                     "ci_high": 0.95, rate: base, f"{rate}_ci_low": base, f"{rate}_ci_high": base})
        for cond, diff in diffs.items():
            seeds = diff if isinstance(diff, list) else [diff]
            mean = sum(seeds) / len(seeds)
            key = pre + f"add/{cond}/"
            metrics[key + "diff"] = -mean
            metrics[key + f"{rate}_diff"] = mean
            if cond != "random":
                metrics[key + "p_value"] = 0.003
                metrics[key + "diff_ci_low"], metrics[key + "diff_ci_high"] = -mean - .1, -mean + .1
                metrics[key + f"{rate}_diff_ci_low"] = mean - 0.08
                metrics[key + f"{rate}_diff_ci_high"] = mean + 0.08
            for i, d in enumerate(seeds):
                for strength in (0.5, 1.0):
                    value = base + d * strength
                    rows.append({**common, "intervention": "add", "layer": 2,
                                 "strength": strength, "condition": cond,
                                 "seed": i if cond == "random" else None,
                                 "accuracy": 0.9 - value, "ci_low": 0.8 - value,
                                 "ci_high": 0.95 - value, rate: value,
                                 f"{rate}_ci_low": value - 0.05,
                                 f"{rate}_ci_high": value + 0.05})
    pre = "exceptions/teacher_forced/"  # the removals and the prompting baseline
    for key, value in (("ablate/direction", 0.1), ("erase/direction", 0.12),
                       ("prompt/negated", 0.33), ("prompt/direction", -0.4)):
        metrics[pre + f"{key}/rate_rule_diff"] = value
        metrics[pre + f"{key}/rate_rule_diff_ci_low"] = value - 0.07
        metrics[pre + f"{key}/rate_rule_diff_ci_high"] = value + 0.07
    metrics[pre + "ablate/random/rate_rule_diff"] = 0.0
    metrics[pre + "erase/permuted/rate_rule_diff"] = 0.04
    return metrics, rows


def _steer_real() -> dict[str, Any]:
    """metrics.json of a real model's steering run: GSM8K and PopQA, no ground-truth rates."""
    metrics: dict[str, Any] = {"headline/add/strength": 2.0, "headline/add/layer": 5.0}
    for i, set_ in enumerate(("gsm8k", "popqa")):
        pre = f"{set_}/teacher_forced/"
        metrics[pre + "unsteered/accuracy"] = 0.05
        for j, cond in enumerate(("direction", "negated", "random")):
            metrics[pre + f"add/{cond}/diff"] = 0.0
            metrics[pre + f"add/{cond}/logp_gold_diff"] = 0.25 - i - j
            if cond != "random":
                metrics[pre + f"add/{cond}/logp_gold_diff_ci_low"] = 0.05 - i - j
                metrics[pre + f"add/{cond}/logp_gold_diff_ci_high"] = 0.45 - i - j
        metrics[pre + "ablate/direction/logp_gold_diff"] = -1.9 + i
        metrics[pre + "ablate/random/logp_gold_diff"] = -0.1
        for stat, value in (("diff", -0.2), ("logp_gold_diff", -1.5 + i)):
            metrics[pre + f"erase/direction/{stat}"] = value
            metrics[pre + f"erase/direction/{stat}_ci_low"] = value - 0.3
            metrics[pre + f"erase/direction/{stat}_ci_high"] = value + 0.3
            metrics[pre + f"erase/permuted/{stat}"] = -0.05
        metrics[pre + "ablate/direction/diff"] = -0.1
        metrics[pre + "ablate/direction/diff_ci_low"] = -0.2
        metrics[pre + "ablate/direction/diff_ci_high"] = 0.0
        metrics[pre + "ablate/random/diff"] = 0.0
    return metrics


def _png(path: Path) -> None:
    fig, ax = agg_figure(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)


def write_run(root: Path, stages: tuple[str, ...] = ("probe", "sae", "match", "steer"),
              n_layers: int = 4, real: bool = False, results: bool = True) -> Path:
    """A run folder with the given stages' metrics.json (and the files the report reads)."""
    run = root / "run"
    if "probe" in stages:
        per_layer = [{"layer": i, "accuracy": 0.9, "auroc": 0.95, "val_auroc": 0.94}
                     for i in range(n_layers)]
        metrics = dict(PROBE)
        for i in range(n_layers):
            metrics.update({f"layer_{i:02d}/auroc": 0.9 + i / 1000,
                            f"layer_{i:02d}/selectivity": 0.01})
        _write(run / "probe", metrics, {"per_layer.json": per_layer, "questions.json": {
            "n": 200, "n_groups": 180, "rows": [
                {"set": "probe", "source": "x", "kind": "memory", "label": "memory", "n": 100},
                {"set": "probe", "source": "x", "kind": "reasoning", "label": "reasoning",
                 "n": 100},
                {"set": "transfer:matched", "source": "x", "kind": "exception",
                 "label": "memory", "n": 50},
                {"set": "transfer:matched", "source": "x", "kind": "ordinary",
                 "label": "reasoning", "n": 50}]}})
        _png(run / "probe" / "probe_layers.png")
    if "sae" in stages:
        _write(run / "sae", SAE, {})
    if "match" in stages:
        _write(run / "match", MATCH, {"latents.json": [
            {"rank": r + 1, "latent": 17 + r, "decoder_cosine": 0.4, "gap_share": 0.1}
            for r in range(3)]})
    if "steer" in stages:
        if real:
            _write(run / "steer", _steer_real(), {})
        else:
            metrics, rows = _steer_organism()
            _write(run / "steer", metrics, {"results.json": rows, "settings.json": {
                "prompt": {"exceptions": {"mode": "memory", "instructions": {
                    "direction": "Answer from memory.", "negated": "Think step by step."}}}}}
                if results else {})
            _png(run / "steer" / "steer_teacher_forced_add_L2.png")  # an older layout
    return run


def _write(folder: Path, metrics: dict[str, Any], files: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data))


class Page(HTMLParser):
    """Anchors, the order of the top-level sections, the findings' lines and details/scroll
    boxes of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.h2: list[str] = []  # ids of h2 headings and sections, in page order
        self.findings: list[dict[str, Any]] = []
        self.details = 0
        self.summaries: list[str] = []
        self.tables_in_scroll = 0
        self.tables = 0
        self.wide_images: list[bytes] = []
        self._stack: list[tuple[str, dict[str, str]]] = []
        self._in_findings = False
        self._span: dict[str, str] | None = None
        self._summary: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "section" and "findings" in a.get("class", ""):
            self._in_findings = True
            self.h2.append(a["id"])
        elif tag == "h2" and not self._in_findings:
            self.h2.append(a.get("id", ""))
        elif tag == "li" and self._in_findings:
            self.findings.append({"href": None, "text": "", "spans": []})
        elif tag == "a" and self._in_findings and self.findings:
            self.findings[-1]["href"] = a["href"]
        elif tag == "span" and "data-key" in a:
            self._span = {"key": a["data-key"], "value": a["data-value"], "text": ""}
        elif tag == "details":
            self.details += 1
        elif tag == "summary":
            self._summary = []
        elif tag == "table":
            self.tables += 1
            parent = self._stack[-1] if self._stack else ("", {})
            if parent[0] == "div" and "overflow-x:auto" in parent[1].get("style", ""):
                self.tables_in_scroll += 1
        elif tag == "img" and "wide" in a.get("class", ""):
            self.wide_images.append(base64.b64decode(a["src"].split(",", 1)[1]))
        if tag not in ("img", "meta"):
            self._stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            self._stack.pop()
        if tag == "section":
            self._in_findings = False
        elif tag == "span" and self._span is not None:
            self.findings[-1]["spans"].append(self._span)
            self._span = None
        elif tag == "summary" and self._summary is not None:
            self.summaries.append("".join(self._summary))
            self._summary = None

    def handle_data(self, data: str) -> None:
        if self._in_findings and self.findings:
            self.findings[-1]["text"] += data
        if self._span is not None:
            self._span["text"] += data
        if self._summary is not None:
            self._summary.append(data)


def parse(run: Path) -> tuple[Page, str]:
    """Build the report of ``run``; its parsed HTML page and its Markdown."""
    md, page = build_report(run)
    parsed = Page()
    parsed.feed(page.read_text())
    return parsed, md.read_text()


def lines(page: Page) -> dict[str, str]:
    """``{label: line text}`` of the findings."""
    return {f["text"].split(":", 1)[0]: f["text"] for f in page.findings}


def check_findings(page: Page, run: Path) -> None:
    """The block is the first section, has 1..MAX_FINDINGS lines, each links to an anchor of
    the page, and every number equals its stage's metrics.json value."""
    assert page.h2 and page.h2[0] == "findings", page.h2[:3]
    assert 0 < len(page.findings) <= MAX_FINDINGS
    for f in page.findings:
        assert f["href"].startswith("#") and f["href"][1:] in page.ids, f["href"]
        assert f["spans"], f["text"]
        for span in f["spans"]:
            stage, key = span["key"].split(":", 1)
            recorded = json.loads((run / stage / "metrics.json").read_text())[key]
            assert float(span["value"]) == recorded, span
            assert float(span["text"]) == pytest.approx(recorded, rel=5e-3, abs=5e-4), span
            assert span["text"] in f["text"]


def test_findings_come_first_link_to_their_sections_and_show_the_metrics(tmp_path):
    run = write_run(tmp_path)
    page, md = parse(run)
    check_findings(page, run)
    got = lines(page)
    assert list(got) == ["Probe", "Transfer to matched", "SAE", "Best-matched latent", "Sparse readout",
                         "+LiReF on exceptions", "-LiReF on near-exceptions"]
    assert ("layer 2 (chosen on validation), test AUROC 0.962 [0.931, 0.985] vs 0.935 "
            "[0.900, 0.960] for the strongest control (format covariates); selectivity (minus "
            "the strongest control, format covariates) +0.027; with the format covariates "
            "regressed out: AUROC 0.552 [0.470, 0.630]") in got["Probe"]
    assert ("exception vs ordinary, the probe unchanged: AUROC 0.512 [0.440, 0.580] vs 0.497 "
            "[0.420, 0.570] for the strongest control (embedding probe); selectivity +0.039"
            ) in got["Transfer to matched"]
    assert "layer 2, 512 latents, L0 12.5: CE loss recovered 0.953" in got["SAE"]
    assert ("latent 17 (largest |decoder cosine|): cosine 0.444 vs the nulls' 95% max |cosine|: "
            "0.401 for label-permuted directions (family-wise p 0.021) and 0.233 for random "
            "directions (p 0.002); latents with q < 0.05 against the permuted null: 3"
            ) in got["Best-matched latent"]
    assert "1 / 5 SAE latents 0.701 / 0.830 vs on 1 / 5 neurons 0.660 / 0.800" in \
        got["Sparse readout"]
    assert ("SAEBench protocol (mean-pooled), accuracy on 1 / 2 / 5 latents 0.710 / 0.720 / "
            "0.750 vs neurons 0.610 / 0.620 / 0.650") in got["Sparse readout"]
    assert "k-sparse probes, SAEBench protocol" in md  # the table beside the last-token AUROC
    assert "| latents | 2 | 0.720 [0.620, 0.820] | 0.720 | 0.770 [0.670, 0.870] | n/a |" in md
    # the rate under +LiReF (results.json), its change [95% CI] vs random directions and -LiReF
    assert ("rule-answer rate 0.100 \u2192 0.600 (add, strength 1 at layer 2), change +0.500 "
            "[+0.420, +0.580] vs +0.150 for random directions of the same norm (2 seeds, rates "
            "0.200\u20130.300) and +0.050 for -LiReF") in got["+LiReF on exceptions"]
    # beside it: ablation vs random, LEACE vs permuted-label erasers, and the instruction that
    # pushes the same way as +LiReF ("Think step by step.", the exceptions' negated condition)
    assert ("; ablating it +0.100 [+0.030, +0.170] vs +0.000 for random ablations; erasing the "
            "label (LEACE) +0.120 [+0.050, +0.190] vs +0.040 for erasers of permuted labels; "
            'prompting "Think step by step." +0.330 [+0.260, +0.400]') in got["+LiReF on exceptions"]
    assert ("stale-answer rate 0.020 \u2192 0.080 (add, strength 1 at layer 2), change +0.060 "
            "[-0.020, +0.140] vs -0.005 for random directions") in got["-LiReF on near-exceptions"]
    anchors = {f["text"].split(":", 1)[0]: f["href"] for f in page.findings}
    assert anchors["Probe"] == "#" + slug("Probes and the reasoning direction per layer")
    assert anchors["+LiReF on exceptions"] == "#" + slug(
        "Ground truth on the organism: exceptions and near-exceptions")
    # report.md: the same list first, each linking to a heading of the file
    head = md.split("\n## ", 2)
    assert head[1].startswith("Findings\n")
    md_lines = [line for line in head[1].splitlines() if line.startswith("- ")]
    assert len(md_lines) == len(page.findings)
    slugs = {slug(h) for h in re.findall(r"^#{1,3} (.+)$", md, flags=re.M)}
    for line in md_lines:
        target = re.match(r"- \[\*\*.+?\*\*\]\(#([^)]+)\)", line)
        assert target and target.group(1) in slugs, line
    assert "test AUROC **0.962** [0.931, 0.985]" in md_lines[0]  # the headline figure bold


def test_a_missing_stage_or_set_drops_its_lines(tmp_path):
    run = write_run(tmp_path / "a", stages=("probe", "match"))
    page, _ = parse(run)
    check_findings(page, run)
    assert list(lines(page)) == ["Probe", "Transfer to matched", "Best-matched latent",
                                 "Sparse readout"]

    run = write_run(tmp_path / "b", stages=("steer",), results=False)
    page, md = parse(run)
    check_findings(page, run)
    got = lines(page)
    assert list(got) == ["+LiReF on exceptions", "-LiReF on near-exceptions"]
    assert "\u2192" not in got["+LiReF on exceptions"]  # no results.json: no steered rate
    assert "seeds" not in got["+LiReF on exceptions"]

    shutil.rmtree(run / "steer")
    _write(run / "sae", {"mse": 1.0}, {})  # no figure the findings show
    page, md = parse(run)
    assert page.findings == [] and "## Findings" not in md


def test_a_real_model_gets_one_line_per_steered_set(tmp_path):
    run = write_run(tmp_path, stages=("probe", "steer"), real=True)
    page, _ = parse(run)
    check_findings(page, run)
    got = lines(page)
    assert list(got) == ["Probe", "Transfer to matched", "+LiReF on gsm8k", "+LiReF on popqa"]
    assert ("gold-answer log-prob change (add, strength 2 at layer 5) +0.250 [+0.050, +0.450] "
            "vs -1.750 for random directions of the same norm and -0.750 for -LiReF; ablating "
            "it -1.900 vs -0.100 for random ablations; erasing the label (LEACE) -1.500 "
            "[-1.800, -1.200] vs -0.050 for erasers of permuted labels") in got["+LiReF on gsm8k"]
    assert "-0.750 [-0.950, -0.550]" in got["+LiReF on popqa"]
    # the paired table: erase right after ablate, its summary beside ablation's
    (summary,) = [s for s in page.summaries if s.startswith("gsm8k")]
    assert summary.endswith("; ablate -0.100 [-0.200, 0.000] vs random 0.000; erase (LEACE) "
                            "-0.200 [-0.500, 0.100] vs permuted labels -0.050")


def test_long_tables_collapse_and_every_table_scrolls_in_its_box(tmp_path):
    run = write_run(tmp_path, n_layers=30)
    page, md = parse(run)
    assert page.tables and page.tables_in_scroll == page.tables
    assert "held-out test figures per layer: 30 rows" in page.summaries
    paired = [s for s in page.summaries if s.startswith(("exceptions", "near_exceptions"))]
    assert paired == ["exceptions (teacher-forced): 9 settings (ablate, add, erase, prompt); "
                      "+LiReF accuracy diff "
                      "-0.500 [-0.600, -0.400] vs random -0.150",
                      "near_exceptions (teacher-forced): 3 settings (add); +LiReF accuracy diff "
                      "-0.010 [-0.110, 0.090] vs random 0.005"]
    assert "<details><summary>held-out test figures per layer: 30 rows</summary>" in md
    # the steering figure of an older layout is drawn again from results.json, page-wide
    (figure,) = page.wide_images
    assert figure != (run / "steer" / "steer_teacher_forced_add_L2.png").read_bytes()
    assert SWEEP_LAYOUT.encode() in figure


def test_sweep_figures_keep_at_most_three_panels_a_row(tmp_path):
    _, rows = _steer_organism()
    values = ["accuracy", "rate_rule", "rate_stale"]
    path = plot_sweep(rows, tmp_path / "sweep.png", "teacher_forced", "add", 2, None, values)
    data = Path(path).read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 3 * 340 and height > width / 3  # 4 panels: 2 rows of at most 3
    assert SWEEP_LAYOUT.encode() in data
    run = write_run(tmp_path / "new")
    shutil.copy(path, run / "steer" / "steer_teacher_forced_add_L2.png")
    page, _ = parse(run)
    assert page.wide_images == [data]  # drawn in the current layout: embedded as it is


def test_token_injection_leads_with_the_class_against_random_tokens(tmp_path):
    run = write_run(tmp_path, stages=("match",))
    injection = {"liref_injection_d": 2.5, "liref_injection_d_random_matched": 0.4,
                 "liref_injection_d_excess": 2.1, "liref_injection_d_excess_lo": 1.2,
                 "liref_injection_d_excess_hi": 3.0, "frac_token_driven_vs_random_top20": 0.25,
                 "frac_token_driven_top20": 0.9}
    latents = [{"rank": 1, "latent": 17, "injection_d_excess": 0.1, "injection_d_excess_lo": -0.3,
                "injection_d_excess_hi": 0.5, "injection_class_vs_random": "context-dependent",
                "injection_d": 1.4, "injection_class": "token-driven"}]
    _write(run / "match", {**MATCH, **injection}, {"latents.json": latents})
    page, md = parse(run)
    check_findings(page, run)
    assert ("LiReF projection: own top tokens move it by d 2.500 vs 0.400 for random tokens of "
            "the same frequency bands at the same positions, excess +2.100 [+1.200, +3.000]; "
            "share of the top latents token-driven against random tokens 0.250 (old class, own "
            "tokens vs none: 0.900)") in lines(page)["Token injection"]
    # the latents table: the class against random tokens before the old class
    header = next(line for line in md.splitlines() if line.startswith("| rank |"))
    assert header.index("| injection_class_vs_random |") < header.index("| injection_class |")
    assert "| injection_d_excess_lo |" in header
