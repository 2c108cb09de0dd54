"""End-to-end tests of the Hydra jobs ``train.extract`` and ``train.probe`` on a tiny model.

One tiny Llama, one question file and one activation cache are shared by the whole module:
``train.extract`` fills the cache, ``train.probe`` must then reuse it. Jobs run as real
subprocesses (``python -m ...``) where the command line is the subject (outputs, sweeps,
launchers, wandb); the bad-input cases call the same Hydra entry points in-process (faster:
no interpreter start-up) and check the exit code and the one ``error:`` line on stderr.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from probing.activations.cache import ActivationCache
from probing.errors import LirefError
from probing.probes.estimators import load_probe
from tests.job_fixtures import REPO, run_main_in_process, run_module, write_questions
from train.tracking import read_offline_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = "layers=[0,2]"


@dataclass
class Work:
    root: Path
    model: Path
    questions: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def common(self) -> list[str]:
        return ["model=local", f"model.name={self.model}", "data=local_file",
                f"data.sets.0.path={self.questions}"]


def _ok(proc) -> None:
    assert proc.returncode == 0, f"job failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _only_run_dir(parent: Path) -> Path:
    runs = sorted(p for p in parent.iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return runs[0]


def _cache_entries(work: Work) -> list[Path]:
    root = work.cache / "activations"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _snapshot(paths: list[Path]) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def _sweep_jobs(work: Work, job: str) -> list[Path]:
    sweep = _only_run_dir(work.root / "multirun" / job)
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def _offline_run(run_dir: Path) -> dict:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return read_offline_run(runs[0])


# --- shared fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Callable[[str], Path]) -> Work:
    root = tmp_path_factory.mktemp("jobs")
    return Work(root=root, model=tiny_model_dir("llama"),
                questions=write_questions(root / "questions.jsonl", n_per_label=16))


@pytest.fixture(scope="module")
def extracted(work: Work) -> Path:
    """``train.extract layers=[0,2]``: its run dir (the cache is filled as a side effect)."""
    proc = run_module("train.extract", *work.common(), LAYERS, "logger=disabled", cwd=work.root)
    _ok(proc)
    return _only_run_dir(work.root / "outputs" / "extract")


@dataclass
class Probed:
    run_dir: Path
    output: str
    cache_before: list[Path]
    manifests_before: dict[Path, tuple[int, bytes]]
    cache_after: list[Path]
    manifests_after: dict[Path, tuple[int, bytes]]


@pytest.fixture(scope="module")
def probed(work: Work, extracted: Path) -> Probed:
    """``train.probe`` on the same model/data/layers as ``extracted``, logging to wandb offline."""
    entries = _cache_entries(work)
    manifests = _snapshot([e / "manifest.json" for e in entries])
    proc = run_module("train.probe", *work.common(), LAYERS, "logger=offline", cwd=work.root)
    _ok(proc)
    return Probed(_only_run_dir(work.root / "outputs" / "probe"), proc.stdout + proc.stderr,
                  entries, manifests, _cache_entries(work), _snapshot(list(manifests)))


# --- 1. extract fills the cache; probe reuses it ---------------------------------------------
def test_extract_writes_activations_and_fills_cache(work: Work, extracted: Path) -> None:
    metrics = json.loads((extracted / "metrics.json").read_text())
    assert metrics["n_questions"] == 32
    assert metrics["n_layers"] == 2
    assert metrics["d_model"] == 32
    assert metrics["n_reasoning"] == metrics["n_memory"] == 16
    info = json.loads((extracted / "activations.json").read_text())
    assert info["layers"] == [0, 2]
    assert info["shape"] == [32, 2, 32]
    assert info["position"] == "last"
    assert info["model"] == str(work.model)
    # the cache entry the job names is complete and loads with the right shape
    entry = Path(info["cache"])
    assert entry in _cache_entries(work)
    cached = ActivationCache(entry).load()
    assert tuple(cached.acts.shape) == (32, 2, 32)
    assert cached.layers == [0, 2]
    assert sorted(set(cached.labels)) == ["memory", "reasoning"]


def test_probe_reuses_the_extract_cache(probed: Probed) -> None:
    assert len(probed.cache_before) == 1
    assert probed.cache_after == probed.cache_before  # no new entry
    assert probed.manifests_after == probed.manifests_before  # not rewritten
    assert "activation cache hit" in probed.output
    assert "activation cache hit" in (probed.run_dir / "probe.log").read_text()


# --- 2. probe outputs -------------------------------------------------------------------------
def test_probe_writes_metrics_per_layer_and_plots(probed: Probed) -> None:
    run = probed.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_layer"] in (0, 2)
    assert metrics["n_questions"] == 32
    for key in ("best/accuracy", "best/auroc", "layer_00/accuracy", "layer_00/auroc",
                "layer_02/accuracy", "layer_02/auroc"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    assert not any(k.startswith("layer_01/") for k in metrics)  # only the requested layers
    best = metrics["best_layer"]
    assert metrics["best/auroc"] == metrics[f"layer_{best:02d}/auroc"]
    # the layer is chosen on validation items; best/* are test figures of that layer
    val = {layer: metrics[f"layer_{layer:02d}/val_auroc"] for layer in (0, 2)}
    assert best == min(val, key=lambda layer: (-val[layer], layer))
    for key in ("best/accuracy", "best/auroc"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
    for key in ("control/bow_accuracy", "control/bow_auroc", "control/embedding_auroc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    per_layer = json.loads((run / "per_layer.json").read_text())
    assert [row["layer"] for row in per_layer] == [0, 2]
    for row in per_layer:
        assert row["control/bow_auroc"] == metrics["control/bow_auroc"]
        strongest = max(metrics[f"control/{k}_auroc"] for k in ("bow", "embedding", "format"))
        assert row["selectivity"] == pytest.approx(row["auroc"] - strongest)
        assert row["selectivity_bow"] == pytest.approx(row["auroc"] - metrics["control/bow_auroc"])
        assert row["residualised_auroc_ci_low"] <= row["residualised_auroc"]
        assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
    split = json.loads((run / "split.json").read_text())
    assert split["mode"] == "holdout" and len(split["test"]) > 0
    assert not set(split["train"]) & set(split["test"])
    assert not set(split["val"]) & set(split["test"])
    for png in (run / "probe_layers.png", run / f"pca_layer_{best:02d}.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, png
    assert (run / "directions" / "directions.safetensors").is_file()
    for layer in (0, 2):
        assert load_probe(run / "probes" / f"layer_{layer:02d}").layer == layer


def test_saved_best_probe_loads_and_predicts(work: Work, probed: Probed) -> None:
    run = probed.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    probe = load_probe(run / "probe")
    best = metrics["best_layer"]
    assert probe.layer == best
    direction = probe.direction
    assert isinstance(direction, torch.Tensor) and direction.shape == (32,)
    assert torch.linalg.vector_norm(direction).item() == pytest.approx(1.0, abs=1e-9)
    meta = probe.metadata
    assert meta["model"] == str(work.model)
    assert meta["position"] == "last"
    assert meta["data"] == "local_file"
    assert meta["probe"] == "diffmean"
    assert meta["layer"] == best
    assert meta["metrics"]["auroc"] == metrics["best/auroc"]
    assert meta["metrics"]["accuracy"] == metrics["best/accuracy"]
    assert meta["d_model"] == 32 and meta["prompt_template"]["template"] == "Q: {question}\nA: "
    assert probe.check(layer=best, position="last", template=meta["prompt_template"]) is probe
    with pytest.raises(LirefError, match=f"trained on layer {best}, not layer 1"):
        probe.check(layer=1)
    # it scores the cached activations it was trained on
    (entry,) = probed.cache_before
    cached = ActivationCache(entry).load([best])
    proba = probe.predict_proba(cached.layer(best))
    assert proba.shape == (32,)
    assert np.all((proba >= 0) & (proba <= 1))
    y = np.array([1 if label == "reasoning" else 0 for label in cached.labels])
    assert probe.score(cached.layer(best), y) >= 0.75


def test_probe_refuses_activations_of_another_width(probed: Probed) -> None:
    probe = load_probe(probed.run_dir / "probe")
    with pytest.raises(LirefError, match=r"width 32.*got width 16"):
        probe.predict_proba(np.zeros((3, 16)))


# --- 4. wandb offline --------------------------------------------------------------------------
def test_offline_wandb_run_holds_metrics_and_config(work: Work, probed: Probed) -> None:
    metrics = json.loads((probed.run_dir / "metrics.json").read_text())
    rec = _offline_run(probed.run_dir)
    summary = rec["summary"]
    for key in ("best_layer", "best/accuracy", "best/auroc", "layer_00/accuracy",
                "layer_02/auroc", "control/bow_auroc", "control/embedding_auroc",
                "layer_00/selectivity"):
        assert summary[key] == metrics[key], key
    layers_logged = {row["probe/layer"] for row in rec["history"] if "probe/accuracy" in row}
    assert layers_logged == {0, 2}
    assert summary["probe/per_layer/_type"] == "table-file"
    assert summary["probe/plot_layers/_type"] == "image-file"
    config = rec["config"]
    assert config["seed"] == 0
    assert config["probe"]["kind"] == "diffmean"
    assert config["layers"] == [0, 2]
    assert config["model"]["name"] == str(work.model)
    assert config["logger"]["mode"] == "offline"
    run = rec["run"]
    assert run["group"] == "probe"
    assert run["job_type"] == "probe"
    assert run["name"] == f"probe-{probed.run_dir.name}"
    assert run["project"] == "liref"


def _write_wandb_breaker(folder: Path) -> Path:
    """A ``sitecustomize`` that makes every ``wandb.init`` raise (as without an account)."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent("""
        import wandb

        def _broken_init(*args, **kwargs):
            raise RuntimeError("wandb is broken on purpose (test)")

        wandb.init = _broken_init
    """))
    return folder


def test_job_survives_wandb_init_failure(work: Work, extracted: Path) -> None:
    shim = _write_wandb_breaker(work.root / "shim")
    out = work.root / "wandb_broken"
    proc = run_module("train.extract", *work.common(), LAYERS, "logger=offline",
                      f"hydra.run.dir={out}", cwd=work.root,
                      env={"PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])})
    _ok(proc)
    text = proc.stdout + proc.stderr
    assert "wandb init failed" in text and "broken on purpose" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_layers"] == 2 and metrics["n_questions"] == 32
    assert not list(out.glob("wandb/offline-run-*"))


# --- 3. multirun sweeps and launchers --------------------------------------------------------
def _check_sweep(work: Work, jobs: list[Path]) -> None:
    assert len(jobs) == 2, jobs
    kinds = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0.0 <= metrics["best/accuracy"] <= 1.0
        kinds.add(load_probe(job / "probe").kind)
    assert kinds == {"diffmean", "logistic"}


@pytest.mark.slow  # 20-35 s on 2 busy cores: a fresh interpreter per worker
def test_multirun_local_parallel_launcher(work: Work, extracted: Path) -> None:
    root = work.root / "joblib"
    root.mkdir()
    proc = run_module("train.probe", "-m", "hydra/launcher=local_parallel",
                      "probe=diffmean,logistic", *work.common(), LAYERS, "logger=disabled",
                      f"hydra.sweep.dir={root}/sweep", cwd=work.root)
    _ok(proc)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    _check_sweep(work, sorted(p for p in (root / "sweep").iterdir() if p.is_dir()))


@pytest.mark.slow  # 20-35 s on 2 busy cores: a fresh interpreter per job
def test_multirun_submitit_local_launcher(work: Work, extracted: Path) -> None:
    """submitit's local executor (the SLURM code path); wandb runs in its workers are grouped."""
    root = work.root / "submitit"
    root.mkdir()
    proc = run_module("train.probe", "-m", "hydra/launcher=submitit_local_run",
                      "probe=diffmean,logistic", *work.common(), LAYERS, "logger=offline",
                      f"hydra.sweep.dir={root}/sweep", cwd=work.root)
    _ok(proc)
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    sweep = root / "sweep"
    assert (sweep / ".submitit").is_dir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    _check_sweep(work, jobs)
    # each job's offline wandb run: its own config, summary = metrics.json, one sweep group
    # (the basic launcher's sweeps are checked the same way in tests/sae and tests/analysis)
    runs = {}
    for job in jobs:
        rec = _offline_run(job)
        kind = rec["config"]["probe"]["kind"]
        assert load_probe(job / "probe").kind == kind
        metrics = json.loads((job / "metrics.json").read_text())
        assert rec["summary"]["best/auroc"] == metrics["best/auroc"]
        runs[kind] = rec["run"]
    assert set(runs) == {"diffmean", "logistic"}
    assert {r["group"] for r in runs.values()} == {"probe-sweep-sweep"}
    for kind, run in runs.items():
        assert run["name"].startswith("probe:") and f"probe={kind}" in run["name"]
    assert len({r["id"] for r in runs.values()}) == 2


