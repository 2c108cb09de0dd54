"""Sparse autoencoders on token-level residual activations, trained with sae-lens.

Training runs sae-lens's own ``SAETrainer`` on a data provider over OUR activations (a token
cache on disk or a model stream, see ``probing.activations.tokens``); metrics are ours
(``probing.sae.metrics``); the result is saved in sae-lens's inference format, so
``sae_lens.SAE.load_from_disk(path)`` and ``probing.load_sae(path)`` both load it.

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``), which is
TransformerLens's ``blocks.{l}.hook_resid_post`` (the hook the Gemma Scope / Llama Scope SAEs
were trained on).

sae-lens's own wandb logging stays off: progress goes through a callback (the jobs pass the
liref tracker's ``log``). sae-lens does not seed torch: ``train_sae`` does.

Crash safety: ``save_sae`` writes the SAE folder under a temporary name and moves it into place
atomically, so a half-written SAE folder is never read. ``train_sae(checkpoint_dir=...)`` saves
checkpoints, each written under a temporary name, completed with ``liref_checkpoint.json`` and
moved into place atomically. A checkpoint holds everything the training depends on: sae-lens's
weights, optimizer, learning-rate and coefficient schedulers, activation scaler and dead-latent
statistics (``act_freq_scores``, ``n_forward_passes_since_fired``, ``n_frac_active_samples``),
plus ours: the step counters, the checkpoint thresholds still ahead, the RNG states (torch CPU,
CUDA when available, numpy, python ``random``) and the data provider's position. A run killed
mid-training (even ``kill -9``) and started again with the same settings resumes from its last
complete checkpoint EXACTLY: with a resumable provider (``probing.activations.tokens.
ActivationBatches``, which every liref job uses) the resumed run ends with the same SAE, bit
for bit, as an uninterrupted one (same machine, torch version and thread count). sae-lens
6.x's trainer has no gradient scaler (its autocast is bfloat16), so there is none to save.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError, from_mapping
from probing.fingerprint import fingerprint
from probing.io import (
    atomic_replace_dir,
    disk_error,
    ensure_dir,
    file_lock,
    remove_orphans,
    write_json,
)
from probing.seeding import seed_everything

log = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FILENAME",
    "CHECKPOINT_STATE_FILENAME",
    "LIREF_SAE_FILENAME",
    "SAETrainConfig",
    "checkpoint_run_dir",
    "load_sae",
    "make_training_sae",
    "save_sae",
    "train_sae",
]

#: liref's name -> sae-lens training architecture name.
ARCHITECTURES: dict[str, str] = {
    "standard": "standard",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "matryoshka": "matryoshka_batchtopk",
}
_K_ARCHS = {"topk", "batchtopk", "matryoshka"}
_L1_ARCHS = {"standard", "gated"}

#: liref's provenance file written next to sae-lens's ``cfg.json`` / ``sae_weights.safetensors``.
LIREF_SAE_FILENAME = "liref_sae.json"
#: written last into a training checkpoint folder (before it is moved into place): step
#: counters, checkpoint thresholds, the provider's position, numpy's and python's RNG states
CHECKPOINT_FILENAME = "liref_checkpoint.json"
#: the tensors of a checkpoint that sae-lens does not save: torch's RNG states, the provider's
CHECKPOINT_STATE_FILENAME = "liref_state.safetensors"
#: what a saved SAE folder may hold (``save_sae`` replaces such a folder, and no other)
_SAE_FILES = {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", LIREF_SAE_FILENAME}

LogFn = Callable[[dict[str, Any], int], None]
EvalFn = Callable[[Any, Any], dict[str, float]]


@dataclass
class SAETrainConfig:
    """One SAE's architecture and optimisation settings.

    Args:
        architecture: one of ``ARCHITECTURES`` (standard = ReLU + L1).
        expansion_factor: ``d_sae = expansion_factor * d_in`` (unless ``d_sae`` is given).
        d_sae: explicit width.
        k: active latents per token (topk) or on average per batch (batchtopk, matryoshka).
        sparsity_coefficient: L1 coefficient (standard, gated) or L0 coefficient (jumprelu).
        sparsity_warm_up_steps: linear warm-up of that coefficient.
        lr, lr_scheduler, lr_warm_up_steps, lr_decay_steps: Adam learning rate and schedule
            (``constant``, ``cosineannealing``, ... as sae-lens names them).
        training_tokens: tokens seen in training (the data provider loops over its data).
        batch_size: tokens per step.
        normalize_activations: ``expected_average_only_in`` (scale to mean norm sqrt(d_in),
            folded into the weights after training) or ``none``.
        n_batches_for_norm_estimate: batches used to estimate that scale (keep small on CPU).
        jumprelu_init_threshold, jumprelu_bandwidth: JumpReLU's threshold init and STE width.
        matryoshka_widths: nested widths (default: d_sae/8, d_sae/4, d_sae/2, d_sae).
        aux_loss_coefficient: dead-latent auxiliary loss (topk family).
        decoder_init_norm: initial decoder row norm.
        dead_feature_window, feature_sampling_window: sae-lens's sparsity bookkeeping (steps).
        device, dtype: where and in what precision the SAE trains.
        log_every: steps between training-metric logs; ``eval_every``: steps between held-out
            evaluations during training (0 = only at the end).
    """

    architecture: str = "topk"
    expansion_factor: int = 8
    d_sae: int | None = None
    k: int | None = 16
    sparsity_coefficient: float | None = None
    sparsity_warm_up_steps: int = 0
    lr: float = 3e-4
    lr_scheduler: str = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    training_tokens: int = 2_000_000
    batch_size: int = 1024
    normalize_activations: str = "expected_average_only_in"
    n_batches_for_norm_estimate: int = 16
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    matryoshka_widths: list[int] | None = None
    aux_loss_coefficient: float = 1.0
    decoder_init_norm: float | None = 0.1
    dead_feature_window: int = 1000
    feature_sampling_window: int = 2000
    device: str = "cpu"
    dtype: str = "float32"
    log_every: int = 50
    eval_every: int = 500

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise LirefError(f"unknown SAE architecture {self.architecture!r}; allowed: "
                             f"{sorted(ARCHITECTURES)}")
        if self.expansion_factor < 1 and self.d_sae is None:
            raise LirefError(f"expansion_factor must be >= 1, got {self.expansion_factor}")
        if self.d_sae is not None and self.d_sae < 1:
            raise LirefError(f"d_sae must be >= 1, got {self.d_sae}")
        if self.architecture in _K_ARCHS:
            if self.k is None or self.k < 1:
                raise LirefError(f"{self.architecture} SAEs need k >= 1, got k={self.k}")
        elif self.k is not None:
            log.info("k=%s is ignored by the %s architecture", self.k, self.architecture)
        if self.sparsity_coefficient is not None and self.sparsity_coefficient < 0:
            raise LirefError(f"sparsity_coefficient must be >= 0, got {self.sparsity_coefficient}")
        for name in ("lr", "training_tokens", "batch_size", "n_batches_for_norm_estimate",
                     "log_every"):
            if getattr(self, name) <= 0:
                raise LirefError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.training_tokens < self.batch_size:
            raise LirefError(f"training_tokens={self.training_tokens} is less than one batch "
                             f"(batch_size={self.batch_size})")
        if self.eval_every < 0:
            raise LirefError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.normalize_activations not in ("none", "expected_average_only_in"):
            raise LirefError(f"normalize_activations must be 'none' or "
                             f"'expected_average_only_in', got {self.normalize_activations!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        """Build from a (Hydra) mapping; unknown keys raise, naming the allowed ones."""
        return from_mapping(cls, d, "SAE")

    def width(self, d_in: int) -> int:
        return int(self.d_sae) if self.d_sae is not None else int(self.expansion_factor * d_in)

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size


def _training_cfg_dict(cfg: SAETrainConfig, d_in: int) -> dict[str, Any]:
    d_sae = cfg.width(d_in)
    out: dict[str, Any] = dict(
        d_in=d_in, d_sae=d_sae, dtype=cfg.dtype, device=cfg.device,
        normalize_activations=cfg.normalize_activations,
        decoder_init_norm=cfg.decoder_init_norm,
    )
    arch = cfg.architecture
    if arch in _L1_ARCHS:
        out["l1_coefficient"] = 5.0 if cfg.sparsity_coefficient is None else cfg.sparsity_coefficient
        out["l1_warm_up_steps"] = cfg.sparsity_warm_up_steps
    elif arch == "jumprelu":
        out["l0_coefficient"] = 1.0 if cfg.sparsity_coefficient is None else cfg.sparsity_coefficient
        out["l0_warm_up_steps"] = cfg.sparsity_warm_up_steps
        out["jumprelu_init_threshold"] = cfg.jumprelu_init_threshold
        out["jumprelu_bandwidth"] = cfg.jumprelu_bandwidth
    else:
        if cfg.k is None or cfg.k > d_sae:
            raise LirefError(f"k={cfg.k} must be between 1 and d_sae={d_sae}")
        out["k"] = cfg.k
        out["aux_loss_coefficient"] = cfg.aux_loss_coefficient
        if arch == "matryoshka":
            widths = list(cfg.matryoshka_widths or [])
            if not widths:
                widths = sorted({max(cfg.k, d_sae // 8), max(cfg.k, d_sae // 4),
                                 max(cfg.k, d_sae // 2), d_sae})
            if widths[-1] != d_sae or any(b <= a for a, b in zip(widths[:-1], widths[1:], strict=True)):
                raise LirefError(f"matryoshka_widths {widths} must increase strictly and end at "
                                 f"d_sae={d_sae}")
            out["matryoshka_widths"] = widths
    return out


def make_training_sae(cfg: SAETrainConfig, d_in: int) -> Any:
    """A fresh sae-lens ``TrainingSAE`` of ``cfg.architecture`` for ``d_in``-wide activations."""
    import sae_lens  # noqa: F401 - registers the architectures
    from sae_lens.registry import get_sae_training_class

    sae_cls, cfg_cls = get_sae_training_class(ARCHITECTURES[cfg.architecture])
    try:
        return sae_cls(cfg_cls(**_training_cfg_dict(cfg, d_in)))
    except ValueError as exc:
        raise LirefError(f"invalid {cfg.architecture} SAE settings: {exc}") from exc


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, json)``: torch's CPU (and every CUDA device's) RNG state as ``uint8``
    tensors; numpy's and python's global RNG states as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    return tensors, {
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    """Restore what ``_rng_state`` returned."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"torch_cuda_{i}"] for i in range(len(tensors))
            if f"torch_cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda or torch.cuda.is_available():
        log.warning("the SAE checkpoint holds RNG states of %d CUDA devices, this machine has "
                    "%d: CUDA RNGs not restored", len(cuda),
                    torch.cuda.device_count() if torch.cuda.is_available() else 0)
    n = saved["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = saved["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _resumable(provider: Any) -> bool:
    return callable(getattr(provider, "state_dict", None)) and callable(
        getattr(provider, "load_state_dict", None))


def _make_trainer_cls() -> type:
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import load_file, save_file

    class TrackedSAETrainer(SAETrainer):  # type: ignore[misc, type-arg]
        """sae-lens's trainer, reporting through callbacks instead of wandb, with checkpoints
        that resume exactly."""

        on_log: LogFn | None = None
        evaluate: EvalFn | None = None
        log_every: int = 50
        eval_every: int = 0
        run_dir: Path | None = None  # where checkpoints go (``None``: sae-lens's own way)

        def save_checkpoint(self, checkpoint_name: str, base_path: Any = None,
                            wandb_aliases: Any = None) -> None:
            """sae-lens's checkpoint plus the RNG states and the provider's position, written
            under a temporary name, completed with ``liref_checkpoint.json`` and moved into
            place atomically; older ones removed.

            Called by ``fit()`` after step ``n_training_steps`` (counted from 0) drew its batch
            and trained, before the step counter is incremented and before the threshold that
            triggered it is dropped from ``checkpoint_thresholds``."""
            if self.run_dir is None:
                super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
                return
            final = self.run_dir / f"{self.n_training_samples:015d}"
            tmp = self.run_dir / f".{final.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            thresholds = list(self.checkpoint_thresholds)
            if thresholds and self.n_training_samples > thresholds[0]:
                thresholds = thresholds[1:]  # what _checkpoint_if_needed pops after this
            tensors, rng = _rng_state()
            provider = None
            if _resumable(self.data_provider):
                provider = dict(self.data_provider.state_dict())
                tensors.update({f"provider.{k}": provider.pop(k) for k in list(provider)
                                if isinstance(provider[k], torch.Tensor)})
            try:
                super().save_checkpoint(tmp.name, base_path=self.run_dir)
                save_file({k: v.contiguous() for k, v in tensors.items()},
                          tmp / CHECKPOINT_STATE_FILENAME)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise disk_error(exc, tmp / "sae_weights.safetensors") from exc
            write_json(tmp / CHECKPOINT_FILENAME, {
                "n_training_samples": self.n_training_samples,
                "n_training_steps": self.n_training_steps + 1,  # fit() increments after this
                "checkpoint_thresholds": thresholds,
                "provider": provider,
                "rng": rng,
            })
            atomic_replace_dir(tmp, final)
            for old in _checkpoints(self.run_dir)[:-1]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("SAE checkpoint at %d samples: %s", self.n_training_samples, final)

        def resume(self, folder: Path) -> bool:
            """Continue from checkpoint ``folder``: weights, optimizer, schedulers, scaler and
            sparsity statistics (sae-lens), step counter and checkpoint thresholds, the
            provider's position (its batches replayed, the norm estimate's included: the
            restored scaler is not estimated again) and, last, the RNG states.

            Returns whether the resume is exact (``False``: a checkpoint of an older liref, or
            a provider without ``state_dict`` / ``load_state_dict``, which goes on from
            wherever it is)."""
            info = json.loads((folder / CHECKPOINT_FILENAME).read_text())
            self.sae.load_weights_from_checkpoint(folder)
            self.load_trainer_state(folder)
            self.n_training_steps = int(info["n_training_steps"])
            if "checkpoint_thresholds" in info:
                self.checkpoint_thresholds = [int(t) for t in info["checkpoint_thresholds"]]
            else:
                self.checkpoint_thresholds = [t for t in self.checkpoint_thresholds
                                              if t >= self.n_training_samples]
            if "rng" not in info:
                log.warning("SAE checkpoint %s has no RNG or data-provider state (an older "
                            "liref wrote it): the resumed run will not equal an uninterrupted "
                            "one", folder)
                return False
            tensors = load_file(folder / CHECKPOINT_STATE_FILENAME)
            exact = info["provider"] is not None and _resumable(self.data_provider)
            if exact:
                state = {**info["provider"], **{k.removeprefix("provider."): v
                                                for k, v in tensors.items()
                                                if k.startswith("provider.")}}
                log.info("replaying %s batches of the data provider", state.get("batches"))
                self.data_provider.load_state_dict(state)
            else:
                log.warning("the SAE data provider cannot be positioned (it has no state_dict / "
                            "load_state_dict, or the checkpoint holds no position): it goes on "
                            "from where it is, and the resumed run will not equal an "
                            "uninterrupted one")
            _set_rng_state({k: v for k, v in tensors.items() if k.startswith("torch_")},
                           info["rng"])
            return exact

        def step(self, batch: torch.Tensor) -> Any:
            out = super().step(batch)
            step = self.n_training_steps + 1  # fit() increments after step()
            if self.on_log is not None and step % self.log_every == 0:
                metrics = self.build_train_step_log_dict(out, self.n_training_samples)
                self.on_log({f"train/{k}": v for k, v in metrics.items()}, step)
            if (self.on_log is not None and self.evaluate is not None and self.eval_every
                    and step % self.eval_every == 0):
                self.sae.eval()
                with torch.no_grad():
                    metrics = self.evaluate(self.sae, self.activation_scaler)
                self.sae.train()
                self.on_log({f"heldout/{k}": v for k, v in metrics.items()}, step)
            return out

    return TrackedSAETrainer


def _checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name.isdigit()
                  and (p / CHECKPOINT_FILENAME).is_file())


