"""The ``analysis.match`` job on a tiny model: a probe run from ``train.probe``, SAE folders
saved in sae-lens format, every output file, the multirun SAE pick, and one clear error per
mismatch (layer, width, model, ambiguous folder, unreachable pretrained release)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from probing.matching.injection import class_vs_random
from probing.matching.inputs import load_match
from probing.matching.run import LATENT_COLUMNS
from probing.sae.training import save_sae
from tests.job_fixtures import run_main_in_process, run_module, write_questions
from train.tracking import read_offline_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: small statistics so a job takes seconds on the tiny model
FAST = ["matching.nulls.n_random=200", "matching.nulls.n_permutations=100", "matching.reconstruction.max_k=8",
        "matching.reconstruction.n_controls=3", "matching.n_resamples=200", "matching.top_k=5", "matching.injection.top_k=3",
        "matching.injection.n_prompts=8"]


@dataclass
class Setup:
    root: Path
    model: Path
    questions: Path
    probe_dir: Path
    sweep: Path

    def common(self, probe_dir: Path | str | None = None) -> list[str]:
        return ["model=local", f"model.name={self.model}", "data=local_file",
                f"data.sets.0.path={self.questions}", f"probe_dir={probe_dir or self.probe_dir}",
                *FAST]


def _sae(arch: str, d_in: int, d_sae: int, seed: int):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = (TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4)) if arch == "topk"
           else StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
    return sae


def _save(folder: Path, arch: str, layer: int, model: str, d_in: int = 32, seed: int = 0
          ) -> Path:
    info = {"model_id": model, "layer": layer, "d_in": d_in, "d_sae": 64, "architecture": arch}
    return save_sae(_sae(arch, d_in, 64, seed), folder, info)


def _probe_run(folder: Path, model_dir: Path, questions: Path) -> Path:
    """What ``train.probe`` writes for the match job (``directions/``), made in-process: the
    diff-in-means of the default prompts' last-token activations at layers 0 and 1."""
    from probing.activations.extract import extract_activations
    from probing.model.loading import load_model
    from probing.probes.directions import layer_directions, save_directions
    from probing.questions import load_questions
    from probing.questions.prompts import format_prompts

    model, tok = load_model(str(model_dir))
    qs = load_questions([{"name": "jsonl", "path": str(questions)}])
    acts = extract_activations(model, tok, format_prompts(qs), [0, 1], "last", progress=False)
    dirs = layer_directions(acts, [q.target for q in qs])
    meta = {"model": str(model_dir), "d_model": 32, "position": "last", "data": "local_file"}
    save_directions(folder / "directions", dirs, [0, 1], meta)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir) -> Setup:
    root = tmp_path_factory.mktemp("match")
    model = tiny_model_dir("llama")
    questions = write_questions(root / "questions.jsonl", n_per_label=24)
    _probe_run(root / "probe", model, questions)
    sweep = root / "sweep"
    _save(sweep / "0" / "sae", "standard", 1, str(model), seed=0)
    _save(sweep / "1" / "sae", "topk", 1, str(model), seed=1)
    _save(sweep / "2" / "sae", "topk", 0, str(model), seed=2)
    _save(root / "narrow" / "sae", "topk", 1, str(model), d_in=16)
    _save(root / "other" / "sae", "topk", 1, "some-org/other-model")
    return Setup(root, model, questions, root / "probe", sweep)


