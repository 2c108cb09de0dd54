"""Throughput on the built-in real models (``smollm2-135m``, ``gemma3-270m`` where installed):
liref's token-activation stream at the SAE's block vs a bare forward of the same blocks, and
SAE training from liref's token cache vs from tensors in memory, timed interleaved in one
process.

    python -m benchmarks.real_model_throughput [--models smollm2-135m gemma3-270m]
        [--tokens 4096] [--repeats 3] [--sae-steps 30] [--block B] [--quick]

For each model (loaded with ``probing.load_model``; a model whose load raises ``LirefError``,
e.g. a wheel that is not installed or a name this liref version does not know, is skipped with
a note):

1. Extraction at block ``b``: the committed SAE's block (``probing.sae.builtin``,
   ``liref_sae.json`` ``layer``) when one exists, else ``--block``, else
   ``round(0.6 * n_blocks)``. Texts: the first documents of the local benchmark corpus
   (``conf/corpus/benchmarks_local.yaml``: ``$LIREF_DATA`` or ``../shared/data``) up to
   ``--tokens`` stream tokens (no padding, no BOS); context 128 and 64 sequences a forward
   pass (``TokenStreamConfig``'s defaults, what the SAE stage uses).

   - ``liref_stream``: ``iter_residual_tokens`` (tokenizing, batching, a hook on block ``b``
     and early exit after it, padding/BOS dropped) consumed to the end.
   - ``bare_blocks``: the same batches (tokenized beforehand) through the model's decoder
     stack truncated to blocks ``0..b`` (the block list swapped for its first ``b + 1`` blocks,
     restored after), ``use_cache=False``, no hooks: the floor of any extraction at block b.
   - ``full_forward``: the whole model with its LM head (logits for every position), what
     extraction would cost without early exit.

   Ratios: liref_stream / bare_blocks (goal <= 1.10: liref's stream costs at most 10 % over
   running the same blocks bare) and full_forward / liref_stream (what early exit saves).
2. SAE training: a TopK SAE with the committed SAE's settings (``conf/sae_<family>.yaml``'s
   ``sae`` mapping when present: SmolLM2's is 4 x d_model latents, k 64, batch 4096) trained
   for ``--sae-steps`` steps with ``probing.sae.training.train_sae``, on batches from a token
   cache built beforehand (``get_or_build_token_cache`` over the same texts, then
   ``activation_batches`` over its shards, shuffled, as ``train.sae`` does) vs on the same
   activations held in memory (a random permutation per epoch, sliced into batches). Goal:
   cache tokens/s / in-memory tokens/s >= 0.9.

``--quick``: a tiny random Llama (width 64, 4 blocks) on fixed random-token prompts, seconds,
no wheels or data needed (a smoke test whose figures mean nothing). Writes
``benchmarks/results/real_model_throughput.json``: the common schema with every time keyed
``<model>/<method>``, plus ``models`` (one section per model: settings, tokens/s, ratios, the
activation check) and ``skipped`` (model -> why).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    Goal,
    fixed_prompts,
    llama_config,
    medians,
    parse_with_quick,
    print_goals,
    print_table,
    random_llama,
    run_interleaved,
    spreads,
    word_tokenizer,
    write_result,
)
from probing.activations.tokens import (
    TokenStreamConfig,
    activation_batches,
    get_or_build_token_cache,
    iter_residual_tokens,
    text_batches,
    token_chunks,
)
from probing.errors import LirefError
from probing.model.blocks import find_blocks, num_layers
from probing.model.hooks import decoder_stack
from probing.sae.training import SAETrainConfig, train_sae

log = logging.getLogger("liref.bench.real_models")

REPO = Path(__file__).resolve().parents[1]
NAME = "real_model_throughput"
TINY = "tiny-llama"
DEFAULT_MODELS = ["smollm2-135m", "gemma3-270m"]
#: the committed SAEs' settings when no ``conf/sae_<family>.yaml`` exists
DEFAULT_SAE = {"architecture": "topk", "expansion_factor": 4, "k": 64, "batch_size": 4096}
LIREF_GOAL = 1.10
SAE_GOAL = 0.9

QUICK = dict(models=[TINY], tokens=384, repeats=2, sae_steps=3, sae_batch=256, sae_repeats=1,
             context=32, batch_size=8, shuffle_buffer=512)


# ---- models, blocks, texts ----


def tiny_llama() -> tuple[nn.Module, Any, list[str]]:
    """The quick mode's model: a seeded random Llama (width 64, 4 blocks, vocab 1000), its
    word-level tokenizer and 48 fixed random-token prompts of 24 tokens."""
    vocab = 1000
    model = random_llama(llama_config(width=64, layers=4, vocab=vocab, heads=4, context=64))
    texts, _ = fixed_prompts(48, 24, vocab)
    return model, word_tokenizer(vocab), texts


def check_name(name: str) -> None:
    """``LirefError`` unless ``name`` is a built-in model name of this liref version."""
    from probing.model.loading import builtin_names

    if name not in builtin_names():
        raise LirefError(f"{name!r} is not a built-in model name of this liref version "
                         f"(built-in: {builtin_names()})")


def load(name: str, cache_dir: str | None) -> tuple[nn.Module, Any]:
    """A built-in model by name; ``LirefError`` (with its message) when it cannot be loaded."""
    from probing.model.loading import load_model

    check_name(name)
    return load_model(name, cache_dir=cache_dir)


def committed_sae(name: str) -> dict[str, Any] | None:
    """``liref_sae.json`` of the SAE committed for built-in model ``name``, else ``None``
    (no ``probing.sae.builtin`` in this version, or no SAE for that model)."""
    try:
        from probing.sae.builtin import builtin_sae_dir
    except ImportError:
        return None
    try:
        path = builtin_sae_dir(name) / "liref_sae.json"
    except LirefError:
        return None
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return {**info, "path": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)}


def choose_block(name: str, n_blocks: int, override: int | None) -> tuple[int, str]:
    """``(block, where it came from)``: the committed SAE's block, else ``--block``, else
    ``round(0.6 * n_blocks)``."""
    info = committed_sae(name)
    if info is not None and "layer" in info:
        return int(info["layer"]), f"the committed SAE's block ({info['path']})"
    if override is not None:
        if not 0 <= override < n_blocks:
            raise LirefError(f"--block {override} is out of range for {name!r} "
                             f"(blocks 0..{n_blocks - 1})")
        return override, "--block"
    return min(round(0.6 * n_blocks), n_blocks - 1), "round(0.6 * n_blocks): no committed SAE"


def data_dir(given: str | None) -> Path:
    """``--data``, else ``$LIREF_DATA``, else ``../shared/data`` beside the repository."""
    return Path(given or os.environ.get("LIREF_DATA") or REPO.parent / "shared" / "data")


def benchmark_question_sets(folder: Path) -> list[dict[str, Any]]:
    """``conf/corpus/benchmarks_local.yaml``'s question sets with their files under ``folder``."""
    import yaml

    spec = yaml.safe_load((REPO / "conf" / "corpus" / "benchmarks_local.yaml").read_text())
    sets = []
    for entry in spec["question_sets"]:
        rel = str(entry["path"]).rsplit("}/", 1)[-1]  # after "${oc.env:LIREF_DATA,...}/"
        sets.append({**entry, "path": str(folder / rel)})
    return sets


