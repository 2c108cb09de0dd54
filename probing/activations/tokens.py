"""Token-level residual activations: streamed from a model, or cached on disk in shards.

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``), read with
``probing.model.hooks.forward_residual``. Padding tokens (and optionally BOS) are dropped, so a token
stream is a sequence of ``[n_tokens, d_model]`` chunks.

The cache is one entry of the crash-safe cache core (``probing.activations.store``): a
content-addressed folder ``<cache_dir>/<key>`` (so that the SAEs of a sweep share one
extraction) holding safetensors shards (``shard_00000.safetensors`` = ``{"activations":
[n, d]}``) and ``manifest.json`` (format ``liref-token-activations`` version 2: model id and
fingerprint, layer, corpus fingerprint, dtype, n_tokens, d_model, ``complete``, and per shard
its token count, byte size and sha256). The lock file ``<cache_dir>/<key>.lock`` serialises
builders. The manifest is rewritten after every shard, so a build killed at any point resumes
from its complete shards: the token stream is deterministic, and the tokens already cached are
skipped without a forward pass. Readers accept only a complete manifest and verified shards.
Memory is bounded by one shard (write and read), whatever the token count.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from probing.activations.store import MANIFEST, CacheEntry
from probing.batching import pad_right
from probing.errors import LirefError
from probing.fingerprint import fingerprint, model_fingerprint
from probing.io import remove_orphans
from probing.model.blocks import model_id
from probing.model.hooks import check_layers, forward_residual
from probing.model.loading import resolve_dtype

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "CACHE_FORMAT_VERSION",
    "MANIFEST_FILENAME",
    "ActivationBatches",
    "CacheManifest",
    "ShardInfo",
    "TokenActivationCache",
    "TokenStreamConfig",
    "activation_batches",
    "build_token_cache",
    "cache_key",
    "get_or_build_token_cache",
    "iter_residual_tokens",
    "token_chunks",
]

CACHE_FORMAT = "liref-token-activations"
CACHE_FORMAT_VERSION = 2
MANIFEST_FILENAME = MANIFEST
SHARD_GLOB = "shard_*.safetensors"


@dataclass
class TokenStreamConfig:
    """How text becomes token activations.

    Args:
        layer: decoder block whose output is read (negative counts from the end).
        context_size: tokens per sequence; longer documents are split into windows.
        batch_size: sequences per forward pass.
        drop_bos: drop BOS tokens and each window's first position (the attention sink where
            the tokenizer adds no BOS; see ``token_mask``) from the stream.
        dtype: storage dtype of cached activations (``float32``, ``bfloat16``, ``float16``).
        shard_tokens: tokens per cache shard (memory bound of reading and writing).
        max_tokens: stop after this many tokens (``None`` = the whole corpus).
    """

    layer: int
    context_size: int = 128
    batch_size: int = 64
    drop_bos: bool = True
    dtype: str = "float32"
    shard_tokens: int = 65536
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("context_size", "batch_size", "shard_tokens"):
            if int(getattr(self, name)) < 1:
                raise LirefError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_size < 2:
            raise LirefError(f"context_size must be >= 2, got {self.context_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise LirefError(f"max_tokens must be >= 1 or null, got {self.max_tokens}")
        resolve_dtype(self.dtype)


def token_chunks(tokenizer: Any, texts: Iterable[str], context_size: int) -> Iterator[list[int]]:
    """Token id windows of at most ``context_size``; long documents are split and every window
    after the first starts again with BOS (when the tokenizer adds one)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if not ids:
            continue
        starts_bos = bos is not None and ids[0] == bos
        head = [bos] if starts_bos else []
        body = ids[1:] if starts_bos else ids
        step = context_size - len(head)
        for i in range(0, len(body), step):
            window = head + body[i : i + step]
            if len(window) > len(head):
                yield window