@pytest.fixture(scope="module")
def matched(setup: Setup) -> Path:
    out = setup.root / "match"
    proc = run_module("analysis.match", *setup.common(), f"sae_dir={setup.sweep}/1",
                      "logger=offline", f"hydra.run.dir={out}", cwd=setup.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_job_writes_the_ranked_latent_table(matched: Path, setup: Setup) -> None:
    rows, info = load_match(matched)
    assert len(rows) == 64 and [r["rank"] for r in rows] == list(range(1, 65))
    assert set(LATENT_COLUMNS) <= set(rows[0])
    shares = [r["gap_share"] for r in rows]
    assert shares == sorted(shares, reverse=True)  # rank_by = gap_share (default)
    assert sorted(r["latent"] for r in rows) == list(range(64))
    for r in rows:
        assert -1.0 <= r["decoder_cosine"] <= 1.0 and 0.0 <= r["cosine_q"] <= 1.0
        assert 0.0 <= r["density"] <= 1.0 and r["max_activation"] >= 0.0
    tested = [r for r in rows if r["injection_class"] is not None]
    assert [r["rank"] for r in tested] == [1, 2, 3]  # matching.injection.top_k=3
    assert [r["rank"] for r in rows if r["injection_class_vs_random"] is not None] == [1, 2, 3]
    assert all(r["injection_d"] is None for r in rows[3:])
    assert rows[0]["test_auroc_lo"] is not None and rows[10]["test_auroc_lo"] is None
    assert info["layer"] == 1 and info["d_sae"] == 64 and info["d_model"] == 32
    assert info["rank_by"] == "gap_share" and info["position"] == "last"
    assert info["model"] == str(setup.model) and info["data"] == "local_file"
    assert Path(info["sae_dir"]) == (setup.sweep / "1" / "sae").resolve()
    assert info["probe_dir"] == str(setup.probe_dir.resolve())
    assert info["sae_release"] is None and info["sae_id"] is None
    with (matched / "latents.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(LATENT_COLUMNS) and int(table[0]["latent"]) == rows[0]["latent"]


def test_job_writes_reconstruction_probes_injection_and_plots(matched: Path) -> None:
    rec = json.loads((matched / "reconstruction.json").read_text())
    assert [r["k"] for r in rec["liref"]] == list(range(1, 9))
    assert set(rec["controls"]) == {"random", "permutation"}
    probes = json.loads((matched / "sparse_probes.json").read_text())
    sparse = probes["last_token"]
    assert {r["kind"] for r in sparse} == {"latents", "neurons", "dense", "diffmean", "liref",
                                           "bow"}
    assert [r["k"] for r in sparse if r["kind"] == "neurons"] == [1, 2, 5, 10, 20]  # d = 32
    saebench = probes["saebench"]  # SAEBench's protocol on mean-pooled features
    for kind in ("latents", "neurons"):
        assert [r["k"] for r in saebench[kind]] == [1, 2, 5]
        for r in saebench[kind]:
            assert len(r["selected"]) == r["k"] and 0.0 <= r["accuracy"] <= 1.0
            assert r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"]
    assert saebench["protocol"]["ks"] == [1, 2, 5]
    inj = json.loads((matched / "injection.json").read_text())
    assert [r["name"] for r in inj][-1] == "liref" and len(inj) == 4
    # the random-token baseline: frequency-matched random units at the chosen condition
    assert all(r["random_matched"] for r in inj), [r["random_matched"] for r in inj]
    for r in inj:
        assert r["class_vs_random"] == class_vs_random(r["d_excess"], r["d_excess_lo"])
        assert r["d_excess_lo"] <= r["d_excess_hi"]
        if r["d"] is not None:  # null: infinite (constant groups), capped in d_excess
            assert r["d_excess"] == pytest.approx(r["d"] - r["d_random_matched"])
    gap = json.loads((matched / "gap.json").read_text())
    assert abs(gap["train"]["check"]) < 1e-6 * max(1.0, abs(gap["train"]["gap"]))
    for png in ("cosine_hist", "reconstruction", "sparse_probes", "top_latents_hist"):
        assert (matched / f"{png}.png").read_bytes()[:8] == PNG_MAGIC
    examples = json.loads((matched / "top_examples.json").read_text())
    assert "liref" in examples and len(examples) == 6
    assert "[[" in examples["liref"]["tokens"][0]["text"]
    metrics = json.loads((matched / "metrics.json").read_text())
    if metrics["reached_0.9_cosine"]:
        assert metrics["k_for_0.9_cosine"] <= metrics["reconstruction_max_k"]
    else:  # a random 64-latent dictionary in 32 dims: 8 rows are not enough
        assert "k_for_0.9_cosine" not in metrics and rec["k_for_0.9_cosine"] is None
    for key in ("top1_cosine", "top1_p", "top1_p_random", "reached_0.9_cosine",
                "sparse_latents_auroc_k1", "sparse_latents_auroc_k5",
                "sparse_latents_auroc_k20", "bow_auroc", "dense_auroc",
                "frac_token_driven_top20", "liref_injection_d", "direction_agreement",
                "sparse_probe/saebench/latents_k1_accuracy",
                "sparse_probe/saebench/neurons_k5_auroc_ci_low",
                "frac_token_driven_vs_random_top20", "liref_injection_d_excess",
                "liref_injection_d_excess_lo", "liref_injection_token_driven_vs_random"):
        assert key in metrics, key
    assert metrics["direction_agreement"] > 0.999  # same prompts, same layer as the probe
    # the report's matching section leads with the class against random tokens, old beside it
    from probing.report.build import _match_section, _Stage

    tables = [b for b in _match_section(_Stage("match", matched)) if b.kind == "table"]
    header = tables[0].header
    assert header.index("injection_class_vs_random") < header.index("injection_class")
    assert {"frac_token_driven_vs_random_top20", "liref_injection_d_excess"} <= \
        {row[0] for t in tables for row in t.rows}
    run = read_offline_run(next((matched / "wandb").glob("offline-run-*")))
    assert run["summary"]["top1_cosine"] == pytest.approx(metrics["top1_cosine"])


def test_multirun_picks_each_sae_by_architecture_and_layer(
        setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _in_process(["-m", *setup.common(), f"sae_dir={setup.sweep}",
                             "sae=standard,topk", "layer=1", "matching.injection.top_k=1",
                             "logger=disabled", f"hydra.sweep.dir={setup.root}/multi"],
                            setup.root, monkeypatch, capsys)
    assert code == 0, err
    jobs = sorted(p for p in (setup.root / "multi").iterdir() if p.is_dir()
                  and not p.name.startswith("."))
    picked = [load_match(job)[1]["sae_dir"] for job in jobs]
    assert [Path(p).parent.name for p in picked] == ["0", "1"]


def _in_process(overrides: list[str], root: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Call ``analysis.match``'s Hydra entry point in this process: ``(exit code, stderr)``
    (0 when it returns normally)."""
    return run_main_in_process("analysis.match", overrides, root, monkeypatch, capsys,
                               env={"HF_HUB_OFFLINE": "1"})


MISMATCHES = {
    "layer": (["sae_dir=sweep/1", "layer=0"], ["layer=0", "trained on layer 1"]),
    "ambiguous": (["sae_dir=sweep"], ["3 SAEs", "layer=", "sae=<architecture>"]),
    "width": (["sae_dir=narrow"], ["16-wide", "32-wide"]),
    "model": (["sae_dir=other"], ["'some-org/other-model'"]),
    "not_a_probe_run": (["sae_dir=sweep/0"], ["probe_dir", "'sweep'", "directions"]),
    "pretrained_offline": (["sae=gemma_scope_9b", "sae.device=cpu"],
                           ["gemma-scope-9b-pt-res-canonical", "local SAE folder"]),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatch_is_one_clear_error(case: str, setup: Setup, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    overrides, words = MISMATCHES[case]
    out = setup.root / "failed" / case
    probe_dir = "sweep" if case == "not_a_probe_run" else None
    args = [*setup.common(probe_dir), "logger=disabled", f"hydra.run.dir={out}", *overrides]
    code, stderr = _in_process(args, setup.root, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert not (out / "latents.json").exists()