def checkpoint_run_dir(checkpoint_dir: str | Path, cfg: SAETrainConfig, d_in: int,
                       seed: int | None, metadata: dict[str, Any] | None) -> Path:
    """``checkpoint_dir/sae-<key>``: the key covers everything that makes a run the same run
    (settings, width, seed, metadata such as model, layer and corpus fingerprint)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("log_every", "eval_every")}
    key = fingerprint({"cfg": settings, "d_in": d_in, "seed": seed, "metadata": metadata or {}})
    return Path(checkpoint_dir).expanduser() / f"sae-{key}"


def train_sae(
    data_provider: Iterator[torch.Tensor],
    d_in: int,
    cfg: SAETrainConfig,
    seed: int | None = 0,
    on_log: LogFn | None = None,
    evaluate: EvalFn | None = None,
    metadata: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    n_checkpoints: int = 4,
) -> Any:
    """Train an SAE with sae-lens's ``SAETrainer`` on ``[batch_size, d_in]`` batches.

    Args:
        data_provider: infinite iterator of ``[cfg.batch_size, d_in]`` activation batches
            (fresh: ``fit()`` draws the norm estimate's batches from it first).
        d_in: activation width.
        cfg: architecture and optimisation settings.
        seed: seeds python/numpy/torch before the SAE is initialised (``None`` = leave as is).
        on_log: ``on_log(metrics, step)`` every ``cfg.log_every`` steps (e.g. tracker.log).
        evaluate: ``evaluate(training_sae, activation_scaler) -> metrics`` every
            ``cfg.eval_every`` steps (held-out metrics in the scaled space).
        metadata: written into the SAE's ``cfg.metadata`` (model_name, hook_name, ...).
        checkpoint_dir: keep resumable checkpoints in ``checkpoint_dir/sae-<run key>/`` (see
            ``checkpoint_run_dir``): a run of the same settings that was killed resumes from its
            last complete checkpoint, exactly (the SAE equals an uninterrupted run's) when
            ``data_provider`` is a fresh resumable provider (``state_dict`` /
            ``load_state_dict``, e.g. ``probing.activations.tokens.activation_batches``): its
            batches up to the checkpoint are replayed, not trained on. Any other iterator goes
            on from wherever it is (a valid SAE, not the same one). Removed when training
            completes. ``None``: no checkpoints; a killed run restarts from scratch.
        n_checkpoints: checkpoints per run (evenly spaced) when ``checkpoint_dir`` is given.

    Returns:
        the trained sae-lens ``TrainingSAE`` (activation scaling folded into the weights).
    """
    if checkpoint_dir is None:
        return _train_sae(data_provider, d_in, cfg, seed, on_log, evaluate, metadata, None, 0)
    run_dir = ensure_dir(checkpoint_run_dir(checkpoint_dir, cfg, d_in, seed, metadata))
    with file_lock(run_dir.parent / f"{run_dir.name}.lock", what=f"the SAE run {run_dir}"):
        remove_orphans(run_dir, [".*.tmp-*"])  # checkpoints a killed run was writing
        sae = _train_sae(data_provider, d_in, cfg, seed, on_log, evaluate, metadata, run_dir,
                         n_checkpoints)
        shutil.rmtree(run_dir, ignore_errors=True)
    return sae


def _train_sae(data_provider: Iterator[torch.Tensor], d_in: int, cfg: SAETrainConfig,
               seed: int | None, on_log: LogFn | None, evaluate: EvalFn | None,
               metadata: dict[str, Any] | None, run_dir: Path | None, n_checkpoints: int) -> Any:
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if seed is not None:
        seed_everything(int(seed))
    sae = make_training_sae(cfg, d_in)
    for key, value in (metadata or {}).items():
        sae.cfg.metadata[key] = value
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_tokens,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name=cfg.lr_scheduler,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        device=cfg.device,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=n_checkpoints if run_dir is not None else 0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
    )
    trainer = _make_trainer_cls()(cfg=trainer_cfg, sae=sae, data_provider=data_provider)
    trainer.on_log, trainer.evaluate = on_log, evaluate
    trainer.log_every, trainer.eval_every = cfg.log_every, cfg.eval_every
    trainer.run_dir = run_dir
    done = _checkpoints(run_dir) if run_dir is not None else []
    if done:
        exact = trainer.resume(done[-1])
        log.info("resuming SAE training from checkpoint %s (%d of %d tokens done%s)", done[-1],
                 trainer.n_training_samples, cfg.training_tokens,
                 ", exactly" if exact else "")
    sae = trainer.fit()
    sae.eval()
    return sae


def save_sae(sae: Any, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Save in sae-lens's format (``cfg.json`` + ``sae_weights.safetensors``; a training SAE is
    saved as its inference SAE) plus ``liref_sae.json`` (``info``: model, layer, corpus, metrics).

    The folder is written as ``.<name>.tmp-<pid>`` beside ``path`` and moved into place
    atomically (replacing an older SAE there in one step): ``path`` is always absent or
    complete. Temporary folders of killed savers are removed. A ``path`` holding anything but
    a saved SAE is refused (it would be replaced as a whole).
    """
    from sae_lens.saes.sae import TrainingSAE

    path = Path(path).expanduser()
    if path.exists():
        other = sorted(p.name for p in path.iterdir()) if path.is_dir() else [path.name]
        other = [name for name in other if name not in _SAE_FILES]
        if other:
            raise LirefError(f"{path} holds other things than a saved SAE ({other[:5]}); "
                             f"save_sae replaces the whole folder: choose a new or empty one")
    ensure_dir(path.parent)
    remove_orphans(path.parent, [f".{path.name}.tmp-*"], dead_pids_only=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ensure_dir(tmp)
        try:
            if isinstance(sae, TrainingSAE):
                sae.save_inference_model(tmp)
            else:
                sae.save_model(tmp)
        except OSError as exc:
            raise disk_error(exc, path / "sae_weights.safetensors") from exc
        if info is not None:
            write_json(tmp / LIREF_SAE_FILENAME, info)
        atomic_replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_release(release: str, sae_id: str | None) -> str:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise LirefError(f"{release!r} is neither a local SAE folder (with cfg.json) nor a "
                         f"sae-lens pretrained release; e.g. 'gemma-scope-9b-pt-res-canonical', "
                         f"'llama_scope_lxr_8x' (see sae_lens/pretrained_saes.yaml)")
    ids = list(directory[release].saes_map)
    if sae_id is None or sae_id not in ids:
        shown = ids[:6] + (["..."] if len(ids) > 6 else [])
        raise LirefError(f"release {release!r} needs a valid sae_id, got {sae_id!r}; valid ids "
                         f"include {shown}")
    return sae_id


def load_sae(
    path_or_release: str | Path,
    sae_id: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> Any:
    """A sae-lens ``SAE`` from a local folder (``save_sae`` / sae-lens format) or a release.

    Args:
        path_or_release: folder holding ``cfg.json`` + ``sae_weights.safetensors``, a built-in
            model's name (``"smollm2-135m"``, ``"gemma3-270m"``: the SAE committed with liref,
            ``probing.sae.builtin``; float16 on disk, float32 unless ``dtype`` says otherwise),
            or a sae-lens pretrained release name (e.g. ``"gemma-scope-9b-pt-res-canonical"``).
        sae_id: the SAE in the release (e.g. ``"layer_20/width_16k/canonical"``).
        device, dtype: where to put it (``dtype=None`` keeps the saved one for local folders).

    Raises:
        LirefError: unknown folder/release/id, or the hub is unreachable.
    """
    from sae_lens import SAE

    from probing.sae.builtin import builtin_sae_names, load_builtin_sae

    if str(path_or_release) in builtin_sae_names():  # a built-in model's committed SAE
        return load_builtin_sae(str(path_or_release), device=device, dtype=dtype or "float32")
    p = Path(path_or_release).expanduser()
    if p.is_dir():
        if not (p / "cfg.json").is_file():
            raise LirefError(f"{p} is not a sae-lens SAE folder: no cfg.json in it")
        try:
            return SAE.load_from_disk(str(p), device=device, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
            raise LirefError(f"cannot load the SAE in {p}: {type(exc).__name__}: {exc}") from exc
    release = str(path_or_release)
    sae_id = _check_release(release, sae_id)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype or "float32")
    except Exception as exc:  # noqa: BLE001 - hub, network and conversion errors all land here
        why = ("HF_HUB_OFFLINE is set and it is not in the local HF cache" if offline
               else "the HuggingFace hub is unreachable (no network?) or the download failed")
        raise LirefError(f"cannot load pretrained SAE {release!r} / {sae_id!r}: {why}; a local "
                         f"SAE folder works offline ({type(exc).__name__}: {exc})") from exc
