"""SAE training throughput: liref (sae-lens ``SAETrainer`` fed from our token-activation cache)
vs sae-lens's own ``LanguageModelSAETrainingRunner`` (LLM forward passes feeding its activation
store), same model, layer, corpus, SAE architecture and settings, in one process.

    python -m benchmarks.sae_throughput [--model organism] [--tokens 400000] [--texts 20000]

``--model organism`` uses the committed organism when ``probing/organism/checkpoint`` exists;
otherwise (or with ``--model random``) a randomly initialised Llama of the organism's shape.
Reported: tokens/s of SAE training for liref from a warm cache (what every SAE of a sweep after
the first gets), liref from a cold cache (extraction of exactly the trained tokens + training),
and the sae-lens runner; the ratios liref/sae-lens; and the speed-up of a 4-SAE sweep (one
extraction + 4 trainings vs 4 runner runs). torch runs single-threaded for both (on a shared
2-core machine two threads are slower). Writes ``benchmarks/results/sae_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from probing.activations.corpus import load_corpus
from probing.activations.tokens import (
    TokenStreamConfig,
    activation_batches,
    get_or_build_token_cache,
)
from probing.models import load_model, num_layers
from probing.sae.training import SAETrainConfig, train_sae

log = logging.getLogger("liref.bench.sae")
RESULTS = Path(__file__).resolve().parent / "results" / "sae_throughput.json"
ORGANISM = Path(__file__).resolve().parents[1] / "probing" / "organism" / "checkpoint"


def _random_llama(folder: Path) -> str:
    """A random Llama with the organism's default shape and a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import tiny_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=384,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
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
                 context: int) -> dict[str, float]:
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
        store_batch_size_prompts=64,
        n_batches_in_buffer=16,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism", help="organism | random | a local folder")
    ap.add_argument("--tokens", type=int, default=400_000, help="SAE training tokens")
    ap.add_argument("--texts", type=int, default=20_000, help="organism corpus documents")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        path, label = _model_path(args.model, tmp)
        model, tok = load_model(path)
        layer = num_layers(model) // 2
        d_in = int(model.config.hidden_size)
        texts = load_corpus("organism", max_texts=args.texts).texts
        cfg = SAETrainConfig(architecture="topk", expansion_factor=args.expansion, k=args.k,
                             training_tokens=args.tokens, batch_size=args.batch_size,
                             n_batches_for_norm_estimate=16)
        ours = run_liref(model, tok, texts, layer, cfg, tmp / "cache", args.context)
        theirs = run_sae_lens(path, texts, layer, cfg, d_in, args.context)

    n = cfg.total_steps * cfg.batch_size
    warm = n / ours["train_seconds"]
    cold = n / (ours["train_seconds"] + ours["cache_seconds"])
    base = n / theirs["train_seconds"]
    result = {
        "model": label,
        "layer": layer,
        "d_in": d_in,
        "d_sae": cfg.width(d_in),
        "architecture": "topk",
        "k": args.k,
        "training_tokens": n,
        "batch_size": args.batch_size,
        "corpus_texts": args.texts,
        "cached_tokens": ours["cache_tokens"],
        "torch_threads": args.threads,
        "liref_warm_cache_tokens_per_s": warm,
        "liref_cold_cache_tokens_per_s": cold,
        "sae_lens_runner_tokens_per_s": base,
        "ratio_warm_vs_sae_lens": warm / base,
        "ratio_cold_vs_sae_lens": cold / base,
        "sweep_of_4_speedup": 4 * theirs["train_seconds"]
        / (ours["cache_seconds"] + 4 * ours["train_seconds"]),
        "seconds": {"liref_cache_build": ours["cache_seconds"],
                    "liref_train": ours["train_seconds"],
                    "sae_lens_setup": theirs["setup_seconds"],
                    "sae_lens_run": theirs["train_seconds"]},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "device": "cpu"},
        "note": "one run; CPU shared with other jobs, so timings are noisy",
    }
    rows = [("liref, warm cache (SAETrainer on cached shards)", warm),
            ("liref, cold cache (extract + train)", cold),
            ("sae-lens LanguageModelSAETrainingRunner", base)]
    print(f"\nSAE training throughput: {label}, layer {layer}, d_in {d_in}, "
          f"d_sae {cfg.width(d_in)}, topk k={args.k}, {n} tokens, batch {args.batch_size}")
    print(f"{'pipeline':<52}{'tokens/s':>12}{'vs sae-lens':>13}")
    for name, tps in rows:
        print(f"{name:<52}{tps:>12,.0f}{tps / base:>12.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"a sweep of 4 SAEs (one extraction, 4 trainings) vs 4 sae-lens runs: "
          f"{result['sweep_of_4_speedup']:.2f}x faster")
    print(f"written {out}")


if __name__ == "__main__":
    main()
