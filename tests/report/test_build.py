"""report.md / report.html from a run folder's artifacts alone: every image embedded, every
table present, every number equal to the stage's metrics.json."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from probing.errors import LirefError
from probing.probes.data import probe_data
from probing.probes.run import run_probe_stage
from probing.questions import load_questions
from probing.report.build import build_report, write_environment
from tests.job_fixtures import write_questions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Images, table captions and data-key cells of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.captions: list[str] = []
        self.cells: dict[str, float] = {}
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "caption":
            self._in_caption = True
        if tag == "td" and "data-key" in a:
            self.cells[a["data-key"]] = float(a["data-value"])

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)


def check_report_page(page: Path, run_dir: Path) -> _Page:
    """Parse ``page``; assert every image is an embedded non-empty PNG and every numeric cell
    equals its stage's metrics.json value. Returns the parsed page."""
    parsed = _Page()
    parsed.feed(page.read_text())
    assert parsed.images, "no image in the report"
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert parsed.cells, "no numeric cell in the report"
    for key, value in parsed.cells.items():
        stage, metric = key.split(":", 1)
        folder = run_dir / stage if (run_dir / stage / "metrics.json").is_file() else run_dir
        recorded = json.loads((folder / "metrics.json").read_text())[metric]
        assert value == pytest.approx(recorded, rel=1e-12), key
    return parsed


def test_report_of_a_probe_run(tiny_llama, tmp_path):
    model, tok = tiny_llama
    path = write_questions(tmp_path / "q.jsonl", n_per_label=20)
    questions = load_questions([{"name": "jsonl", "path": str(path)}])
    data = probe_data(model, tok, questions, tmp_path / "cache", layers=[0, 1, 2])
    run = tmp_path / "run"
    report = run_probe_stage(data, run / "probe", n_resamples=100, metadata={"model": "tiny"},
                             transfer={"again": data})
    from probing.io import write_metrics

    write_metrics(run / "probe", report.metrics)
    write_environment(run)
    md, page = build_report(run)
    parsed = check_report_page(page, run)
    assert {"held-out test figures per layer", "the probe beside its controls (test part)",
            "software and machine"} <= set(parsed.captions)
    assert parsed.cells["probe:best/auroc"] == report.metrics["best/auroc"]
    assert "probe:control/bow_auroc" in parsed.cells
    # the format control beside the others: covariates (tokens from the tokenizer), the
    # residualised probe per layer and at the chosen layer, selectivity vs the strongest control
    assert {"probe:control/format_auroc", "probe:best/residualised_auroc",
            "probe:layer_01/residualised_auroc", "probe:layer_01/selectivity_bow"
            } <= set(parsed.cells)
    controls = json.loads((run / "probe" / "controls.json").read_text())
    assert controls["format_covariates"][:3] == ["tokens", "digits", "numerals"]
    m = report.metrics
    strongest = max(("bow", "embedding", "format"), key=lambda k: m[f"control/{k}_auroc"])
    assert controls["strongest_control"] == strongest
    assert m["best/selectivity"] == pytest.approx(m["best/auroc"]
                                                  - m[f"control/{strongest}_auroc"])
    assert m["best/selectivity_bow"] == pytest.approx(m["best/auroc"] - m["control/bow_auroc"])
    # transfer sets get the format control too (on the probe set's covariate columns)
    t = {k: m[f"transfer/again/control/{k}_auroc"] for k in ("bow", "embedding", "format")}
    assert m["transfer/again/selectivity"] == pytest.approx(m["transfer/again/auroc"]
                                                            - max(t.values()))
    assert "probe:transfer/again/control/format_auroc" in parsed.cells
    assert len(parsed.images) == 2  # the layer curve and the PCA
    text = md.read_text()
    assert "![probe layers](probe/probe_layers.png)" in text and "| layer |" in text
    with pytest.raises(LirefError, match="holds no stage results"):
        build_report(tmp_path / "cache")


_BACKEND_CHECK = """
import matplotlib
matplotlib.use("template")  # e.g. a notebook's own backend
import numpy as np
import probing.probes.plots, probing.steering.plots, probing.matching.plots
import probing.sae.metrics
assert matplotlib.get_backend() == "template", matplotlib.get_backend()
probing.probes.plots.plot_pca(np.eye(4), ["reasoning", "memory"] * 2, {out!r})
assert matplotlib.get_backend() == "template", matplotlib.get_backend()
import matplotlib.pyplot as plt
assert plt.get_fignums() == []  # no figure left open in pyplot
print("ok")
"""


def test_plotting_leaves_the_users_matplotlib_backend_alone(tmp_path):
    """Importing the plotting modules and saving a figure keep the backend a user chose (they
    draw on their own Agg canvas); the PNG is still written. A fresh interpreter, so no other
    test's matplotlib state counts."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "pca.png"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", _BACKEND_CHECK.format(out=str(out))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
    assert out.read_bytes().startswith(PNG_MAGIC)
