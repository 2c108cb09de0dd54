"""SAE training resumes EXACTLY: a run interrupted after a checkpoint (an exception, or
``kill -9`` on the organism) and started again ends with the same SAE, bit for bit, and the same
trainer statistics as an uninterrupted run."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import probing.sae.training as training
from probing.activations.tokens import activation_batches
from probing.sae.training import (
    CHECKPOINT_FILENAME,
    CHECKPOINT_STATE_FILENAME,
    SAETrainConfig,
    save_sae,
    train_sae,
)

ORGANISM_CKPT = Path(__file__).resolve().parents[2] / "probing" / "organism" / "checkpoint"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the trainer state a run ends with (what sae-lens's dead-latent statistics are made of)
STATS = ("act_freq_scores", "n_forward_passes_since_fired", "n_frac_active_samples",
         "n_training_samples", "n_training_steps", "started_fine_tuning")


class Stop(Exception):
    """Raised from a callback to interrupt training."""


@pytest.fixture()
def trainers(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every trainer ``train_sae`` makes (in this process and in forked children)."""
    made: list = []
    real = training._make_trainer_cls

    def make() -> type:
        class Recorded(real()):  # type: ignore[misc, valid-type]
            def fit(self):  # type: ignore[no-untyped-def]
                made.append(self)
                return super().fit()

        return Recorded

    monkeypatch.setattr(training, "_make_trainer_cls", make)
    return made


def _stats(trainer) -> dict:
    return {k: getattr(trainer, k) for k in STATS}


def assert_same_optimisation(a, b) -> None:
    """Two trainers' Adam moments, learning rate and sparsity-coefficient schedule agree."""
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i
    assert a.lr_scheduler.state_dict() == b.lr_scheduler.state_dict()
    assert a.get_coefficients() == b.get_coefficients()


def assert_same_stats(a: dict, b: dict) -> None:
    for k in STATS:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def assert_same_weights(a: Path, b: Path) -> None:
    """Every tensor of two saved SAEs' ``sae_weights.safetensors`` is equal."""
    wa, wb = load_file(a / "sae_weights.safetensors"), load_file(b / "sae_weights.safetensors")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


DATA = torch.randn(6000, 16, generator=torch.Generator().manual_seed(0)).relu() * 3


def _provider():
    return activation_batches(lambda _e: iter(DATA.split(700)), 64, buffer_tokens=1024, seed=5)


def _draws(log: list):
    """An ``on_log`` that also draws from every global RNG (so an RNG that a resume failed to
    restore shows), recording the draws."""
    def on_log(_metrics: dict, step: int) -> None:
        log.append((step, torch.rand(2).tolist(), float(np.random.rand()), random.random()))

    return on_log


@pytest.mark.parametrize("arch, extra", [
    ("topk", {}),
    ("batchtopk", {}),  # a trained buffer (topk_threshold)
    ("standard", {"sparsity_warm_up_steps": 30, "lr_scheduler": "cosineannealing",
                  "lr_warm_up_steps": 5, "lr_decay_steps": 10}),  # coefficient and lr schedules
    ("jumprelu", {"sparsity_warm_up_steps": 10}),
])
def test_interrupted_run_resumes_bit_identical(arch, extra, tmp_path, trainers, caplog):
    cfg = SAETrainConfig(architecture=arch, d_sae=48, k=4, lr=3e-3, training_tokens=64 * 50,
                         batch_size=64, n_batches_for_norm_estimate=3, log_every=1,
                         dead_feature_window=8, feature_sampling_window=16, **extra)
    whole_log: list = []
    whole = train_sae(_provider(), 16, cfg, seed=1, on_log=_draws(whole_log),
                      checkpoint_dir=tmp_path / "a")
    save_sae(whole, tmp_path / "whole")
    first = trainers[-1]
    want = _stats(first)

    cut_log: list = []
    draws = _draws(cut_log)

    def stop_at_33(metrics: dict, step: int) -> None:
        draws(metrics, step)
        if step == 33:  # checkpoints after steps 11, 21, 31, 41
            raise Stop

    with pytest.raises(Stop):
        train_sae(_provider(), 16, cfg, seed=1, on_log=stop_at_33, checkpoint_dir=tmp_path / "b")
    (run_dir,) = [p for p in (tmp_path / "b").iterdir() if p.is_dir()]
    (ckpt,) = [p for p in run_dir.iterdir() if p.is_dir()]
    assert int(ckpt.name) == 31 * 64
    info = json.loads((ckpt / CHECKPOINT_FILENAME).read_text())
    assert info["n_training_steps"] == 31 and info["provider"]["batches"] == 3 + 31
    assert info["checkpoint_thresholds"] == [2560]  # one checkpoint still ahead
    assert set(load_file(ckpt / CHECKPOINT_STATE_FILENAME)) == {"torch_cpu",
                                                                "provider.generator"}
    resumed_log: list = []
    with caplog.at_level("INFO", logger="probing.sae.training"):
        resumed = train_sae(_provider(), 16, cfg, seed=1, on_log=_draws(resumed_log),
                            checkpoint_dir=tmp_path / "b")
    assert "replaying 34 batches" in caplog.text and "exactly" in caplog.text
    assert not run_dir.exists()
    save_sae(resumed, tmp_path / "resumed")
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed")
    assert_same_stats(_stats(trainers[-1]), want)
    assert_same_optimisation(trainers[-1], first)
    assert [s for s, *_ in whole_log] == list(range(1, 51))
    assert cut_log == whole_log[:33]
    assert resumed_log == whole_log[31:]  # the same RNG draws, step by step, from step 32 on
    assert resumed.cfg.metadata.l0 == whole.cfg.metadata.l0


