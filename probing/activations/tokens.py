"""Token-level residual activations: streamed from a model, or cached on disk in shards.

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``), read with
``probing.hooks.forward_residual``. Padding tokens (and optionally BOS) are dropped, so a token
stream is a sequence of ``[n_tokens, d_model]`` chunks.

The cache is a folder of safetensors shards (``shard_00000.safetensors`` = ``{"activations":
[n, d]}``) plus ``manifest.json`` (model id and fingerprint, layer, corpus fingerprint, dtype,
n_tokens, d_model, and per shard its token count, byte size and sha256). It lives in a
content-addressed folder ``<cache_dir>/<key>`` so that the SAEs of a sweep share one extraction;
a file lock serialises builders and the folder appears by atomic rename only when complete.
Memory is bounded by one shard (write and read), whatever the token count.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from probing.activations.extract import pad_right
from probing.errors import LirefError
from probing.fingerprint import model_fingerprint
from probing.hooks import check_layers, forward_residual
from probing.io import atomic_write_bytes, read_json, write_json
from probing.models import model_id, resolve_dtype

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "MANIFEST_FILENAME",
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

CACHE_FORMAT_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
SHARD_KEY = "activations"


@dataclass
class TokenStreamConfig:
    """How text becomes token activations.

    Args:
        layer: decoder block whose output is read (negative counts from the end).
        context_size: tokens per sequence; longer documents are split into windows.
        batch_size: sequences per forward pass.
        drop_bos: drop BOS tokens (their residual norm is atypical) from the stream.
        dtype: storage dtype of cached activations (``float32``, ``bfloat16``, ``float16``).
        shard_tokens: tokens per cache shard (memory bound of reading and writing).
        max_tokens: stop after this many tokens (``None`` = the whole corpus).
    """

    layer: int
    context_size: int = 128
    batch_size: int = 32
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
    """``[B, T]`` bool: the positions that belong to the token stream (no padding, no BOS)."""
    keep = attention_mask.bool()
    if drop_bos and bos_id is not None:
        keep = keep & (input_ids != bos_id)
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
) -> Iterator[torch.Tensor]:
    """Residual activations at ``stream.layer``, one ``[n_tokens, d_model]`` chunk per forward
    pass (padding and optionally BOS dropped), in the model's dtype; stops at ``max_tokens``."""
    (layer,) = check_layers(model, [stream.layer])
    bos = getattr(tokenizer, "bos_token_id", None)
    seen = 0
    for ids, mask in text_batches(tokenizer, texts, stream.context_size, stream.batch_size):
        acts = forward_residual(model, ids, mask, [layer], early_exit=True)[layer]
        keep = token_mask(ids, mask, bos, stream.drop_bos).to(acts.device)
        out = acts[keep]
        if stream.max_tokens is not None:
            out = out[: stream.max_tokens - seen]
        if out.shape[0]:
            seen += out.shape[0]
            yield out
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
    """``manifest.json`` of a token-activation cache."""

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
    format_version: int = CACHE_FORMAT_VERSION
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path) -> CacheManifest:
        try:
            shards = [ShardInfo(**s) for s in d["shards"]]
            out = cls(**{**d, "shards": shards})
        except (KeyError, TypeError) as exc:
            raise LirefError(f"corrupted cache manifest {path}: {exc}") from exc
        if out.format_version != CACHE_FORMAT_VERSION:
            raise LirefError(f"cache manifest {path} has format {out.format_version}; this liref "
                             f"reads format {CACHE_FORMAT_VERSION}: delete the folder to rebuild")
        if sum(s.n_tokens for s in shards) != out.n_tokens:
            raise LirefError(f"corrupted cache manifest {path}: shard token counts do not sum to "
                             f"n_tokens={out.n_tokens}")
        return out