# --- 5. bad input: one clear error, exit 2, nothing lost ---------------------------------------
def _run_in_process(module: str, overrides: list[str], work: Work,
                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                    ) -> tuple[int, str]:
    """Call the job's ``@hydra.main`` entry point with ``overrides``; ``(exit code, stderr)``."""
    return run_main_in_process(module, overrides, work.root, monkeypatch, capsys,
                               cache=work.cache)


def _write_bad_files(folder: Path, good: Path) -> None:
    rows = [json.loads(line) for line in good.read_text().splitlines()]
    (folder / "empty.jsonl").write_text("")
    (folder / "one_class.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["label"] == "reasoning"))
    (folder / "no_label.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in rows))
    few = [r for r in rows if r["label"] == "reasoning"][:2] + [
        r for r in rows if r["label"] == "memory"][:2]
    (folder / "too_few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in few))
    lines = [json.dumps(r) for r in rows]
    lines[4] = '{"id": "broken", "question": '
    (folder / "malformed.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "unknown_label.jsonl").write_text("".join(
        json.dumps({**r, "label": ["positive", "negative", "neutral", "unsure"][i % 4]}) + "\n"
        for i, r in enumerate(rows)))


BAD_INPUTS = {
    # case: (overrides replacing model.name / data path / layers, words the message must hold)
    "missing_model_dir": (["model.name=/no/such/dir"],
                          ["'/no/such/dir'", "does not exist", "save_pretrained", "Hub"]),
    "unknown_hub_model": (["model.name=liref-no-such-org/no-such-model"],
                          ["'liref-no-such-org/no-such-model'", "Hub", "save_pretrained"]),
    "layer_out_of_range": (["layers=[99]"], ["layer 99", "0..2"]),
    "empty_data": (["data.sets.0.path=bad/empty.jsonl"], ["bad/empty.jsonl", "empty"]),
    "one_class": (["data.sets.0.path=bad/one_class.jsonl"],
                  ["one-class", "'reasoning'", "memory"]),
    "missing_column": (["data.sets.0.path=bad/no_label.jsonl"],
                       ["'label'", "no_label.jsonl", "columns present"]),
    "malformed_json": (["data.sets.0.path=bad/malformed.jsonl"],
                       ["malformed JSON", "malformed.jsonl", "line 5"]),
    "too_few_for_a_split": (["data.sets.0.path=bad/too_few.jsonl"],
                            ["too few", "2 group(s)", "need at least 3", "validation"]),
    "too_many_folds": (["eval.k_folds=40"], ["k_folds=40", "groups of"]),
    "unknown_label": (["data.sets.0.path=bad/unknown_label.jsonl",
                       "data.classes=[positive,negative]"],
                      ["'neutral', 'unsure'", "unknown_label.jsonl line 3",
                       "['positive', 'negative']"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_loses_nothing(
    case: str, work: Work, probed: Probed, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = work.root / "bad"
    if not bad.is_dir():
        bad.mkdir()
        _write_bad_files(bad, work.questions)
    overrides, words = BAD_INPUTS[case]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    keep = [*probed.manifests_before, probed.run_dir / "metrics.json",
            probed.run_dir / "probe" / "probe.json", probed.run_dir / "probe" / "probe.safetensors"]
    before = _snapshot(keep)
    out = work.root / "failed" / case
    args = [*work.common(), LAYERS, "logger=disabled", f"hydra.run.dir={out}", *overrides]
    code, stderr = _run_in_process("train.probe", args, work, monkeypatch, capsys)
    assert code == 2
    errors = _error_lines(stderr)
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0], stderr  # the message is one line
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert "Traceback" not in stderr
    assert not (out / "metrics.json").exists()
    assert _snapshot(keep) == before  # the earlier run and the cache entry are untouched


def test_any_binary_concept_through_data_classes(
    work: Work, probed: Probed, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone else's labels: a file labelled positive/negative, ``data.classes`` naming them.
    The first class is the positive one (target 1, the direction points towards it); the
    outputs name the classes; balanced accuracy is reported beside accuracy."""
    rows = [json.loads(line) for line in work.questions.read_text().splitlines()]
    renamed = work.root / "positive_negative.jsonl"
    renamed.write_text("".join(json.dumps(
        {**r, "label": "positive" if r["label"] == "reasoning" else "negative"}) + "\n"
        for r in rows))
    out = work.root / "classes_run"
    args = ["model=local", f"model.name={work.model}", "data=local_file",
            f"data.sets.0.path={renamed}", "data.classes=[positive,negative]", LAYERS,
            "logger=disabled", f"hydra.run.dir={out}"]
    code, stderr = _run_in_process("train.probe", args, work, monkeypatch, capsys)
    assert code == 0, stderr
    summary = json.loads((out / "questions.json").read_text())
    assert summary["classes"] == ["positive", "negative"]
    assert summary["by_label"] == {"positive": 16, "negative": 16}
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("best/accuracy", "best/balanced_accuracy", "best/balanced_accuracy_ci_low",
                "layer_00/balanced_accuracy", "control/bow_balanced_accuracy"):
        assert key in metrics, key
    probe = load_probe(out / "probe")
    assert probe.metadata["classes"] == ["positive", "negative"]
    # the same activations and split as the reasoning/memory run: the same probe
    reference = load_probe(probed.run_dir / "probe")
    assert probe.decision_threshold_ == reference.decision_threshold_
    torch.testing.assert_close(probe.direction, reference.direction)
    acts = ActivationCache(json.loads((out / "activations.json").read_text())["cache"]).load()
    pos_ids = {r["id"] for r in rows if r["label"] == "reasoning"}
    positive = [i for i, qid in enumerate(acts.ids) if qid in pos_ids]
    assert len(positive) == 16
    scores = probe.decision_function(acts.layer(probe.layer))
    others = np.setdiff1d(np.arange(len(scores)), positive)
    assert scores[positive].mean() > scores[others].mean()  # towards the first class


def test_cli_error_exit_code_and_earlier_outputs_intact(work: Work, probed: Probed) -> None:
    """The real command line: exit status 2, one ``error:`` line; earlier results still load."""
    proc = run_module("train.extract", *work.common(), "layers=[99]", "logger=disabled",
                      f"hydra.run.dir={work.root}/failed/cli", cwd=work.root)
    assert proc.returncode == 2, proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "layer 99" in errors[0] and "0..2" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    (entry,) = probed.cache_before
    assert tuple(ActivationCache(entry).load().acts.shape) == (32, 2, 32)
    assert load_probe(probed.run_dir / "probe").layer is not None
    assert json.loads((probed.run_dir / "metrics.json").read_text())["best_layer"] in (0, 2)
