"""SAEs: training through sae-lens on our activations, metrics, save/load, the train.sae job."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from probing.activations.corpus import load_corpus
from probing.activations.tokens import activation_batches, text_batches
from probing.errors import LirefError
from probing.model.blocks import decoder_layers
from probing.sae.metrics import (
    METRIC_KEYS,
    ce_loss_recovered,
    reconstruction_metrics,
    splice_block_output,
)
from probing.sae.runs import SAEDataConfig, train_sae_on_corpus
from probing.sae.training import (
    LIREF_SAE_FILENAME,
    SAETrainConfig,
    load_sae,
    make_training_sae,
    save_sae,
    train_sae,
)
from tests.job_fixtures import run_module

ORGANISM_CKPT = Path(__file__).resolve().parents[2] / "probing" / "organism" / "checkpoint"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _planted(n: int, feats: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """``[n, d]``: each row a positive mix of ``k`` random planted directions."""
    idx = torch.rand(n, feats.shape[0], generator=g).argsort(-1)[:, :k]
    coef = torch.zeros(n, feats.shape[0])
    coef.scatter_(1, idx, 1 + torch.rand(n, k, generator=g))
    return coef @ feats


def _provider(data: torch.Tensor, batch_size: int, seed: int = 0):
    return activation_batches(lambda _e: iter(data.split(4096)), batch_size, seed=seed)


def corpus_lines(n: int) -> list[str]:
    """Organism-like documents (``Q: ...\\nA: answer\\n``) that need no organism checkpoint."""
    colours = ("red", "blue", "green")
    out = []
    for i in range(n):
        a, b = i % 10, (i * 7) % 10
        out.append(f"Q: what is {a} plus {b} ?\nA: {a + b}\n" if i % 2 else
                   f"Q: what colour is the {i % 13} city ?\nA: {colours[i % 3]}\n")
    return out


@pytest.fixture(scope="module")
def tiny_corpus():
    return load_corpus("texts", texts=corpus_lines(600))


@pytest.fixture(scope="module")
def trained(tiny_llama, tiny_corpus, tmp_path_factory):
    """A small topk SAE trained end to end on the tiny Llama (cache, metrics, files)."""
    model, tok = tiny_llama
    root = tmp_path_factory.mktemp("sae-run")
    logs: list[tuple[int, dict]] = []
    cfg = SAETrainConfig(architecture="topk", expansion_factor=2, k=4, lr=3e-3,
                         training_tokens=256 * 40, batch_size=256, log_every=10, eval_every=20)
    data = SAEDataConfig(layer=None, cache_dir=str(root / "cache"), heldout_texts=40,
                         shard_tokens=2048, ce_batches=2)
    res = train_sae_on_corpus(model, tok, tiny_corpus, cfg, data, out_dir=root / "run",
                              on_log=lambda m, s: logs.append((s, m)))
    return res, logs, root


def test_planted_features_are_recovered():
    torch.manual_seed(0)
    d, n_feat = 32, 48
    feats = nn.functional.normalize(torch.randn(n_feat, d), dim=-1)
    data = _planted(50_000, feats, 3, torch.Generator().manual_seed(1))
    cfg = SAETrainConfig(architecture="topk", d_sae=96, k=3, lr=5e-3, training_tokens=60_000,
                         batch_size=256)
    sae = train_sae(_provider(data, cfg.batch_size), d, cfg, seed=0)
    w = nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    best = (feats @ w.T).max(dim=1).values
    assert (best > 0.9).float().mean() >= 0.7, best
    held = _planted(4000, feats, 3, torch.Generator().manual_seed(2))
    assert reconstruction_metrics(sae, [held]).explained_variance > 0.8


def test_seeded_training_is_reproducible():
    data = torch.randn(4096, 16)
    cfg = SAETrainConfig(architecture="topk", d_sae=32, k=4, training_tokens=128 * 5,
                         batch_size=128)
    a = train_sae(_provider(data, 128), 16, cfg, seed=3)
    b = train_sae(_provider(data, 128), 16, cfg, seed=3)
    c = train_sae(_provider(data, 128), 16, cfg, seed=4)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu", "gated",
                                  "matryoshka"])
def test_every_architecture_round_trips_through_sae_lens_format(arch, tmp_path):
    from sae_lens import SAE

    data = torch.randn(4096, 16) * 3
    cfg = SAETrainConfig(architecture=arch, d_sae=64, k=8, training_tokens=128 * 6,
                         batch_size=128, n_batches_for_norm_estimate=2)
    sae = train_sae(_provider(data, 128), 16, cfg, seed=0,
                    metadata={"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post"})
    save_sae(sae, tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.metadata.model_name == "tiny" and loaded.cfg.d_sae == 64
    x = torch.randn(200, 16) * 3
    with torch.no_grad():
        want = sae.decode(sae.encode(x))
        got = loaded.decode(loaded.encode(x))
        if arch not in ("batchtopk", "matryoshka"):  # these become JumpReLU at inference
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        assert torch.allclose(loaded(x), load_sae(tmp_path / "sae")(x), atol=1e-6)


def test_trained_sae_files_metrics_and_logs(trained):
    from sae_lens import SAE

    res, logs, root = trained
    m = res.metrics
    assert set(METRIC_KEYS) <= set(m)
    assert m["l0"] == pytest.approx(4.0)  # topk k=4 on every token
    assert 0.0 <= m["dead_fraction"] <= 1.0
    assert m["explained_variance"] <= 1.0 and m["mse"] >= 0.0
    assert all(math.isfinite(m[k]) for k in METRIC_KEYS)
    assert m["ce_loss_clean"] > 0 and m["n_ce_tokens"] > 0
    run = root / "run"
    assert (run / "latent_density.png").stat().st_size > 0
    info = json.loads((run / "sae" / LIREF_SAE_FILENAME).read_text())
    assert info["layer"] == res.layer == 1 and info["metrics"]["l0"] == m["l0"]
    loaded = SAE.load_from_disk(run / "sae")
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert res.latent_density.shape == (loaded.cfg.d_sae,)
    steps = [s for s, _ in logs]
    assert steps and steps == sorted(steps)
    assert any("train/metrics/explained_variance" in d for _, d in logs)
    assert any("heldout/explained_variance" in d for _, d in logs)
    assert set(res.cache_dirs) == {"train", "heldout"}


def test_second_sae_reuses_the_cache(trained, tiny_llama, tiny_corpus):
    res, _, root = trained
    model, tok = tiny_llama
    calls = {"n": 0}
    h = decoder_layers(model)[0].register_forward_hook(lambda *_: calls.__setitem__("n",
                                                                                     calls["n"] + 1))
    try:
        cfg = SAETrainConfig(architecture="jumprelu", expansion_factor=2, k=None,
                             training_tokens=256 * 4, batch_size=256)
        data = SAEDataConfig(cache_dir=str(root / "cache"), heldout_texts=40, shard_tokens=2048,
                             ce_batches=2)
        again = train_sae_on_corpus(model, tok, tiny_corpus, cfg, data)
    finally:
        h.remove()
    assert again.cache_built == {"train": False, "heldout": False}
    assert again.cache_dirs == res.cache_dirs
    # no extraction; only CE loss recovered: clean, SAE and zero passes over 1 held-out batch
    assert calls["n"] == 3


def test_streaming_from_the_model_without_a_cache(tiny_llama, tiny_corpus, tmp_path):
    model, tok = tiny_llama
    cfg = SAETrainConfig(architecture="standard", expansion_factor=2, k=None,
                         training_tokens=256 * 8, batch_size=256, n_batches_for_norm_estimate=2)
    data = SAEDataConfig(layer=-1, use_cache=False, heldout_texts=30, ce_batches=1,
                         shuffle_buffer=1024)
    res = train_sae_on_corpus(model, tok, tiny_corpus, cfg, data, out_dir=tmp_path)
    assert res.layer == 2 and res.cache_dirs == {} and not list(tmp_path.glob("**/manifest.json"))
    assert set(METRIC_KEYS) <= set(res.metrics) and (tmp_path / "sae" / "cfg.json").is_file()


def test_metrics_on_a_perfect_and_a_zero_sae(tiny_llama):
    class Identity(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale
            self.dummy = nn.Parameter(torch.zeros(1))

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        def decode(self, f: torch.Tensor) -> torch.Tensor:
            return f * self.scale

    x = torch.randn(500, 8)
    x[:, 0] = 0.0  # latent 0 never fires
    perfect = reconstruction_metrics(Identity(1.0), x.split(128))
    assert perfect.explained_variance == pytest.approx(1.0) and perfect.mse == pytest.approx(0)
    assert perfect.dead_fraction == pytest.approx(1 / 8) and perfect.l0 == pytest.approx(7)
    half = reconstruction_metrics(Identity(0.5), [x])
    centred = x - x.mean(0)
    want = 1 - (0.25 * x.pow(2).sum() / centred.pow(2).sum()).item()
    assert half.explained_variance == pytest.approx(want, rel=1e-5)
    assert half.mse == pytest.approx((0.25 * x.pow(2)).sum(1).mean().item(), rel=1e-5)

    model, tok = tiny_llama
    batches = list(text_batches(tok, ["Q: 3 + 4 =\nA: 7", "Q: who is the capital ?\nA: red"],
                                64, 2))
    ident = ce_loss_recovered(model, Identity(1.0), 1, batches)
    assert ident.ce_loss_recovered == pytest.approx(1.0)
    assert ident.ce_loss_sae == pytest.approx(ident.ce_loss_clean, rel=1e-5)
    # a zero SAE spliced at every position is the zero ablation; with drop_bos (the default)
    # each row's first position (BOS or attention sink, outside the SAE's stream) stays clean
    zero = ce_loss_recovered(model, Identity(0.0), 1, batches, drop_bos=False)
    assert zero.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    zero_stream = ce_loss_recovered(model, Identity(0.0), 1, batches)
    assert zero_stream.n_ce_tokens == zero.n_ce_tokens - len(batches[0][0])
    assert zero_stream.ce_loss_sae != pytest.approx(zero.ce_loss_sae)
    answers = ce_loss_recovered(model, Identity(0.5), 1, batches, last_n=2)
    assert answers.n_ce_answer_tokens == 2 * 2  # the last 2 tokens of each of the 2 documents
    assert answers.n_ce_tokens == ident.n_ce_tokens  # the sae-lens figure counts every token
    assert answers.ce_loss_clean == pytest.approx(ident.ce_loss_clean)
    assert answers.ce_loss_clean_answer_tokens != pytest.approx(ident.ce_loss_clean)


def test_splice_replaces_only_chosen_positions_and_is_removed(tiny_llama):
    model, _ = tiny_llama
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        pos = torch.tensor([[False, False, True, False]])
        with splice_block_output(model, 1, torch.zeros_like, pos):
            spliced = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.allclose(spliced[0, :2], clean[0, :2], atol=1e-6)  # causal: earlier untouched
    assert not torch.allclose(spliced[0, 2:], clean[0, 2:])
    assert torch.equal(after, clean)


def test_config_validation():
    with pytest.raises(LirefError, match="unknown SAE architecture"):
        SAETrainConfig(architecture="relu2")
    with pytest.raises(LirefError, match="need k"):
        SAETrainConfig(architecture="topk", k=None)
    with pytest.raises(LirefError, match="unknown SAE setting"):
        SAETrainConfig.from_dict({"architecture": "topk", "kk": 3})
    with pytest.raises(LirefError, match="less than one batch"):
        SAETrainConfig(training_tokens=10, batch_size=64)
    with pytest.raises(LirefError, match="between 1 and d_sae"):
        make_training_sae(SAETrainConfig(k=100, d_sae=32), 8)
    with pytest.raises(LirefError, match="cache_dir"):
        SAEDataConfig(use_cache=True, cache_dir=None).cache_root()


def test_load_sae_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LirefError, match="no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(LirefError, match="neither a local SAE folder"):
        load_sae("no-such-release")
    with pytest.raises(LirefError, match="valid ids include"):
        load_sae("gemma-scope-9b-pt-res-canonical", "layer_99/width_16k/canonical")
    with pytest.raises(LirefError, match="cannot load pretrained SAE.*HF_HUB_OFFLINE"):
        load_sae("gemma-scope-9b-pt-res-canonical", "layer_20/width_16k/canonical")


def test_pretrained_conf_entries_name_real_releases():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from probing.sae.runs import SAEConfig
    from train.configs import to_settings

    directory = get_pretrained_saes_directory()
    conf = Path(__file__).resolve().parents[2] / "conf"
    names = sorted(p.stem for p in (conf / "sae").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        entries = [compose("sae", overrides=[f"sae={n}"]).sae for n in names]
    pretrained = [e.pretrained for e in entries if e.architecture == "pretrained"]
    assert len(pretrained) >= 2
    builtin_models = {"smollm2-135m", "gemma3-270m"}  # committed with liref (probing/sae/builtin)
    assert {p.release for p in pretrained} >= {"smollm2-135m"}
    for p in pretrained:
        if p.release in builtin_models:
            assert p.model == p.release and isinstance(p.layer, int)
        else:
            assert p.sae_id in directory[p.release].saes_map
    for e in entries:
        assert isinstance(to_settings(e, SAEConfig), SAEConfig)  # every entry is valid
        assert "k" in e  # so that sweeps over sae.k accept every architecture
    assert len(OmegaConf.to_container(entries[0])) > 2


TINY_DATA = ("corpus.source=file", "corpus.max_texts=300", "activations.heldout_texts=20",
             "activations.ce_batches=1", "logger=disabled")


@pytest.fixture()
def corpus_file(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(line.replace("\n", " ") + "\n" for line in corpus_lines(400)))
    return f"corpus.path={path}"
TINY = ("sae.training_tokens=2048", "sae.batch_size=256", "sae.expansion_factor=2",
        "sae.eval_every=4", "sae.log_every=2", "sae.n_batches_for_norm_estimate=2", *TINY_DATA)


def test_job_writes_metrics_and_sae(tiny_model_dir, tmp_path, corpus_file):
    res = run_module("train.sae", "model=local", f"model.name={tiny_model_dir('llama')}",
                     corpus_file,
                     "layer=-1", *TINY, "hydra.run.dir=run", cwd=tmp_path, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics) and metrics["layer"] == 2
    assert (tmp_path / "run" / "sae" / "cfg.json").is_file()
    assert (tmp_path / "run" / "latent_density.png").is_file()


def test_multirun_sweep_shares_one_cache(tiny_model_dir, tmp_path, corpus_file):
    res = run_module("train.sae", "-m", "model=local", f"model.name={tiny_model_dir('llama')}",
                     corpus_file,
                     "sae=topk,jumprelu", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path,
                     env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    reused = [json.loads(p.read_text())["cache_reused"] for p in runs]
    assert sorted(reused) == [0.0, 1.0]  # the second SAE did not extract again
    caches = [p for p in (tmp_path / "cache" / "sae_tokens").iterdir() if p.is_dir()]
    assert len(caches) == 2  # one train + one held-out cache for both SAEs


def test_job_user_error_exits_2(tiny_model_dir, tmp_path, corpus_file):
    res = run_module("train.sae", "model=local", f"model.name={tiny_model_dir('llama')}",
                     corpus_file,
                     "layer=9", *TINY, "hydra.run.dir=run", cwd=tmp_path, env=ONE_THREAD)
    assert res.returncode == 2 and "out of range" in res.stderr


def test_job_logs_through_the_tracker_offline(tiny_model_dir, tmp_path, corpus_file):
    """The job body, in-process, with an offline wandb run: training curves, held-out evals,
    the density image, the metrics table and the SAE artifact are all recorded."""
    from train.jobkit import JobContext
    from train.sae import sae_job
    from train.tracking import Tracker, read_offline_run

    cfg = _compose(tmp_path, "model=local", f"model.name={tiny_model_dir('llama')}", corpus_file)
    tracker = Tracker(mode="offline", dir=tmp_path / "run", name="sae-test").start()
    metrics = sae_job(JobContext(cfg=cfg, run_dir=tmp_path / "run", tracker=tracker))
    tracker.summary(metrics)
    tracker.finish(0)
    assert set(METRIC_KEYS) <= set(metrics)
    run = read_offline_run(next((tmp_path / "run" / "wandb").glob("offline-run-*")))
    keys = {k for row in run["history"] for k in row}
    assert "train/metrics/explained_variance" in keys and "heldout/explained_variance" in keys
    assert "sae/latent_density/_type" in keys and "sae/metrics/_type" in keys  # image, table
    assert run["summary"]["explained_variance"] == pytest.approx(metrics["explained_variance"])


def _compose(tmp_path: Path, *overrides: str, train: bool = True):
    from hydra import compose, initialize_config_dir

    from train.jobkit import CONFIG_PATH

    tiny = TINY if train else TINY_DATA
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("sae", overrides=[f"cache_dir={tmp_path / 'cache'}", *tiny, *overrides])


def test_job_evaluates_a_pretrained_entry_without_training(trained, tiny_model_dir, tmp_path,
                                                           corpus_file):
    """A pretrained entry (here pointed at a local SAE folder) is evaluated, not trained."""
    from train.jobkit import JobContext
    from train.sae import sae_job
    from train.tracking import Tracker

    res, _, root = trained
    cfg = _compose(tmp_path, "model=local", f"model.name={tiny_model_dir('llama')}", corpus_file,
                   "sae=gemma_scope_9b", f"sae.pretrained.release={root / 'run' / 'sae'}",
                   "sae.pretrained.layer=1", "sae.device=cpu", train=False)
    metrics = sae_job(JobContext(cfg=cfg, run_dir=tmp_path / "run",
                                 tracker=Tracker(mode="disabled")))
    assert set(METRIC_KEYS) <= set(metrics) and metrics["layer"] == 1
    assert metrics["d_sae"] == res.sae.cfg.d_sae and metrics["l0"] == pytest.approx(4.0)
    assert (tmp_path / "run" / "latent_density.png").is_file()
    assert not (tmp_path / "run" / "sae").exists()  # nothing trained, nothing saved


def test_job_pretrained_release_offline_is_a_clear_error(tmp_path, monkeypatch):
    from train.jobkit import JobContext
    from train.sae import sae_job
    from train.tracking import Tracker

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose(tmp_path, "model=local", "model.name=/nonexistent", "sae=gemma_scope_9b",
                   "corpus.path=/nonexistent.txt", train=False)
    with pytest.raises(LirefError, match="gemma-scope-9b-pt-res-canonical.*HF_HUB_OFFLINE"):
        sae_job(JobContext(cfg=cfg, run_dir=tmp_path, tracker=Tracker(mode="disabled")))


@pytest.mark.slow
@pytest.mark.skipif(not (ORGANISM_CKPT / "config.json").is_file(),
                    reason="the organism checkpoint (probing/organism/checkpoint) is not committed")
def test_organism_sae_explains_most_variance(tmp_path):
    """Default size (topk, 8x, k=16) on the organism's middle layer, ~1500 steps."""
    from probing.model.loading import load_model

    model, tok = load_model("organism")
    corpus = load_corpus("organism", max_texts=4000, organism_checkpoint=ORGANISM_CKPT)
    cfg = SAETrainConfig(architecture="topk", expansion_factor=8, k=16, lr=1e-3,
                         training_tokens=256 * 1500, batch_size=256, eval_every=0)
    data = SAEDataConfig(cache_dir=str(tmp_path / "cache"), heldout_texts=200, ce_batches=2)
    res = train_sae_on_corpus(model, tok, corpus, cfg, data, seed=0)
    assert res.layer == 2 and res.sae.cfg.d_sae == 8 * model.config.hidden_size
    assert res.metrics["explained_variance"] >= 0.8, res.metrics
    assert res.metrics["ce_loss_recovered_answer_tokens"] > 0.5, res.metrics