def test_a_plain_iterator_resumes_inexactly_with_a_warning(tmp_path, caplog):
    cfg = SAETrainConfig(architecture="topk", d_sae=32, k=4, training_tokens=64 * 20,
                         batch_size=64, n_batches_for_norm_estimate=2, log_every=1)

    def stop_at_12(_metrics: dict, step: int) -> None:
        if step == 12:
            raise Stop

    with pytest.raises(Stop):
        train_sae((b for b in _provider()), 16, cfg, seed=0, on_log=stop_at_12,
                  checkpoint_dir=tmp_path)
    with caplog.at_level("WARNING", logger="probing.sae.training"):
        sae = train_sae(iter(DATA[:1280].split(64) * 2), 16, cfg, seed=0,
                        checkpoint_dir=tmp_path)
    assert "cannot be positioned" in caplog.text
    assert torch.isfinite(sae.W_dec).all()


# --- kill -9 on the organism ------------------------------------------------------------------
def _organism_run(model, tok, corpus, root: Path, out: Path, on_log=None):
    from probing.sae.runs import SAEDataConfig, train_sae_on_corpus

    cfg = SAETrainConfig(architecture="topk", expansion_factor=4, k=8, lr=1e-3,
                         training_tokens=128 * 60, batch_size=128, log_every=1, eval_every=10,
                         n_batches_for_norm_estimate=4)
    data = SAEDataConfig(cache_dir=str(root / "cache"), heldout_texts=40, heldout_tokens=1000,
                         ce_batches=1, shuffle_buffer=2048, shard_tokens=1024,
                         eval_tokens_during_training=512)
    return train_sae_on_corpus(model, tok, corpus, cfg, data, out_dir=out, seed=0,
                               on_log=on_log)


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob(f"sae_checkpoints/sae-*/*/{CHECKPOINT_FILENAME}"))


def _victim(model, tok, corpus, root: Path) -> None:
    """The forked child: trains, and stalls 3 steps after its first checkpoint (so that the
    SIGKILL, sent once the parent sees that checkpoint, always lands mid-training)."""
    def stall(_metrics: dict, step: int) -> None:
        done = _complete_checkpoints(root)
        if done and step >= json.loads(done[0].read_text())["n_training_steps"] + 3:
            time.sleep(600)

    _organism_run(model, tok, corpus, root, root / "killed", on_log=stall)
    os._exit(3)  # finished without being killed


@pytest.mark.skipif(not (ORGANISM_CKPT / "config.json").is_file(),
                    reason="the organism checkpoint (probing/organism/checkpoint) is not committed")
def test_kill_9_on_the_organism_then_rerun_equals_an_uninterrupted_run(tmp_path, trainers):
    import sae_lens.training.sae_trainer  # noqa: F401 - imported before the fork: a fast start

    from probing.activations.corpus import load_corpus
    from probing.model.loading import load_model

    model, tok = load_model("organism")
    corpus = load_corpus("organism", max_texts=600, organism_checkpoint=ORGANISM_CKPT)
    whole = _organism_run(model, tok, corpus, tmp_path, tmp_path / "whole")  # builds the cache
    want = _stats(trainers[-1])

    proc = multiprocessing.get_context("fork").Process(
        target=_victim, args=(model, tok, corpus, tmp_path))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not _complete_checkpoints(tmp_path):
            assert proc.is_alive(), f"the victim exited early (exit code {proc.exitcode})"
            assert time.monotonic() < deadline, "the victim never wrote a checkpoint"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "sae").exists()
    (ckpt,) = _complete_checkpoints(tmp_path)

    resumed = _organism_run(model, tok, corpus, tmp_path, tmp_path / "resumed")
    assert not ckpt.parent.exists()  # checkpoints are removed once training completed
    assert_same_weights(tmp_path / "whole" / "sae", tmp_path / "resumed" / "sae")
    assert_same_stats(_stats(trainers[-1]), want)
    assert trainers[-1].n_training_steps == 60
    assert resumed.metrics == whole.metrics