def benchmark_texts(folder: Path) -> tuple[list[str], str]:
    """The local benchmark corpus's documents (shuffled, seed 0) and its fingerprint;
    ``LirefError`` naming the missing file when the data are absent."""
    from probing.activations.corpus import load_corpus

    sets = benchmark_question_sets(folder)
    missing = [s["path"] for s in sets if not Path(s["path"]).is_file()]
    if missing:
        raise LirefError(f"the local benchmark data are absent ({missing[0]} not found; set "
                         f"LIREF_DATA or --data to the folder of ../shared/data)")
    corpus = load_corpus("benchmarks", question_sets=sets, seed=0)
    return corpus.texts, corpus.fingerprint


def stream_count(tok: Any, text: str, context: int, drop_bos: bool = True) -> int:
    """Tokens ``text`` adds to the token stream (windows of ``context``; with ``drop_bos`` each
    window's first position, BOS or attention sink, is dropped: ``token_mask``)."""
    return sum(len(w) - int(drop_bos) for w in token_chunks(tok, [text], context))


def take_tokens(tok: Any, texts: Sequence[str], n_tokens: int, context: int) -> list[str]:
    """The first documents whose stream holds at least ``n_tokens`` tokens (all of them if
    fewer)."""
    out, n = [], 0
    for text in texts:
        if n >= n_tokens:
            break
        out.append(text)
        n += stream_count(tok, text, context)
    return out


