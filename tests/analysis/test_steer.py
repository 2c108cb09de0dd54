"""``python -m analysis.steer`` end to end on a tiny model: a probe run folder, a matching run
folder with a tiny SAE, a question file; a Hydra multirun, outputs, wandb logs, user errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from probing.io import write_json
from probing.probes.directions import save_directions
from tests.job_fixtures import run_main_in_process, run_module, write_probe_activations
from tests.tiny_models import D
from train.tracking import read_offline_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_probe_run(folder: Path, width: int = D, best: int = 1) -> Path:
    """Directions, the chosen layer and 24 cached activations (ids ``p*``, not the steering
    items) whose first 16 are the training part (the erase intervention is fitted there)."""
    g = torch.Generator().manual_seed(0)
    save_directions(folder / "directions", torch.randn(3, width, generator=g, dtype=torch.float64),
                    [0, 1, 2], {"model": "tiny", "d_model": width})
    write_json(folder / "metrics.json", {"best_layer": best})
    ids = [f"p{i}" for i in range(24)]
    write_probe_activations(folder, torch.randn(24, 3, width, generator=g), [0, 1, 2],
                            ["reasoning", "memory"] * 12, ids, ids[:16])
    return folder


def write_match_run(folder: Path, layer: int = 1) -> Path:
    """A matching run as the matching job writes it: latents.json (ranked) + match.json."""
    from probing.sae.training import SAETrainConfig, make_training_sae, save_sae

    torch.manual_seed(0)
    cfg = SAETrainConfig(architecture="topk", d_sae=64, k=8, normalize_activations="none",
                         decoder_init_norm=0.5, training_tokens=64, batch_size=64)
    save_sae(make_training_sae(cfg, D), folder / "sae")
    rows = [{"latent": i, "rank": i + 1, "decoder_cosine": 1 - i / 64,
             "density": 10 ** (-3 + 2 * ((i * 7) % 64) / 63), "max_activation": 2.0 + i % 5}
            for i in range(64)]
    rows[0].update(density=0.0, max_activation=0.0)  # a dead latent ranked first is skipped
    write_json(folder / "latents.json", rows)
    write_json(folder / "match.json", {"sae_dir": "sae", "layer": layer, "model": "tiny",
                                       "d_model": D, "d_sae": 64, "probe_dir": None})
    return folder


def write_toy_questions(path: Path) -> Path:
    words = ["one", "two", "three", "four", "five", "six"]
    rows = [{"id": f"q{i}", "question": f"what is {words[i % 6]} plus {words[i // 2 % 6]} ?",
             "answers": [str(i % 10)], "stale": str((i + 3) % 10), "label": "reasoning"}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("steer-job")
    return {"root": root, "model": tiny_model_dir("llama"),
            "probe": write_probe_run(root / "probe"), "match": write_match_run(root / "match"),
            "questions": write_toy_questions(root / "toy.jsonl")}


def _common(w) -> list[str]:
    sets = (f"steer.sets=[{{set:toy,name:jsonl,path:'{w['questions']}',"
            "contrast:[gold,stale],rates:{stale:stale}}]")
    return ["model=local", f"model.name={w['model']}", f"probe_dir={w['probe']}", sets,
            "steer.n_per_set=null", "steering.n_resamples=200"]


def _check_rows(rows: list[dict], n_items: int) -> None:
    base = [r for r in rows if r["intervention"] == "none"]
    assert len(base) == 1 and base[0]["diff"] == 0 and base[0]["n"] == n_items
    assert len({r["seed"] for r in rows if r["condition"] == "random"}) >= 3
    for r in rows:
        assert r["layer"] in (None, 1) and 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1
        assert {"diff_ci_low", "diff_ci_high", "p_value", "flips_up", "flips_down",
                "parse_failures", "mean_length", "rate_stale", "rate_stale_diff"} <= set(r)
        assert ("q_value" in r) == (r["intervention"] != "none")


def test_cli_multirun_writes_results_plots_metrics_and_wandb(work):
    """Two jobs of a Hydra multirun (units=gap,abs), direction interventions only."""
    args = [*_common(work), "steering.interventions=[add,ablate,released]", "steering.strengths.add=[1.0,2.0]",
            "steering.strengths.released=[1.0]", "logger=offline",
            "steering.units=gap,abs", f"hydra.sweep.dir={work['root'] / 'multi'}", "-m"]
    proc = run_module("analysis.steer", *args, cwd=work["root"], timeout=600,
                      env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (work["root"] / "multi").iterdir() if p.is_dir()
                  and p.name.isdigit())
    assert len(runs) == 2
    rows = json.loads((runs[0] / "results.json").read_text())
    with open(runs[0] / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    _check_rows(rows, 12)
    # 1 unsteered + add: 2 x (direction, negated, 3 random) + ablate 4 + released 1 x 4 + the
    # prompting baseline (on in conf/steer/organism.yaml): direction, negated
    assert len(rows) == 1 + 10 + 4 + 4 + 2
    assert {r["metric"] for r in rows} == {"teacher_forced"}
    assert all("margin" in r for r in rows)
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    for key in ("toy/teacher_forced/add/direction/diff", "toy/teacher_forced/add/negated/p_value",
                "toy/teacher_forced/add/random/margin_diff",
                "toy/teacher_forced/add/direction/selectivity",
                "toy/teacher_forced/ablate/direction/diff", "headline/add/strength"):
        assert key in metrics, key
    pngs = sorted(runs[0].glob("steer_*.png"))
    assert [p.name for p in pngs] == ["steer_teacher_forced_ablate_L1.png",
                                      "steer_teacher_forced_add_L1.png",
                                      "steer_teacher_forced_released_L1.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    settings = json.loads((runs[0] / "settings.json").read_text())
    assert len(settings["settings"]) + 2 == len(rows) and settings["layers"] == [1]
    # the strength is chosen on one half of the items, every headline figure measured on the
    # other
    sel = json.loads((runs[0] / "selection.json").read_text())
    choice, report_ids = sel["halves"]["toy"]["choice"], sel["halves"]["toy"]["report"]
    assert len(choice) == len(report_ids) == 6 and not set(choice) & set(report_ids)
    objective = dict(map(tuple, sel["chosen"]["add"]["objective"]))
    assert sorted(objective) == [1.0, 2.0] and not sel["chosen"]["add"]["fixed"]
    best = max(objective.values())
    assert metrics["headline/add/strength"] == min(s for s, v in objective.items() if v == best)
    assert metrics["headline/add/objective"] == best and metrics["selection/toy/n_report"] == 6
    report = json.loads((runs[0] / "results_report.json").read_text())
    assert {r["half"] for r in rows} == {"all"} and {r["half"] for r in report} == {"report"}
    head = next(r for r in report if r["intervention"] == "add" and r["condition"] == "direction"
                and r["strength"] == metrics["headline/add/strength"])
    assert head["n"] == 6 and metrics["toy/teacher_forced/add/direction/diff"] == head["diff"]
    assert metrics["toy/teacher_forced/unsteered/accuracy"] == next(
        r["accuracy"] for r in report if r["intervention"] == "none")
    abs_rows = json.loads((runs[1] / "results.json").read_text())
    assert [r["margin"] for r in abs_rows if r["intervention"] == "add"] != \
        [r["margin"] for r in rows if r["intervention"] == "add"]
    offline = read_offline_run(next((runs[0] / "wandb").glob("offline-run-*")))
    assert offline["summary"]["n_settings"] == metrics["n_settings"] == len(rows) - 2
    assert any("steer/strength" in h for h in offline["history"])


def test_latent_sweep_with_a_matching_run_and_generation(work, tmp_path):
    """In-process: latent interventions, the orthogonal control, LEACE erasure against
    permuted-label erasers, generation on a subset."""
    from hydra import compose, initialize_config_dir

    from analysis.steer import steer_job
    from probing.steering import load_erasers
    from train.jobkit import CONFIG_PATH, JobContext
    from train.tracking import Tracker

    overrides = [*_common(work), f"match_dir={work['match']}", f"cache_dir={tmp_path / 'c'}",
                 "steering.interventions=[add,scale,erase,add_latent,clamp_latent]",
                 "steering.strengths.add=[1.0]",
                 "steering.strengths.scale=[2.0]", "steering.strengths.add_latent=[4.0]",
                 "steering.strengths.clamp_latent=[0.0,4.0]", "+steering.headline.scale=2.0",
                 "steer.generate.n=4", "steer.generate.max_new_tokens=3",
                 "steer.prompting.run=true"]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("steer", overrides=overrides)
    metrics = steer_job(JobContext(cfg=cfg, run_dir=tmp_path, tracker=Tracker(mode="disabled")))
    rows = json.loads((tmp_path / "results.json").read_text())
    tf = [r for r in rows if r["metric"] == "teacher_forced"]
    gen = [r for r in rows if r["metric"] == "generate"]
    assert len(tf) == len(gen) == metrics["n_settings"] + 2  # + the prompting baseline
    _check_rows(tf, 12)
    _check_rows(gen, 4)
    # the prompting baseline: hooks off, the instruction added, the same paired statistics
    prompt = {r["condition"]: r for r in tf if r["intervention"] == "prompt"}
    assert set(prompt) == {"direction", "negated"} and prompt["direction"]["logp_gold_diff"] != 0
    assert all(r["layer"] is None and r["strength"] is None for r in prompt.values())
    instructions = json.loads((tmp_path / "settings.json").read_text())["prompt"]["toy"]
    assert instructions == {"mode": "reasoning", "instructions": {
        "direction": "Think step by step.", "negated": "Answer from memory."}}
    for key in ("toy/teacher_forced/prompt/direction/diff",
                "toy/teacher_forced/prompt/negated/p_value",
                "toy/generate/prompt/direction/diff"):
        assert key in metrics, key
    assert metrics["headline/scale/strength"] == 2.0 and metrics["headline/scale/fixed"] == 1.0
    conds = {(r["intervention"], r["condition"]) for r in tf}
    assert {("add", "orthogonal"), ("scale", "orthogonal"), ("add_latent", "latent"),
            ("add_latent", "random_latent"), ("clamp_latent", "latent"),
            ("clamp_latent", "random_latent")} <= conds
    latents = [r for r in tf if r["intervention"] == "add_latent"]
    assert {r["rank"] for r in latents} == {2, 3}  # rank 1 is dead: the top-2 live latents
    top = {r["latent"] for r in latents if r["condition"] == "latent"}
    assert top == {1, 2} and not top & {r["latent"] for r in latents
                                        if r["condition"] == "random_latent"}
    assert "toy/teacher_forced/add_latent/rank2_latent/selectivity" in metrics
    # erase: the LEACE eraser of the probe's labels beside 5 erasers of permuted labels
    erase = [(r["condition"], r["seed"], r["strength"]) for r in tf if r["intervention"] == "erase"]
    assert erase == [("direction", None, None)] + [("permuted", k, None) for k in range(5)]
    for key in ("toy/teacher_forced/erase/direction/diff_ci_low",
                "toy/teacher_forced/erase/permuted/diff", "toy/generate/erase/direction/diff",
                "toy/teacher_forced/erase/direction/selectivity", "headline/erase/layer"):
        assert key in metrics, key
    assert metrics["erase/n_fit"] == 16 and metrics["erase/rank"] == 1
    assert metrics["erase/leftover"] < 1e-6 < metrics["erase/permuted_leftover"]
    erasers = load_erasers(tmp_path / "erasers")
    assert list(erasers) == [1] and len(erasers[1].permuted) == 5
    assert (tmp_path / "steer_teacher_forced_erase_L1.png").is_file()
    assert "toy/generate/add/direction/diff" in metrics
    assert (tmp_path / "steer_teacher_forced_add_latent_L1_rank2.png").is_file()
    items = json.loads((tmp_path / "items.json").read_text())
    flips = items["toy/teacher_forced"]
    assert len(flips["item_ids"]) == 12
    assert [len(u) for u in flips["up"]] == [r["flips_up"] for r in tf]
    assert [len(d) for d in flips["down"]] == [r["flips_down"] for r in tf]
    assert len(items["toy/generate"]["completions"]) == len(gen)


def _in_process(work, overrides, monkeypatch, capsys) -> tuple[int, str]:
    return run_main_in_process("analysis.steer", [*overrides, "logger=disabled",
                                                  f"hydra.run.dir={work['root'] / 'err'}"],
                               work["root"], monkeypatch, capsys)


@pytest.mark.parametrize(("change", "words"), [
    (lambda w, c: [x for x in c if not x.startswith("probe_dir")] + ["probe_dir=null"],
     ["probe_dir"]),
    (lambda w, c: [*c, f"probe_dir={write_probe_run(w['root'] / 'wide', width=D + 8)}"],
     ["another model", str(D + 8)]),
    (lambda w, c: [*c, "steering.positions=generated"], ["generated", "steer.metric=generate"]),
    (lambda w, c: [*c, "steering.interventions=[add_latent]"], ["match_dir"]),
    (lambda w, c: [*c, "steering.steer_layers=[5]"], ["5"]),
    (lambda w, c: [*c, "steering.interventions=[push]"], ["push", "allowed"]),
])
def test_user_errors_exit_2_with_one_line(work, monkeypatch, capsys, change, words):
    code, stderr = _in_process(work, change(work, _common(work)), monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert "Traceback" not in stderr