def _batches(chunks: Iterator[list[int]], batch_size: int, pad_id: int, sort_window: int = 16
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids [B, T], attention_mask [B, T])`` batches. Chunks are read
    ``batch_size * sort_window`` at a time and sorted by length, so little compute goes to
    padding; the order is deterministic."""

    window: list[list[int]] = []

    def flush() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        window.sort(key=len)
        for i in range(0, len(window), batch_size):
            yield pad_right(window[i : i + batch_size], pad_id)
        window.clear()

    for chunk in chunks:
        window.append(chunk)
        if len(window) == batch_size * sort_window:
            yield from flush()
    if window:
        yield from flush()


def token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, bos_id: int | None,
               drop_bos: bool) -> torch.Tensor:
    """``[B, T]`` bool: the positions that belong to the token stream (no padding, no BOS).

    ``drop_bos`` leaves out the BOS tokens and each row's first attended position: the BOS
    where the tokenizer adds one, else the first token, which then takes the attention sink's
    massive activation (in SmolLM2-135M, whose GGUF tokenizer adds no BOS, its residual norm is
    ~70x the median and it holds ~98 % of the stream's variance at block 23)."""
    attended = attention_mask.bool()
    keep = attended.clone()
    if drop_bos:
        if bos_id is not None:
            keep &= input_ids != bos_id
        rows = torch.nonzero(attended.any(1)).squeeze(1)
        keep[rows, attended[rows].int().argmax(1)] = False
    return keep


def text_batches(tokenizer: Any, texts: Iterable[str], context_size: int, batch_size: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, attention_mask)`` batches of the corpus, right padded."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return _batches(token_chunks(tokenizer, texts, context_size), batch_size, int(pad))


def iter_residual_tokens(
    model: nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    stream: TokenStreamConfig,
    skip_tokens: int = 0,
) -> Iterator[torch.Tensor]:
    """Residual activations at ``stream.layer``, one ``[n_tokens, d_model]`` chunk per forward
    pass (padding and optionally BOS dropped), in the model's dtype; stops at ``max_tokens``.

    ``skip_tokens`` drops the stream's first tokens; batches made only of skipped tokens get no
    forward pass (how an interrupted cache build resumes). The stream is deterministic: the same
    texts and settings give the same batches."""
    (layer,) = check_layers(model, [stream.layer])
    bos = getattr(tokenizer, "bos_token_id", None)
    seen = 0  # tokens of the stream so far, skipped ones included
    for ids, mask in text_batches(tokenizer, texts, stream.context_size, stream.batch_size):
        keep = token_mask(ids, mask, bos, stream.drop_bos)
        n = int(keep.sum())
        if stream.max_tokens is not None:
            n = min(n, stream.max_tokens - seen)
        if seen + n > skip_tokens:
            acts = forward_residual(model, ids, mask, [layer], early_exit=True)[layer]
            out = acts[keep.to(acts.device)][:n][max(0, skip_tokens - seen):]
            if out.shape[0]:
                yield out
        seen += n
        if stream.max_tokens is not None and seen >= stream.max_tokens:
            return


@dataclass
class ShardInfo:
    """One shard: file name (relative to the cache folder), tokens, bytes, sha256."""

    file: str
    n_tokens: int
    bytes: int
    sha256: str


@dataclass
class CacheManifest:
    """``manifest.json`` of a token-activation cache (``complete`` once every shard is in)."""

    model_id: str
    model_fingerprint: str
    layer: int
    corpus_fingerprint: str
    dtype: str
    n_tokens: int
    d_model: int
    context_size: int
    drop_bos: bool
    max_tokens: int | None
    shards: list[ShardInfo] = field(default_factory=list)
    corpus: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    format: str = CACHE_FORMAT
    version: int = CACHE_FORMAT_VERSION
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path) -> CacheManifest:
        """Check ``d`` (read from ``path``) with the cache core; raises ``LirefError``."""
        entry = _entry(path.parent)
        d = entry.validate(d)
        try:
            out = cls(**{**d, "shards": [ShardInfo(**s) for s in d["shards"]]})
        except TypeError as exc:
            raise LirefError(f"corrupted cache manifest {path}: {exc}; delete the folder "
                             f"{path.parent} to rebuild it") from exc
        if sum(s.n_tokens for s in out.shards) != out.n_tokens:
            raise LirefError(f"corrupted cache manifest {path}: shard token counts do not sum to "
                             f"n_tokens={out.n_tokens}; delete the folder {path.parent} to "
                             f"rebuild it")
        return out


_SCHEMA = {"model_id": str, "model_fingerprint": str, "layer": int, "corpus_fingerprint": str,
           "dtype": str, "n_tokens": int, "d_model": int, "context_size": int, "drop_bos": bool,
           "max_tokens": (int, type(None)), "corpus": dict, "created": (int, float)}


def _entry(folder: str | Path) -> CacheEntry:
    return CacheEntry(folder, CACHE_FORMAT, CACHE_FORMAT_VERSION, _SCHEMA, {"n_tokens": int})


