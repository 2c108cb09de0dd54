"""SAE runs over a text corpus: token stream -> (cached) activations -> sae-lens training ->
held-out metrics -> saved SAE. The building blocks are ``probing.sae.training`` (configs, training,
save/load), ``probing.activations.tokens`` (activations) and ``probing.sae.metrics`` (metrics).

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from probing.activations.tokens import TokenStreamConfig
from probing.errors import LirefError, from_mapping
from probing.sae.training import (
    LIREF_SAE_FILENAME,
    LogFn,
    SAETrainConfig,
    load_sae,
    save_sae,
    train_sae,
)

log = logging.getLogger(__name__)

__all__ = [
    "SAEConfig",
    "SAEDataConfig",
    "SAEResult",
    "SAERunInfo",
    "evaluate_pretrained_on_corpus",
    "evaluate_sae_on_corpus",
    "hook_name",
    "resolve_layer",
    "run_sae",
    "sae_metadata",
    "train_sae_on_corpus",
]


@dataclass
class SAERunInfo:
    """What ``liref_sae.json`` records about a trained SAE."""

    model_id: str
    layer: int
    d_in: int
    d_sae: int
    architecture: str
    corpus_fingerprint: str
    train: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    cache: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hook_name(layer: int) -> str:
    """TransformerLens hook name of liref layer ``l`` (block output = resid_post)."""
    return f"blocks.{layer}.hook_resid_post"


def sae_metadata(model_id: str, layer: int, context_size: int, corpus: str,
                 prepend_bos: bool = True) -> dict[str, Any]:
    """sae-lens metadata fields for an SAE trained on liref layer ``layer``."""
    return {
        "model_name": model_id,
        "hook_name": hook_name(layer),
        "context_size": context_size,
        "dataset_path": corpus,
        "prepend_bos": prepend_bos,
        "liref_layer": layer,
    }


@dataclass
class SAEDataConfig(TokenStreamConfig):
    """Where an SAE's token activations come from and how it is evaluated.

    Args:
        layer: decoder block (``None`` = the middle one, ``n_layers // 2``).
        context_size, batch_size, drop_bos, dtype, shard_tokens, max_tokens: the token stream
            (see ``probing.activations.tokens.TokenStreamConfig``); ``batch_size`` = sequences/forward.
        use_cache: extract once into a content-addressed cache under ``cache_dir`` (sweeps
            share it) instead of streaming from the model every epoch.
        cache_dir: cache root (required when ``use_cache``).
        shuffle_buffer: mixing-buffer size (tokens) of the training data provider.
        heldout_texts: documents held out of training for the metrics.
        heldout_tokens: at most this many held-out tokens for reconstruction metrics.
        eval_tokens_during_training: held-out tokens used by the periodic in-training evals.
        ce_batches: at most this many held-out batches for CE loss recovered.
        ce_last_tokens: besides ``ce_loss_recovered`` (every stream token, sae-lens's
            definition), report ``ce_loss_recovered_answer_tokens`` counted on the last n
            tokens of each sequence (document, or window of a longer document); ``"auto"`` = 2
            for the organism's corpus (answer + newline, all it was trained to predict), else
            none (``None``).
    """

    layer: int | None = None  # type: ignore[assignment]
    use_cache: bool = True
    cache_dir: str | None = None
    shuffle_buffer: int = 65536
    heldout_texts: int = 256
    heldout_tokens: int = 20000
    eval_tokens_during_training: int = 4096
    ce_batches: int = 8
    ce_last_tokens: Any = "auto"  # int, "auto" or None (a config schema allows no unions)

    def cache_root(self) -> str:
        """``cache_dir``, which ``use_cache`` needs (one clear error without it)."""
        if not self.cache_dir:
            raise LirefError("use_cache=true needs a cache_dir (activations.cache_dir)")
        return self.cache_dir

    def __post_init__(self) -> None:
        super().__post_init__()  # the token stream's checks
        if not (self.ce_last_tokens in (None, "auto") or (isinstance(self.ce_last_tokens, int)
                                                          and self.ce_last_tokens >= 1)):
            raise LirefError(f"ce_last_tokens must be null, 'auto' or >= 1, got "
                             f"{self.ce_last_tokens!r}")
        for name in ("shuffle_buffer", "heldout_texts", "heldout_tokens",
                     "eval_tokens_during_training", "ce_batches"):
            if int(getattr(self, name)) < 1:
                raise LirefError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEDataConfig:
        return from_mapping(cls, d, "activation")

    def ce_last_n(self, corpus_source: str) -> int | None:
        """``ce_last_tokens`` with ``"auto"`` resolved for a corpus source."""
        if self.ce_last_tokens == "auto":
            return 2 if corpus_source == "organism" else None
        return None if self.ce_last_tokens is None else int(self.ce_last_tokens)

    def stream(self, layer: int, max_tokens: int | None = None) -> Any:
        return TokenStreamConfig(layer=layer, max_tokens=max_tokens,
                                 **{f.name: getattr(self, f.name) for f in fields(TokenStreamConfig)
                                    if f.name not in ("layer", "max_tokens")})


@dataclass
class SAEConfig(SAETrainConfig):
    """An ``sae:`` config section: an SAE to train (``SAETrainConfig``) or, with
    ``architecture: pretrained``, a sae-lens release to load: ``pretrained`` = ``{release,
    sae_id, layer, model}``."""

    pretrained: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.architecture != "pretrained":
            super().__post_init__()
        elif not (self.pretrained or {}).get("release"):
            raise LirefError("architecture: pretrained needs pretrained.release (a sae-lens "
                             "release name) and pretrained.sae_id")

    def train_config(self) -> SAETrainConfig:
        """The training settings alone."""
        return SAETrainConfig(**{f.name: getattr(self, f.name) for f in fields(SAETrainConfig)})


@dataclass
class SAEResult:
    """What ``train_sae_on_corpus`` / ``evaluate_sae_on_corpus`` produce."""

    sae: Any
    layer: int
    metrics: dict[str, float]
    latent_density: torch.Tensor
    sae_dir: Path | None = None
    density_plot: Path | None = None
    cache_dirs: dict[str, str] = field(default_factory=dict)
    cache_built: dict[str, bool] = field(default_factory=dict)


def resolve_layer(model: Any, layer: int | None) -> int:
    """``layer`` validated (negative counts from the end); ``None`` = the middle block."""
    from probing.model.blocks import num_layers
    from probing.model.hooks import check_layers

    if layer is None:
        return num_layers(model) // 2
    return check_layers(model, [int(layer)])[0]


def fit_context(model: Any, data: SAEDataConfig) -> SAEDataConfig:
    """``data`` with ``context_size`` clipped to the model's ``max_position_embeddings``."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and 2 <= limit < data.context_size:
        log.info("context_size %d > the model's max_position_embeddings %d: using %d",
                 data.context_size, limit, limit)
        return SAEDataConfig(**{**asdict(data), "context_size": limit})
    return data


def _sources(model: Any, tokenizer: Any, corpus: Any, data: SAEDataConfig, layer: int,
             seed: int, need_train: bool = True
             ) -> tuple[Callable[[int], Iterator[torch.Tensor]] | None,
                        Callable[[], Iterator[torch.Tensor]], Any, dict, dict]:
    """``(train chunks per epoch, held-out chunks, held-out corpus, cache dirs, built flags)``."""
    from probing.activations.tokens import get_or_build_token_cache, iter_residual_tokens

    train_corpus, held_corpus = corpus.split(data.heldout_texts, seed=seed)
    train_stream = data.stream(layer, data.max_tokens)
    held_stream = data.stream(layer, data.heldout_tokens)
    if not data.use_cache:
        def train_chunks(_epoch: int) -> Iterator[torch.Tensor]:
            return iter_residual_tokens(model, tokenizer, train_corpus.texts, train_stream)

        def held_chunks() -> Iterator[torch.Tensor]:
            return iter_residual_tokens(model, tokenizer, held_corpus.texts, held_stream)

        return train_chunks, held_chunks, held_corpus, {}, {}
    data.cache_root()
    held_cache, built_held = get_or_build_token_cache(
        model, tokenizer, held_corpus.texts, data.cache_dir, held_stream,
        held_corpus.fingerprint, held_corpus.description)
    dirs, built = {"heldout": str(held_cache.path)}, {"heldout": built_held}
    if not need_train:
        return None, held_cache.iter_shards, held_corpus, dirs, built
    train_cache, built["train"] = get_or_build_token_cache(
        model, tokenizer, train_corpus.texts, data.cache_dir, train_stream,
        train_corpus.fingerprint, train_corpus.description)
    dirs["train"] = str(train_cache.path)

    def cached_train(epoch: int) -> Iterator[torch.Tensor]:
        return train_cache.iter_shards(shuffle=True, seed=seed + epoch)

    return cached_train, held_cache.iter_shards, held_corpus, dirs, built


def evaluate_sae_on_corpus(
    model: Any,
    tokenizer: Any,
    sae: Any,
    layer: int,
    held_chunks: Callable[[], Iterator[torch.Tensor]],
    held_texts: list[str],
    data: SAEDataConfig,
    ce_last_n: int | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Our metrics of an (inference) SAE on held-out tokens: ``(metrics, latent_density)``."""
    from probing.activations.tokens import text_batches
    from probing.sae.metrics import ce_loss_recovered, reconstruction_metrics

    rec = reconstruction_metrics(sae, held_chunks(), max_tokens=data.heldout_tokens)
    ce = ce_loss_recovered(
        model, sae, layer,
        text_batches(tokenizer, held_texts, data.context_size, data.batch_size),
        bos_id=getattr(tokenizer, "bos_token_id", None), drop_bos=data.drop_bos,
        max_batches=data.ce_batches, last_n=ce_last_n)
    metrics = {**rec.scalars(), **{k: v for k, v in asdict(ce).items() if v is not None}}
    return metrics, rec.latent_density


def train_sae_on_corpus(
    model: Any,
    tokenizer: Any,
    corpus: Any,
    cfg: SAETrainConfig,
    data: SAEDataConfig,
    out_dir: str | Path | None = None,
    seed: int = 0,
    on_log: LogFn | None = None,
) -> SAEResult:
    """Token activations of ``corpus`` at ``data.layer`` -> sae-lens SAE -> our metrics.

    The corpus is split into train / held-out documents; activations come from the cache (built
    once per model/corpus/layer/settings) or straight from the model. The trained SAE is saved
    in sae-lens's inference format in ``out_dir/sae`` (when given), reloaded, and the metrics
    are computed on that reloaded SAE, i.e. on exactly what users load.
    """
    import tempfile

    from probing.activations.tokens import activation_batches
    from probing.model.blocks import model_id
    from probing.sae.metrics import plot_latent_density, reconstruction_metrics

    layer = resolve_layer(model, data.layer)
    data = fit_context(model, data)
    train_chunks, held_chunks, held_corpus, cache_dirs, built = _sources(
        model, tokenizer, corpus, data, layer, seed)
    assert train_chunks is not None
    eval_acts = torch.cat(list(_take(held_chunks(), data.eval_tokens_during_training)))
    d_in = int(eval_acts.shape[1])

    def evaluate(sae: Any, scaler: Any) -> dict[str, float]:
        return reconstruction_metrics(sae, [scaler(eval_acts.float())]).scalars()

    from probing.model.loading import resolve_dtype

    provider = activation_batches(train_chunks, cfg.batch_size, data.shuffle_buffer, seed=seed,
                                  dtype=resolve_dtype(cfg.dtype))
    meta = sae_metadata(model_id(model), layer, data.context_size, str(corpus.description),
                        prepend_bos=True)
    meta["liref_corpus_fingerprint"] = corpus.fingerprint
    if cache_dirs.get("train"):  # the content address of the training tokens: a checkpoint of
        # a run on other tokens (another stream setting) is never resumed
        meta["liref_token_cache"] = Path(cache_dirs["train"]).name
    from probing.fingerprint import model_fingerprint

    meta["liref_model_fingerprint"] = model_fingerprint(model)
    # a killed run of the same settings resumes from its last checkpoint (kept beside the
    # token cache; removed once training completes), exactly: ``provider`` is fresh and
    # resumable, so the batches drawn before the checkpoint are replayed, not trained on
    checkpoints = Path(data.cache_dir).parent / "sae_checkpoints" if data.cache_dir else None
    training_sae = train_sae(provider, d_in, cfg, seed=seed, on_log=on_log, evaluate=evaluate,
                             metadata=meta, checkpoint_dir=checkpoints)
    with tempfile.TemporaryDirectory() as tmp:
        sae_dir = Path(out_dir) / "sae" if out_dir is not None else Path(tmp) / "sae"
        save_sae(training_sae, sae_dir)
        sae = load_sae(sae_dir, device=cfg.device)
        metrics, density = evaluate_sae_on_corpus(model, tokenizer, sae, layer, held_chunks,
                                                  held_corpus.texts, data,
                                                  data.ce_last_n(corpus.source))
        info = SAERunInfo(model_id=model_id(model), layer=layer, d_in=d_in,
                          d_sae=cfg.width(d_in), architecture=cfg.architecture,
                          corpus_fingerprint=corpus.fingerprint, train=asdict(cfg),
                          metrics=metrics, cache=cache_dirs.get("train"))
        if out_dir is not None:
            from probing.io import write_json

            write_json(sae_dir / LIREF_SAE_FILENAME, info.to_dict())
    plot = None
    if out_dir is not None:
        plot = plot_latent_density(density, Path(out_dir) / "latent_density.png",
                                   title=f"{cfg.architecture} SAE, layer {layer}")
    return SAEResult(sae=sae, layer=layer, metrics=metrics, latent_density=density,
                     sae_dir=sae_dir if out_dir is not None else None, density_plot=plot,
                     cache_dirs=cache_dirs, cache_built=built)


def evaluate_pretrained_on_corpus(
    model: Any,
    tokenizer: Any,
    corpus: Any,
    sae: Any,
    data: SAEDataConfig,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> SAEResult:
    """Our metrics for an already trained SAE (e.g. Gemma Scope) on ``corpus``'s held-out part;
    ``data.layer`` must be the layer the SAE was trained on."""
    from probing.sae.metrics import plot_latent_density

    layer = resolve_layer(model, data.layer)
    data = fit_context(model, data)
    d_model = int(getattr(model.config, "hidden_size", sae.cfg.d_in))
    if sae.cfg.d_in != d_model:
        raise LirefError(f"this SAE reads {sae.cfg.d_in}-wide activations but the model's "
                         f"residual stream is {d_model}-wide: wrong model or SAE")
    _, held_chunks, held_corpus, cache_dirs, built = _sources(
        model, tokenizer, corpus, data, layer, seed, need_train=False)
    metrics, density = evaluate_sae_on_corpus(model, tokenizer, sae, layer, held_chunks,
                                              held_corpus.texts, data,
                                              data.ce_last_n(corpus.source))
    plot = None
    if out_dir is not None:
        plot = plot_latent_density(density, Path(out_dir) / "latent_density.png",
                                   title=f"pretrained SAE, layer {layer}")
    return SAEResult(sae=sae, layer=layer, metrics=metrics, latent_density=density,
                     density_plot=plot, cache_dirs=cache_dirs, cache_built=built)


def _take(chunks: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    seen = 0
    for c in chunks:
        c = c[: n - seen]
        seen += c.shape[0]
        yield c
        if seen >= n:
            return


def run_sae(load_model: Callable[[], tuple[Any, Any]], sae_cfg: SAEConfig,
            corpus_cfg: Any, data: SAEDataConfig, out_dir: str | Path,
            layer: int | None = None, probe_dir: str | Path | None = None, seed: int = 0,
            on_log: Callable[[dict[str, float], int], None] | None = None,
            ) -> tuple[SAEResult, str, dict[str, Any]]:
    """A whole SAE run (the body of ``train.sae`` and of the pipeline's ``sae`` stage): train an
    SAE on ``corpus_cfg``'s texts at ``layer`` (``None``: the pretrained entry's layer, else the
    probe run's chosen layer, else the middle block), or evaluate a pretrained one.

    ``load_model``: returns ``(model, tokenizer)``; called after a pretrained SAE loaded, so an
    unreachable hub fails first. Returns the result, the architecture's name and the flat
    metrics of ``metrics.json``."""
    from probing.activations.corpus import load_corpus
    from probing.model.loading import organism_checkpoint
    from probing.probes.run import recorded_layer
    from probing.sae.training import load_sae

    pretrained = sae_cfg.pretrained if sae_cfg.architecture == "pretrained" else None
    if layer is None and pretrained:
        layer = pretrained.get("layer")
    if layer is None and probe_dir is not None:
        layer = recorded_layer(probe_dir)
    data = dataclasses.replace(data, layer=layer)
    sae = None
    if pretrained:  # first, so that an unreachable hub fails before the model loads
        sae = load_sae(pretrained["release"], pretrained.get("sae_id"), device=sae_cfg.device,
                       dtype=sae_cfg.dtype)
    model, tokenizer = load_model()
    corpus = load_corpus(**dataclasses.asdict(corpus_cfg), seed=seed,
                         organism_checkpoint=organism_checkpoint(model))
    if pretrained:
        result = evaluate_pretrained_on_corpus(model, tokenizer, corpus, sae, data,
                                               out_dir=out_dir, seed=seed)
        arch = f"pretrained:{pretrained['release']}/{pretrained.get('sae_id')}"
    else:
        train_cfg = sae_cfg.train_config()
        result = train_sae_on_corpus(model, tokenizer, corpus, train_cfg, data, out_dir=out_dir,
                                     seed=seed, on_log=on_log)
        arch = train_cfg.architecture
    metrics = {
        **result.metrics,
        "layer": result.layer,
        "d_sae": int(result.sae.cfg.d_sae),
        "cache_reused": float(not any(result.cache_built.values())) if result.cache_built
        else 0.0,
    }
    return result, arch, metrics
