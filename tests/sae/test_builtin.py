"""The committed SAEs of the built-in models: block choice, float16 export, loading by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import probing
from probing.errors import LirefError
from probing.sae import builtin
from probing.sae.builtin import (
    BUILTIN_SAE_ROOT,
    builtin_sae_names,
    choose_sae_block,
    export_builtin_sae,
)
from probing.sae.training import SAETrainConfig, load_sae, make_training_sae, save_sae

CONF = Path(__file__).resolve().parents[2] / "conf"


def _rows(values: list[float]) -> list[dict[str, float]]:
    return [{"layer": i, "val_auroc": v, "auroc": 0.5} for i, v in enumerate(values)]


def test_block_is_the_best_validation_auroc_among_the_first_80_percent():
    # 10 blocks: the first 8 are allowed; block 9 is best overall but too deep
    choice = choose_sae_block(_rows([.5, .6, .7, .9, .8, .9, .7, .6, .95, .99]), 10)
    assert choice["block"] == 3  # tie with block 5 goes to the earlier block
    assert choice["relative_depth"] == pytest.approx(0.3)
    assert choice["best_overall"] == {"block": 9, "value": pytest.approx(0.99)}
    assert choice["allowed"] == "blocks 0..7 of 10" and "80%" in choice["why"]
    assert choose_sae_block(_rows([.5] * 9 + [.6]), 10, max_relative_depth=1.0)["block"] == 9


def test_block_choice_errors_name_what_is_wrong():
    with pytest.raises(LirefError, match="max_relative_depth"):
        choose_sae_block(_rows([.5]), 1, max_relative_depth=0)
    with pytest.raises(LirefError, match="no per-layer 'val_auroc'"):
        choose_sae_block([{"layer": 0, "auroc": .5}], 4)
    with pytest.raises(LirefError, match="first 2 of 10 blocks"):
        choose_sae_block([{"layer": 9, "val_auroc": .9}], 10, max_relative_depth=0.2)


def _saved_sae(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    sae = make_training_sae(SAETrainConfig(architecture="topk", d_sae=32, k=4), 8)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return save_sae(sae, tmp_path / "trained" / "sae", info={"layer": 1})


def test_export_stores_float16_and_the_loader_restores_float32(tmp_path, monkeypatch):
    src = _saved_sae(tmp_path)
    root = tmp_path / "builtin"
    out = export_builtin_sae(src, root / "tiny-model", {"metrics": {"explained_variance": 0.9}},
                             command="python -m train.sae --config-name x")
    stored = load_file(str(out / "sae_weights.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    info = json.loads((out / "metrics.json").read_text())
    assert info["stored_dtype"] == "float16" and info["metrics"]["explained_variance"] == 0.9
    assert (out / "COMMAND").read_text().startswith("python -m train.sae")
    assert json.loads((out / "liref_sae.json").read_text()) == {"layer": 1}

    monkeypatch.setattr(builtin, "BUILTIN_SAE_ROOT", root)
    assert builtin_sae_names() == ["tiny-model"]
    sae = probing.load_sae("tiny-model")  # a built-in name, not a folder or a release
    original = load_file(str(src / "sae_weights.safetensors"))
    for name, tensor in sae.state_dict().items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, original[name].to(torch.float16).to(torch.float32)), name
    assert load_sae("tiny-model", dtype="float16").W_enc.dtype == torch.float16
    with pytest.raises(LirefError, match="no built-in SAE named 'other'.*tiny-model"):
        builtin.builtin_sae_dir("other")


def test_export_refuses_a_folder_without_an_sae(tmp_path):
    with pytest.raises(LirefError, match="no sae_weights.safetensors"):
        export_builtin_sae(tmp_path, tmp_path / "out", {}, command="x")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", builtin_sae_names())
def test_committed_sae_meets_its_contract(name):
    """Each committed SAE: <= 16 MB, float16 on disk, >= 4 x d_model latents, a block among the
    first 80 % chosen on validation data, held-out metrics and a training curve recorded, and the
    study's ``sae=`` entry pointing at the same block."""
    folder = BUILTIN_SAE_ROOT / name
    weights = folder / "sae_weights.safetensors"
    assert weights.stat().st_size <= 16 * 2**20
    assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float16}
    sae = probing.load_sae(name)
    assert sae.W_enc.dtype == torch.float32
    assert sae.cfg.d_sae >= 4 * sae.cfg.d_in
    info = json.loads((folder / "metrics.json").read_text())
    run = json.loads((folder / "liref_sae.json").read_text())
    choice = info["block_choice"]
    assert choice["block"] == run["layer"] and choice["relative_depth"] <= 0.8
    assert {"dead_fraction", "explained_variance", "ce_loss_recovered"} <= set(info["metrics"])
    assert len(info["training_curve"]) >= 2
    assert (folder / "COMMAND").read_text().startswith("python -m train.sae")
    entry = yaml.safe_load((CONF / "sae" / f"{name.replace('-', '_')}.yaml").read_text())
    assert entry["architecture"] == "pretrained"
    assert entry["pretrained"]["release"] == name and entry["pretrained"]["layer"] == run["layer"]


def test_block_of_a_run_needs_its_per_layer_file(tmp_path):
    with pytest.raises(LirefError, match="not a probe run folder: no per_layer.json"):
        builtin.choose_sae_block_of_run(tmp_path, 4)
    (tmp_path / "per_layer.json").write_text(json.dumps(_rows([.5, .9, .6, .99])))
    assert builtin.choose_sae_block_of_run(tmp_path, 4, 0.6)["block"] == 1  # 3 is too deep


def test_job_chooses_the_block_and_exports(tiny_model_dir, tmp_path):
    """train.sae with a probe run and max_relative_depth: the block chosen on validation among
    the first blocks (here half of 3: blocks 0 and 1), then a float16 copy with the curve, the choice and the command."""
    from tests.job_fixtures import run_module
    from tests.sae.test_training import ONE_THREAD, TINY, corpus_lines

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(line.replace("\n", " ") + "\n" for line in corpus_lines(400)))
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "per_layer.json").write_text(json.dumps(_rows([.6, .8, .99])))  # 3 blocks
    res = run_module("train.sae", "model=local", f"model.name={tiny_model_dir('llama')}",
                     f"corpus.path={corpus}", *TINY, f"probe_dir={probe}",
                     "max_relative_depth=0.5", f"export_dir={tmp_path / 'export'}",
                     "hydra.run.dir=run", cwd=tmp_path, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert info["block_choice"]["block"] == 1 and info["metrics"]["layer"] == 1
    assert info["training_curve"] and info["training_curve"][0]["step"] == 4
    assert "max_relative_depth=0.5" in (tmp_path / "export" / "COMMAND").read_text()
    stored = load_file(str(tmp_path / "export" / "sae_weights.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
