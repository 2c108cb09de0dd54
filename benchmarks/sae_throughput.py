"""SAE training throughput: liref (sae-lens ``SAETrainer`` fed from our token-activation cache)
vs sae-lens's own ``LanguageModelSAETrainingRunner`` (LLM forward passes feeding its activation
store), same model, layer, corpus, SAE architecture and settings, in one process.

    python -m benchmarks.sae_throughput [--model organism] [--tokens 400000] [--runs 3] [--quick]

``--model organism`` uses the committed organism when ``probing/organism/checkpoint`` exists;
otherwise (or with ``--model random``) a randomly initialised Llama of the organism's shape.
Reported: tokens/s of SAE training for liref from a warm cache (what every SAE of a sweep after
the first gets), liref from a cold cache (extraction of exactly the trained tokens + training),
and the sae-lens runner; the ratios liref/sae-lens; and the speed-up of a 4-SAE sweep (one
extraction + 4 trainings vs 4 runner runs). Each side runs ``--runs`` times (default 3),
interleaved (the side that goes first alternates); every figure is the median over runs and the
headline (goal >= 1.5) is median warm-cache tokens/s over median sae-lens tokens/s. torch runs
single-threaded for both (on a shared 2-core machine two threads are slower). Writes
``benchmarks/results/sae_throughput.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Goal, parse_with_quick, print_goals, spreads, write_result
from probing.activations.corpus import load_corpus
from probing.activations.tokens import (
    TokenStreamConfig,
    activation_batches,
    get_or_build_token_cache,
)
from probing.model.blocks import num_layers
from probing.model.loading import load_model
from probing.sae.training import SAETrainConfig, train_sae

log = logging.getLogger("liref.bench.sae")
ORGANISM = Path(__file__).resolve().parents[1] / "probing" / "organism" / "checkpoint"


def _random_llama(folder: Path) -> str:
    """An untrained organism saved in ``folder``: a Llama of the organism's default shape with
    its tokenizer, randomly initialised (seed 0)."""
    from probing.organism.config import OrganismConfig
    from probing.organism.corpus import Corpus
    from probing.organism.store import save_checkpoint
    from probing.organism.tokenizer import vocab_of
    from probing.organism.training import build_model

    cfg = OrganismConfig()
    corpus = Corpus(cfg.corpus, cfg.seed)
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg, len(vocab_of(corpus.vocabulary))), corpus, cfg, folder)
    return str(folder)


def _model_path(choice: str, tmp: Path) -> tuple[str, str]:
    if choice == "organism" and (ORGANISM / "config.json").is_file():
        return str(ORGANISM), "organism"
    if choice in ("organism", "random"):
        return _random_llama(tmp / "random-llama"), "random llama (organism shape)"
    return choice, choice


def run_liref(model: Any, tok: Any, texts: list[str], layer: int, cfg: SAETrainConfig,
              cache_dir: Path, context: int) -> dict[str, float]:
    stream = TokenStreamConfig(layer=layer, context_size=context, batch_size=64, drop_bos=True,
                               max_tokens=cfg.training_tokens)  # extract what is trained on
    t0 = time.perf_counter()
    cache, built = get_or_build_token_cache(model, tok, texts, cache_dir, stream, "bench")
    t_cache = time.perf_counter() - t0
    assert built

    def chunks(epoch: int):
        return cache.iter_shards(shuffle=True, seed=epoch)

    t0 = time.perf_counter()
    train_sae(activation_batches(chunks, cfg.batch_size, 65536, seed=0), cache.d_model, cfg,
              seed=0)
    t_train = time.perf_counter() - t0
    return {"cache_seconds": t_cache, "cache_tokens": cache.n_tokens, "train_seconds": t_train}


def run_sae_lens(model_path: str, texts: list[str], layer: int, cfg: SAETrainConfig, d_in: int,
                 context: int, store_batch_prompts: int = 64, n_batches_in_buffer: int = 16,
                 ) -> dict[str, float]:
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens.config import LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.width(d_in), k=int(cfg.k or 16),
                                  normalize_activations=cfg.normalize_activations,
                                  decoder_init_norm=cfg.decoder_init_norm),
        model_name=model_path,
        model_class_name="AutoModelForCausalLM",
        hook_name=f"model.layers.{layer}",
        dataset_path="local",
        is_dataset_tokenized=False,
        streaming=False,
        context_size=context,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.batch_size,
        store_batch_size_prompts=store_batch_prompts,
        n_batches_in_buffer=n_batches_in_buffer,
        exclude_special_tokens=True,
        lr=cfg.lr,
        device="cpu",
        seed=0,
        dtype="float32",
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=None,
        n_checkpoints=0,
        verbose=False,
    )
    ds = datasets.Dataset.from_dict({"text": texts})
    t0 = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=ds)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.run()
    t_run = time.perf_counter() - t0
    return {"setup_seconds": t_setup, "train_seconds": t_run}


def _import_sae_lens() -> None:
    import datasets  # noqa: F401
    from sae_lens import LanguageModelSAETrainingRunner  # noqa: F401
    from sae_lens.training.sae_trainer import SAETrainer  # noqa: F401


QUICK = dict(tokens=4096, texts=300, batch_size=256, expansion=2, k=8, context=32,
             norm_batches=2, store_batch_prompts=8, buffer_batches=8, runs=2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism", help="organism | random | a local folder")
    ap.add_argument("--tokens", type=int, default=400_000, help="SAE training tokens")
    ap.add_argument("--texts", type=int, default=20_000, help="organism corpus documents")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--norm-batches", type=int, default=16,
                    help="batches for the activation-norm estimate (both sides)")
    ap.add_argument("--store-batch-prompts", type=int, default=64,
                    help="sae-lens store_batch_size_prompts (liref extracts 64 texts a batch)")
    ap.add_argument("--buffer-batches", type=int, default=16,
                    help="sae-lens n_batches_in_buffer")
    ap.add_argument("--runs", type=int, default=3, help="runs of each side (median reported)")
    return parse_with_quick(ap, argv, QUICK)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {"liref_cache_build": [], "liref_train": [],
                                     "liref_cold": [], "sae_lens_setup": [],
                                     "sae_lens_run": []}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        path, label = _model_path(args.model, tmp)
        model, tok = load_model(path)
        layer = num_layers(model) // 2
        d_in = int(model.config.hidden_size)
        texts = load_corpus("organism", max_texts=args.texts).texts
        cfg = SAETrainConfig(architecture="topk", expansion_factor=args.expansion, k=args.k,
                             training_tokens=args.tokens, batch_size=args.batch_size,
                             n_batches_for_norm_estimate=args.norm_batches)
        cached_tokens = 0
        _import_sae_lens()  # one-time import costs stay out of whichever side runs first
        for run in range(args.runs):
            def ours(run: int = run) -> None:
                nonlocal cached_tokens
                r = run_liref(model, tok, texts, layer, cfg, tmp / f"cache-{run}", args.context)
                cached_tokens = int(r["cache_tokens"])
                times["liref_cache_build"].append(r["cache_seconds"])
                times["liref_train"].append(r["train_seconds"])
                times["liref_cold"].append(r["cache_seconds"] + r["train_seconds"])

            def theirs() -> None:
                r = run_sae_lens(path, texts, layer, cfg, d_in, args.context,
                                 args.store_batch_prompts, args.buffer_batches)
                times["sae_lens_setup"].append(r["setup_seconds"])
                times["sae_lens_run"].append(r["train_seconds"])

            for side in ((ours, theirs) if run % 2 == 0 else (theirs, ours)):
                side()
            log.info("run %d: liref train %.1fs, sae-lens %.1fs", run,
                     times["liref_train"][-1], times["sae_lens_run"][-1])

    n = cfg.total_steps * cfg.batch_size
    med = {k: statistics.median(v) for k, v in times.items()}
    warm = n / med["liref_train"]
    cold = n / med["liref_cold"]
    base = n / med["sae_lens_run"]
    per_run_warm = [b / a for a, b in zip(times["liref_train"], times["sae_lens_run"],
                                          strict=True)]
    sweep = 4 * med["sae_lens_run"] / (med["liref_cache_build"] + 4 * med["liref_train"])
    ratios = {"warm_vs_sae_lens": warm / base, "cold_vs_sae_lens": cold / base,
              "sweep_of_4_speedup": sweep}
    goals = [Goal("liref warm-cache tokens/s / sae-lens runner (medians)", warm / base, 1.5,
                  False)]
    settings = {
        "model": label, "layer": layer, "d_in": d_in, "d_sae": cfg.width(d_in),
        "architecture": "topk", "k": args.k, "training_tokens": n,
        "batch_size": args.batch_size, "corpus_texts": args.texts, "context": args.context,
        "cached_tokens": cached_tokens, "n_batches_for_norm_estimate": args.norm_batches,
        "sae_lens_store_batch_size_prompts": args.store_batch_prompts,
        "sae_lens_n_batches_in_buffer": args.buffer_batches, "runs": args.runs,
        "torch_threads": args.threads,
        "order": "interleaved: liref first on even runs, sae-lens first on odd runs",
    }
    tokens_per_s = {"liref_warm_cache": warm, "liref_cold_cache": cold,
                    "sae_lens_runner": base}
    result = write_result("sae_throughput", settings, times, ratios, goals, args.out,
                          tokens_per_s_median=tokens_per_s,
                          per_run_warm_ratio=per_run_warm)
    sp = spreads(times)
    rows = [("liref, warm cache (SAETrainer on cached shards)", "liref_train", warm),
            ("liref, cold cache (extract + train)", "liref_cold", cold),
            ("sae-lens LanguageModelSAETrainingRunner", "sae_lens_run", base)]
    print(f"\nSAE training throughput: {label}, layer {layer}, d_in {d_in}, "
          f"d_sae {cfg.width(d_in)}, topk k={args.k}, {n} tokens, batch {args.batch_size}, "
          f"median of {args.runs} interleaved runs")
    print(f"{'pipeline':<52}{'tokens/s':>12}{'vs sae-lens':>13}{'seconds min..max':>20}")
    for name, key, tps in rows:
        print(f"{name:<52}{tps:>12,.0f}{tps / base:>12.2f}x"
              f"{sp[key]['min']:>11.1f}..{sp[key]['max']:.1f}")
    print(f"a sweep of 4 SAEs (one extraction, 4 trainings) vs 4 sae-lens runs: "
          f"{sweep:.2f}x faster")
    print(f"per-run warm ratios: {', '.join(f'{r:.2f}' for r in per_run_warm)}")
    print_goals(goals)
    return result


if __name__ == "__main__":
    main()