class TokenActivationCache:
    """Read side of a cache folder. Every shard read checks its size and sha256 against the
    manifest; a mismatch raises ``LirefError`` naming the file (never read silently)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entry = _entry(self.path)
        self.manifest = CacheManifest.from_dict(self.entry.read_manifest(),
                                                self.path / MANIFEST_FILENAME)
        if not self.manifest.complete:
            raise LirefError(f"token-activation cache {self.path} is incomplete "
                             f"({len(self.manifest.shards)} shards written): re-run to resume "
                             f"building it")

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def d_model(self) -> int:
        return self.manifest.d_model

    def __len__(self) -> int:
        return len(self.manifest.shards)

    def load_shard(self, i: int) -> torch.Tensor:
        """Shard ``i`` as ``[n_tokens, d_model]`` (cache dtype), verified (size + sha256)."""
        info = self.manifest.shards[i]
        acts = self.entry.read_shard(asdict(info))
        if tuple(acts.shape) != (info.n_tokens, self.d_model):
            raise LirefError(f"corrupted token-activation cache shard {self.path / info.file}: "
                             f"shape {tuple(acts.shape)}, expected ({info.n_tokens}, "
                             f"{self.d_model}); delete {self.path} to rebuild it")
        return acts

    def verify(self) -> None:
        """Check every shard (size + checksum); raises on the first bad one."""
        for i in range(len(self)):
            self.load_shard(i)

    def iter_shards(self, shuffle: bool = False, seed: int = 0) -> Iterator[torch.Tensor]:
        """Shards one at a time (optionally in a seeded random order)."""
        order = list(range(len(self)))
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(order), generator=g).tolist()
        for i in order:
            yield self.load_shard(i)

    def read_all(self, max_tokens: int | None = None) -> torch.Tensor:
        """Concatenate shards (up to ``max_tokens``) into ``[n, d]``; for small held-out sets."""
        out: list[torch.Tensor] = []
        n = 0
        for shard in self.iter_shards():
            out.append(shard)
            n += shard.shape[0]
            if max_tokens is not None and n >= max_tokens:
                break
        acts = torch.cat(out)
        return acts[:max_tokens] if max_tokens is not None else acts


def cache_key(model_fp: str, corpus_fp: str, stream: TokenStreamConfig) -> str:
    """Content address of a cache: what determines its bytes (not shard size or batch size)."""
    ident = {
        "v": CACHE_FORMAT_VERSION,
        "model": model_fp,
        "corpus": corpus_fp,
        "layer": stream.layer,
        "context_size": stream.context_size,
        "drop_bos": stream.drop_bos,
        "drops_first_position": True,  # what drop_bos means since the attention-sink fix
        "dtype": str(resolve_dtype(stream.dtype)),
        "max_tokens": stream.max_tokens,
    }
    return fingerprint(ident, length=20)


def build_token_cache(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    out_dir: str | Path,
    stream: TokenStreamConfig,
    corpus_fingerprint: str,
    corpus_description: dict[str, Any] | None = None,
) -> TokenActivationCache:
    """Extract activations of ``texts`` into the cache folder ``out_dir``, shard by shard,
    resuming after the complete shards an interrupted build listed in its manifest.

    Shards are written atomically and the manifest is rewritten after each one (``complete``
    last). Hold the entry's lock (``get_or_build_token_cache`` does) when others may build it.
    """
    (layer,) = check_layers(model, [stream.layer])
    stream = TokenStreamConfig(**{**asdict(stream), "layer": layer})
    dtype = resolve_dtype(stream.dtype)
    entry = _entry(out_dir)
    fields = dict(
        model_id=model_id(model), model_fingerprint=model_fingerprint(model), layer=layer,
        corpus_fingerprint=corpus_fingerprint, dtype=str(dtype).removeprefix("torch."),
        n_tokens=0, d_model=0, context_size=stream.context_size, drop_bos=stream.drop_bos,
        max_tokens=stream.max_tokens, corpus=dict(corpus_description or {}),
        created=time.time())
    manifest = entry.read_manifest_or_discard()
    same = manifest is not None and all(
        manifest[k] == fields[k] for k in ("model_fingerprint", "layer", "corpus_fingerprint",
                                           "dtype", "context_size", "drop_bos", "max_tokens"))
    if manifest is None or not same:
        manifest = entry.new_manifest(**fields)
    entry.clean(manifest, SHARD_GLOB)
    manifest["shards"] = entry.verified_prefix(manifest["shards"])
    manifest["n_tokens"] = done = sum(s["n_tokens"] for s in manifest["shards"])
    manifest["complete"] = False
    if done:
        log.info("resuming token-activation cache %s after %d complete shards (%d tokens)",
                 entry.folder, len(manifest["shards"]), done)
    buffer: list[torch.Tensor] = []
    buffered = 0

    def flush(n: int) -> None:
        nonlocal buffer, buffered
        acts = torch.cat(buffer)
        shard, rest = acts[:n], acts[n:]
        record = entry.write_shard(f"shard_{len(manifest['shards']):05d}.safetensors", shard)
        manifest["shards"].append({**record, "n_tokens": int(shard.shape[0])})
        manifest["n_tokens"] += int(shard.shape[0])
        manifest["d_model"] = int(shard.shape[1])
        entry.write_manifest(manifest)
        buffer = [rest] if rest.shape[0] else []
        buffered = int(rest.shape[0])

    pbar = tqdm(total=stream.max_tokens, initial=done, unit="tok", leave=False,
                desc=f"caching layer {layer} activations")
    for chunk in iter_residual_tokens(model, tokenizer, texts, stream, skip_tokens=done):
        chunk = chunk.to("cpu", dtype)
        buffer.append(chunk)
        buffered += chunk.shape[0]
        pbar.update(chunk.shape[0])
        while buffered >= stream.shard_tokens:
            flush(stream.shard_tokens)
    if buffered:
        flush(buffered)
    pbar.close()
    if manifest["n_tokens"] == 0:
        raise LirefError(f"the corpus gave no tokens at layer {layer} (all padding/BOS?)")
    manifest["complete"] = True
    entry.write_manifest(manifest)
    return TokenActivationCache(entry.folder)


def get_or_build_token_cache(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    cache_dir: str | Path,
    stream: TokenStreamConfig,
    corpus_fingerprint: str,
    corpus_description: dict[str, Any] | None = None,
) -> tuple[TokenActivationCache, bool]:
    """The cache for (model, corpus, stream settings) under ``cache_dir``; built if absent.

    Returns ``(cache, built)`` (``built``: this call computed activations). Parallel callers
    are serialised by the entry's file lock; an interrupted build is resumed from its complete
    shards; a damaged manifest is discarded with a warning and the cache rebuilt.
    """
    (layer,) = check_layers(model, [stream.layer])
    stream = TokenStreamConfig(**{**asdict(stream), "layer": layer})
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(model_fingerprint(model), corpus_fingerprint, stream)
    entry = _entry(cache_dir / key)
    with entry.lock():
        manifest = entry.read_manifest_or_discard()
        if manifest is not None and manifest["complete"]:
            try:
                cache = TokenActivationCache(entry.folder)
                log.info("reusing token-activation cache %s", entry.folder)
                return cache, False
            except LirefError as exc:  # e.g. token counts that do not add up
                log.warning("%s -- rebuilding it", exc)
                entry.discard()
        # what older builders left when killed (they built under a temporary folder name)
        remove_orphans(cache_dir, [f".{key}.partial-*"])
        cache = build_token_cache(model, tokenizer, texts, entry.folder, stream,
                                  corpus_fingerprint, corpus_description)
        log.info("cached token activations (layer %d) in %s", layer, entry.folder)
    return cache, True


class ActivationBatches(Iterator[torch.Tensor]):
    """A sae-lens data provider: ``[batch_size, d]`` batches, shuffled in a mixing buffer, and
    resumable at any batch.

    Args:
        chunks_per_epoch: ``epoch -> iterator of [n, d] chunks`` (cache shards or a model
            stream); it must give the same chunks every time it is called with an epoch.
        batch_size: tokens per batch.
        buffer_tokens: mixing-buffer size; when full, it is shuffled and half of it is emitted.
        seed: shuffling seed (the provider's own ``torch.Generator``; the global RNGs are not
            touched).
        epochs: passes over the data; ``None`` = forever (what ``SAETrainer`` wants).
        dtype: dtype of the emitted batches.

    Resuming: ``state_dict()`` records the batches emitted so far (``batches``), the shuffling
    generator's state and a sha256 of the last batch. ``load_state_dict(state)`` on a fresh
    provider of the same source and settings replays that many batches (reading and shuffling
    the data again, nothing else), then checks the generator state and the checksum: from then
    on it emits exactly the batches an uninterrupted provider would have emitted. Replaying
    costs one pass over the data already read (cheap for a token cache; forward passes for a
    model stream); saving the mixing buffer instead would cost up to ``buffer_tokens * d``
    values per checkpoint.
    """

    def __init__(
        self,
        chunks_per_epoch: Callable[[int], Iterator[torch.Tensor]],
        batch_size: int,
        buffer_tokens: int = 65536,
        seed: int = 0,
        epochs: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise LirefError(f"batch_size must be >= 1, got {batch_size}")
        self.chunks_per_epoch = chunks_per_epoch
        self.batch_size = int(batch_size)
        self.buffer_tokens = max(int(buffer_tokens), 2 * self.batch_size)
        self.seed = int(seed)
        self.epochs = epochs
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(self.seed)
        #: batches emitted so far (replayed ones included)
        self.batches = 0
        self._last: torch.Tensor | None = None
        self._batches = self._generate()

    def __iter__(self) -> ActivationBatches:
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self._batches)
        self.batches += 1
        self._last = batch
        return batch

    def _generate(self) -> Iterator[torch.Tensor]:
        g, batch_size = self.generator, self.batch_size
        pending: list[torch.Tensor] = []
        n_pending = 0
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            got_any = False
            for chunk in self.chunks_per_epoch(epoch):
                got_any = got_any or chunk.shape[0] > 0
                pending.append(chunk.to(self.dtype))
                n_pending += chunk.shape[0]
                if n_pending >= self.buffer_tokens:
                    buf = torch.cat(pending)
                    buf = buf[torch.randperm(buf.shape[0], generator=g)]
                    n_out = (buf.shape[0] // 2 // batch_size) * batch_size
                    for i in range(0, n_out, batch_size):
                        yield buf[i : i + batch_size]
                    pending, n_pending = [buf[n_out:]], buf.shape[0] - n_out
            if not got_any:
                raise LirefError("the activation source is empty: no tokens to train on")
            epoch += 1
        if n_pending:
            buf = torch.cat(pending)
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            for i in range(0, buf.shape[0], batch_size):
                yield buf[i : i + batch_size]

    def _settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "buffer_tokens": self.buffer_tokens,
                "seed": self.seed, "epochs": self.epochs, "dtype": str(self.dtype)}

    def state_dict(self) -> dict[str, Any]:
        """``{"batches", "last_batch_sha256", "settings"}`` (JSON-able) plus ``"generator"``
        (the shuffling generator's ``uint8`` state tensor): where the provider is."""
        last = "" if self._last is None else _tensor_sha256(self._last)
        return {"batches": self.batches, "last_batch_sha256": last, "settings": self._settings(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Move this fresh provider to ``state`` (from ``state_dict()`` of a provider of the same
        source and settings) by replaying its batches; raises ``LirefError`` when the replay
        does not end where ``state`` was taken (another source, or a non-deterministic one)."""
        if self.batches:
            raise LirefError(f"load_state_dict needs a fresh provider; this one has already "
                             f"emitted {self.batches} batches")
        settings = {k: state.get("settings", {}).get(k) for k in self._settings()}
        if settings != self._settings():
            raise LirefError(f"cannot resume a data provider with settings {settings} on one "
                             f"with settings {self._settings()}")
        n = int(state["batches"])
        try:
            for _ in range(n):
                next(self)
        except StopIteration:
            raise LirefError(f"cannot resume the data provider at batch {n}: its source ends "
                             f"after {self.batches} batches") from None
        last = "" if self._last is None else _tensor_sha256(self._last)
        same_rng = torch.equal(self.generator.get_state(), state["generator"].to(torch.uint8))
        if last != state["last_batch_sha256"] or not same_rng:
            what = "generator state" if last == state["last_batch_sha256"] else "last batch"
            raise LirefError(f"the data provider does not replay the same batches: after {n} "
                             f"batches its {what} differs from the saved one (its source "
                             f"changed, or is not deterministic)")


def _tensor_sha256(t: torch.Tensor) -> str:
    """Hex sha256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def activation_batches(
    chunks_per_epoch: Callable[[int], Iterator[torch.Tensor]],
    batch_size: int,
    buffer_tokens: int = 65536,
    seed: int = 0,
    epochs: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> ActivationBatches:
    """A resumable sae-lens data provider (``ActivationBatches``, which documents the args):
    ``[batch_size, d]`` batches, shuffled in a mixing buffer."""
    return ActivationBatches(chunks_per_epoch, batch_size, buffer_tokens, seed, epochs, dtype)