# ---- extraction ----


@contextmanager
def truncated(model: nn.Module, n_blocks: int) -> Iterator[nn.Module]:
    """The decoder stack with only its first ``n_blocks`` blocks (the block list swapped,
    restored on exit)."""
    dotted, blocks = find_blocks(model)
    parent_path, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.ModuleList(list(blocks)[:n_blocks]))
    try:
        yield decoder_stack(model)
    finally:
        setattr(parent, attr, blocks)


def extraction_methods(model: nn.Module, tok: Any, texts: list[str], stream: TokenStreamConfig,
                       batches: list[tuple[torch.Tensor, torch.Tensor]],
                       counts: dict[str, int]) -> dict[str, Callable[[], None]]:
    block = stream.layer

    def liref_stream() -> None:
        counts["liref_stream"] = sum(int(c.shape[0]) for c in
                                     iter_residual_tokens(model, tok, texts, stream))

    @torch.no_grad()
    def bare_blocks() -> None:
        with truncated(model, block + 1) as stack:
            for ids, mask in batches:
                stack(input_ids=ids, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def full_forward() -> None:
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    return {"liref_stream": liref_stream, "bare_blocks": bare_blocks,
            "full_forward": full_forward}


@torch.no_grad()
def stream_check(model: nn.Module, tok: Any, texts: list[str], stream: TokenStreamConfig,
                 batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Max abs difference, on the first batch, between liref's stream and HF's
    ``hidden_states[block + 1]`` at the stream's positions (no padding, no BOS)."""
    from probing.activations.tokens import token_mask

    ids, mask = batch
    first = next(iter_residual_tokens(model, tok, texts, stream))
    hs = model(input_ids=ids, attention_mask=mask, use_cache=False,
               output_hidden_states=True).hidden_states[stream.layer + 1]
    keep = token_mask(ids, mask, getattr(tok, "bos_token_id", None), stream.drop_bos)
    ref = hs[keep]
    if ref.shape != first.shape:
        return float("inf")
    return float((first.float() - ref.float()).abs().max())


# ---- SAE training ----


def sae_config(name: str, steps: int, batch: int | None, conf_dir: Path = REPO / "conf"
               ) -> tuple[SAETrainConfig, str]:
    """The committed SAE's training settings (``conf/sae_<family>.yaml``'s ``sae`` mapping,
    else ``DEFAULT_SAE``) for ``steps`` steps, no held-out evaluation. The learning-rate
    warm-up and decay are shortened to fit the run (half and a quarter of it at most; the
    speed of a step does not depend on them)."""
    import yaml

    path = conf_dir / f"sae_{name.split('-')[0]}.yaml"
    source, settings = "defaults (no conf file)", dict(DEFAULT_SAE)
    if path.is_file():
        sae = (yaml.safe_load(path.read_text()) or {}).get("sae") or {}
        known = {f.name for f in fields(SAETrainConfig)}
        settings = {**settings, **{k: v for k, v in sae.items() if k in known}}
        source = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    if batch is not None:
        settings["batch_size"] = batch
    settings.update(training_tokens=steps * int(settings["batch_size"]), eval_every=0,
                    log_every=max(steps, 1), device="cpu",
                    lr_warm_up_steps=min(int(settings.get("lr_warm_up_steps", 0)), steps // 2),
                    lr_decay_steps=min(int(settings.get("lr_decay_steps", 0)), steps // 4))
    return SAETrainConfig.from_dict(settings), source


def memory_batches(acts: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Forever: ``[batch_size, d]`` batches of ``acts`` (``[n, d]``, in memory), one random
    permutation per epoch (the data repeated when fewer than a batch)."""
    if acts.shape[0] < batch_size:
        acts = acts.repeat(-(-batch_size // acts.shape[0]), 1)
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=g)
        for i in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]]


def sae_methods(cache: Any, acts: torch.Tensor, cfg: SAETrainConfig, shuffle_buffer: int
                ) -> dict[str, Callable[[], None]]:
    d = int(acts.shape[1])

    def sae_from_cache() -> None:
        def chunks(epoch: int) -> Iterator[torch.Tensor]:
            return cache.iter_shards(shuffle=True, seed=epoch)

        train_sae(activation_batches(chunks, cfg.batch_size, shuffle_buffer, seed=0), d, cfg,
                  seed=0)

    def sae_in_memory() -> None:
        train_sae(memory_batches(acts, cfg.batch_size, seed=0), d, cfg, seed=0)

    return {"sae_from_cache": sae_from_cache, "sae_in_memory": sae_in_memory}


# ---- one model ----


def bench_model(name: str, model: nn.Module, tok: Any, texts: list[str], corpus_fp: str,
                args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any],
                                                             dict[str, list[float]],
                                                             list[Goal]]:
    """Time one model: ``(section, times, goals)``."""
    n_blocks = num_layers(model)
    block, block_source = choose_block(name, n_blocks, args.block)
    stream = TokenStreamConfig(layer=block, context_size=args.context, batch_size=args.batch_size)
    texts = take_tokens(tok, texts, args.tokens, args.context)
    batches = list(text_batches(tok, texts, args.context, args.batch_size))
    positions = sum(int(m.sum()) for _, m in batches)
    padded = sum(int(m.numel()) for _, m in batches)
    counts: dict[str, int] = {}
    check = stream_check(model, tok, texts, stream, batches[0])

    methods = extraction_methods(model, tok, texts, stream, batches, counts)
    # warm-up on a few documents, not timed (a full warm-up would cost a whole round)
    warm = extraction_methods(model, tok, texts[:4], stream,
                              list(text_batches(tok, texts[:4], args.context, args.batch_size)),
                              {})
    for method in warm.values():
        method()
    times = run_interleaved(methods, args.repeats, warmup=False)
    n_stream = counts["liref_stream"]

    cfg, sae_source = sae_config(name, args.sae_steps, args.sae_batch)
    t0 = time.perf_counter()
    cache, _built = get_or_build_token_cache(model, tok, texts, tmp / f"cache-{name}", stream,
                                             corpus_fp)
    cache_s = time.perf_counter() - t0
    acts = cache.read_all().float()
    d = int(acts.shape[1])
    sae_fns = sae_methods(cache, acts, cfg, args.shuffle_buffer)
    one_step = SAETrainConfig.from_dict({**asdict(cfg), "training_tokens": cfg.batch_size})
    train_sae(memory_batches(acts, cfg.batch_size), d, one_step, seed=0)  # warm-up (imports)
    sae_times = run_interleaved(sae_fns, args.sae_repeats, warmup=False)
    times.update(sae_times)

    med = medians(times)
    sae_tokens = cfg.total_steps * cfg.batch_size
    tps = {k: n_stream / med[k] for k in ("liref_stream", "bare_blocks", "full_forward")}
    tps.update({k: sae_tokens / med[k] for k in sae_times})
    tps["cache_build"] = cache.n_tokens / cache_s
    ratios = {
        "liref_stream/bare_blocks": med["liref_stream"] / med["bare_blocks"],
        "full_forward/liref_stream": med["full_forward"] / med["liref_stream"],
        "bare_blocks/full_forward": med["bare_blocks"] / med["full_forward"],
        "sae_from_cache/sae_in_memory_tokens_per_s":
            tps["sae_from_cache"] / tps["sae_in_memory"],
    }
    goals = [Goal(f"{name}: liref stream / bare blocks 0..{block}",
                  ratios["liref_stream/bare_blocks"], LIREF_GOAL, True),
             Goal(f"{name}: SAE tokens/s from cache / in memory",
                  ratios["sae_from_cache/sae_in_memory_tokens_per_s"], SAE_GOAL, False)]
    section = {
        "settings": {
            "model": name, "n_blocks": n_blocks, "block": block, "block_source": block_source,
            "d_model": d, "texts": len(texts), "stream_tokens": n_stream,
            "positions_without_padding": positions, "padded_positions": padded,
            "context_size": args.context, "batch_size_sequences": args.batch_size,
            "drop_bos": stream.drop_bos, "repeats": args.repeats,
            "sae": {**{k: v for k, v in asdict(cfg).items()
                       if k in ("architecture", "expansion_factor", "k", "batch_size", "lr",
                                "lr_scheduler", "lr_warm_up_steps", "normalize_activations",
                                "n_batches_for_norm_estimate", "aux_loss_coefficient")},
                    "d_sae": cfg.width(d), "steps": cfg.total_steps,
                    "training_tokens": sae_tokens, "settings_from": sae_source,
                    "cache_tokens": cache.n_tokens, "cache_shards": len(cache),
                    "shuffle_buffer": args.shuffle_buffer, "repeats": args.sae_repeats},
            "committed_sae": committed_sae(name),
        },
        "tokens_per_s_median": tps,
        "ratios": ratios,
        "cache_build_s": cache_s,
        "checks": {"max_abs_diff_liref_stream_vs_hf_hidden_states_first_batch": check},
    }
    return section, times, goals


# ---- main ----


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS,
                    help=f"built-in model names ({TINY!r}: the quick mode's random Llama)")
    ap.add_argument("--tokens", type=int, default=4096, help="stream tokens through the blocks")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved extraction rounds")
    ap.add_argument("--block", type=int, default=None,
                    help="block when no committed SAE exists (default round(0.6 * n_blocks))")
    ap.add_argument("--context", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    ap.add_argument("--sae-steps", type=int, default=30)
    ap.add_argument("--sae-batch", type=int, default=None,
                    help="SAE batch (default: the committed SAE's, 4096)")
    ap.add_argument("--sae-repeats", type=int, default=1, help="runs of each SAE data path")
    ap.add_argument("--shuffle-buffer", type=int, default=65536,
                    help="mixing buffer of the cache's data provider (train.sae's default)")
    ap.add_argument("--data", default=None, help="the local benchmark files (../shared/data)")
    ap.add_argument("--cache-dir", default=None,
                    help="where GGUF conversions live (default $LIREF_CACHE or ./.cache/liref)")
    return parse_with_quick(ap, argv, QUICK, "a tiny random Llama (smoke test, seconds)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {}
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    sections: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    corpus: tuple[list[str], str] | None = None
    data_note: str | None = None
    with tempfile.TemporaryDirectory(prefix="liref-bench-real-") as tmp_s:
        for name in args.models:
            try:
                if name == TINY:
                    model, tok, texts = tiny_llama()
                    corpus_fp = "tiny-llama-prompts"
                else:
                    check_name(name)
                    if corpus is None and data_note is None:
                        try:
                            corpus = benchmark_texts(data_dir(args.data))
                        except LirefError as exc:
                            data_note = str(exc)
                    if corpus is None:
                        raise LirefError(str(data_note))
                    model, tok = load(name, args.cache_dir)
                    texts, corpus_fp = corpus
            except LirefError as exc:
                skipped[name] = f"skipped: {exc}"
                print(f"== {name}: {skipped[name]}", flush=True)
                continue
            print(f"== {name}", flush=True)
            section, model_times, model_goals = bench_model(name, model, tok, texts, corpus_fp,
                                                            args, Path(tmp_s))
            del model
            sections[name] = section
            times.update({f"{name}/{k}": v for k, v in model_times.items()})
            ratios.update({f"{name}/{k}": v for k, v in section["ratios"].items()})
            goals += model_goals
            report(name, section, model_times, model_goals)
    settings = {"models": args.models, "tokens": args.tokens, "repeats": args.repeats,
                "sae_steps": args.sae_steps, "sae_repeats": args.sae_repeats,
                "torch_threads": args.threads, "quick": args.quick,
                "order": "per model: extraction methods interleaved (order rotating per round, "
                         "a warm-up on 4 documents first), then the two SAE data paths "
                         "interleaved (a one-step warm-up first)"}
    return write_result(NAME, settings, times, ratios, goals, args.out, models=sections,
                        skipped=skipped)


def report(name: str, section: dict[str, Any], times: dict[str, list[float]],
           goals: Sequence[Goal]) -> None:
    s = section["settings"]
    med, sp, tps = medians(times), spreads(times), section["tokens_per_s_median"]
    rows = [(m, med[m], sp[m]["min"], sp[m]["max"], f"{tps[m]:,.0f} tok/s") for m in med]
    print_table(f"{name}: block {s['block']} of {s['n_blocks']} ({s['block_source']}); "
                f"{s['stream_tokens']} stream tokens, context {s['context_size']}, batch "
                f"{s['batch_size_sequences']}; SAE {s['sae']['architecture']} d_sae "
                f"{s['sae']['d_sae']} k {s['sae']['k']}, {s['sae']['steps']} steps of "
                f"{s['sae']['batch_size']}", rows)
    print(f"  cache build: {tps['cache_build']:,.0f} tok/s; early exit saves "
          f"{section['ratios']['full_forward/liref_stream']:.2f}x over the full forward")
    for key, value in section["checks"].items():
        print(f"  {key}: {value:.3g}")
    print_goals(goals)


if __name__ == "__main__":
    main()