class TokenActivationCache:
    """Read side of a cache folder. Every shard read checks its size and sha256 against the
    manifest; a mismatch raises ``LirefError`` naming the file (never read silently)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = CacheManifest.from_dict(read_json(self.path / MANIFEST_FILENAME),
                                                self.path / MANIFEST_FILENAME)

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def d_model(self) -> int:
        return self.manifest.d_model

    def __len__(self) -> int:
        return len(self.manifest.shards)

    def _bad(self, file: Path, why: str) -> LirefError:
        return LirefError(f"corrupted token-activation cache shard {file}: {why}; delete "
                          f"{self.path} to rebuild it")

    def load_shard(self, i: int) -> torch.Tensor:
        """Shard ``i`` as ``[n_tokens, d_model]`` (cache dtype), verified."""
        info = self.manifest.shards[i]
        file = self.path / info.file
        if not file.is_file():
            raise self._bad(file, "file is missing")
        size = file.stat().st_size
        if size != info.bytes:
            raise self._bad(file, f"size {size} bytes, manifest says {info.bytes} (truncated?)")
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise self._bad(file, "sha256 checksum does not match the manifest")
        from safetensors.torch import load

        try:
            acts = load(data)[SHARD_KEY]
        except Exception as exc:  # noqa: BLE001 - checksum matched, so the writer was wrong
            raise self._bad(file, f"unreadable safetensors ({exc})") from exc
        if tuple(acts.shape) != (info.n_tokens, self.d_model):
            raise self._bad(file, f"shape {tuple(acts.shape)}, expected "
                                  f"({info.n_tokens}, {self.d_model})")
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
        "dtype": str(resolve_dtype(stream.dtype)),
        "max_tokens": stream.max_tokens,
    }
    blob = repr(sorted(ident.items())).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


def _shard_bytes(acts: torch.Tensor) -> bytes:
    from safetensors.torch import save

    return save({SHARD_KEY: acts.contiguous()})


def build_token_cache(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    out_dir: str | Path,
    stream: TokenStreamConfig,
    corpus_fingerprint: str,
    corpus_description: dict[str, Any] | None = None,
) -> TokenActivationCache:
    """Extract activations of ``texts`` into ``out_dir`` (must not exist yet), shard by shard.

    Shards are written atomically; the manifest is written last, so a folder without a
    manifest is an incomplete build.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    (layer,) = check_layers(model, [stream.layer])
    dtype = resolve_dtype(stream.dtype)
    shards: list[ShardInfo] = []
    buffer: list[torch.Tensor] = []
    buffered = 0
    d_model = 0

    def flush(n: int) -> None:
        nonlocal buffer, buffered
        acts = torch.cat(buffer)
        shard, rest = acts[:n], acts[n:]
        data = _shard_bytes(shard)
        name = f"shard_{len(shards):05d}.safetensors"
        atomic_write_bytes(out_dir / name, data)
        shards.append(ShardInfo(name, int(shard.shape[0]), len(data),
                                hashlib.sha256(data).hexdigest()))
        buffer = [rest] if rest.shape[0] else []
        buffered = int(rest.shape[0])

    pbar = tqdm(total=stream.max_tokens, desc=f"caching layer {layer} activations",
                unit="tok", leave=False)
    for chunk in iter_residual_tokens(model, tokenizer, texts, stream):
        chunk = chunk.to("cpu", dtype)
        d_model = int(chunk.shape[1])
        buffer.append(chunk)
        buffered += chunk.shape[0]
        pbar.update(chunk.shape[0])
        while buffered >= stream.shard_tokens:
            flush(stream.shard_tokens)
    if buffered:
        flush(buffered)
    pbar.close()
    n_tokens = sum(s.n_tokens for s in shards)
    if n_tokens == 0:
        raise LirefError(f"the corpus gave no tokens at layer {layer} (all padding/BOS?)")
    manifest = CacheManifest(
        model_id=model_id(model), model_fingerprint=model_fingerprint(model), layer=layer,
        corpus_fingerprint=corpus_fingerprint, dtype=str(dtype).removeprefix("torch."),
        n_tokens=n_tokens, d_model=d_model, context_size=stream.context_size,
        drop_bos=stream.drop_bos, max_tokens=stream.max_tokens, shards=shards,
        corpus=dict(corpus_description or {}), created=time.time(),
    )
    write_json(out_dir / MANIFEST_FILENAME, manifest.to_dict())
    return TokenActivationCache(out_dir)


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

    Returns ``(cache, built)``. Parallel callers are serialised by a file lock; the folder is
    built under a temporary name and renamed into place, so a reader never sees a partial cache.
    """
    from filelock import FileLock

    (layer,) = check_layers(model, [stream.layer])
    stream = TokenStreamConfig(**{**asdict(stream), "layer": layer})
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(model_fingerprint(model), corpus_fingerprint, stream)
    final = cache_dir / key
    with FileLock(str(cache_dir / f"{key}.lock")):
        if (final / MANIFEST_FILENAME).is_file():
            log.info("reusing token-activation cache %s", final)
            return TokenActivationCache(final), False
        if final.exists():  # an older, incomplete folder (no manifest): never trust it
            shutil.rmtree(final)
        for stale in cache_dir.glob(f".{key}.partial-*"):  # a crashed builder's leftovers
            shutil.rmtree(stale, ignore_errors=True)  # (we hold the lock: nobody else builds)
        tmp = cache_dir / f".{key}.partial-{os.getpid()}"
        try:
            build_token_cache(model, tokenizer, texts, tmp, stream, corpus_fingerprint,
                              corpus_description)
            os.replace(tmp, final)
            log.info("cached token activations (layer %d) in %s", layer, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return TokenActivationCache(final), True


def activation_batches(
    chunks_per_epoch: Callable[[int], Iterator[torch.Tensor]],
    batch_size: int,
    buffer_tokens: int = 65536,
    seed: int = 0,
    epochs: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[torch.Tensor]:
    """A sae-lens data provider: ``[batch_size, d]`` batches, shuffled in a mixing buffer.

    Args:
        chunks_per_epoch: ``epoch -> iterator of [n, d] chunks`` (cache shards or a model stream).
        batch_size: tokens per batch.
        buffer_tokens: mixing-buffer size; when full, it is shuffled and half of it is emitted.
        seed: shuffling seed.
        epochs: passes over the data; ``None`` = forever (what ``SAETrainer`` wants).
    """
    if batch_size < 1:
        raise LirefError(f"batch_size must be >= 1, got {batch_size}")
    buffer_tokens = max(int(buffer_tokens), 2 * batch_size)
    g = torch.Generator().manual_seed(seed)
    pending: list[torch.Tensor] = []
    n_pending = 0
    epoch = 0
    while epochs is None or epoch < epochs:
        got_any = False
        for chunk in chunks_per_epoch(epoch):
            got_any = got_any or chunk.shape[0] > 0
            pending.append(chunk.to(dtype))
            n_pending += chunk.shape[0]
            if n_pending >= buffer_tokens:
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
