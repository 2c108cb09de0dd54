"""Activation extraction: liref's hooks (early exit, length-sorted batches) vs the baseline of
HF ``output_hidden_states=True`` on the same prompts, batch size and model, in one process.

    python -m benchmarks.extraction_speed [--model organism] [--n 512] [--layer-frac 0.5]

Prints a table and writes ``benchmarks/results/extraction_speed.json``. Reported: prompts/s for
both, their ratio, and peak bytes of activations held per batch (all layers x all tokens for
the baseline; the requested layers only for liref).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from probing.activations.extract import extract_activations, tokenize_prompts
from probing.models import load_model, num_layers

RESULTS = Path(__file__).resolve().parent / "results" / "extraction_speed.json"


def _prompts(n: int) -> list[str]:
    words = ("what is the colour of the old house near the river where seven birds "
             "sang in the morning before the rain").split()
    return [f"Q: {' '.join(words[: 4 + (i * 7) % (len(words) - 4)])} {i} ?\nA: "
            for i in range(n)]


@torch.no_grad()
def baseline(model, tok, prompts: list[str], layer: int, batch_size: int) -> torch.Tensor:
    """HF route: right-padded batches in prompt order, every hidden state returned."""
    out = []
    for s in range(0, len(prompts), batch_size):
        enc = tok(prompts[s : s + batch_size], return_tensors="pt", padding=True)
        hs = model(**enc, output_hidden_states=True).hidden_states
        last = enc["attention_mask"].sum(1) - 1
        out.append(hs[layer + 1][torch.arange(len(last)), last])
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer-frac", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    tok.padding_side = "right"
    n_layers = num_layers(model)
    layer = min(n_layers - 2, int(args.layer_frac * n_layers))
    prompts = _prompts(args.n)
    times = {"liref": [], "hf_output_hidden_states": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours = extract_activations(model, tok, prompts, [layer], "last", args.batch_size,
                                   progress=False)
        times["liref"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = baseline(model, tok, prompts, layer, args.batch_size)
        times["hf_output_hidden_states"].append(time.perf_counter() - t)
    max_diff = float((ours[:, 0] - ref).abs().max())
    d = model.config.hidden_size
    lens = [len(t) for t in tokenize_prompts(tok, prompts)]
    tokens = max(lens) * args.batch_size
    best = {k: min(v) for k, v in times.items()}
    result = {
        "model": args.model, "n_prompts": args.n, "batch_size": args.batch_size,
        "n_layers": n_layers, "layer": layer, "torch_threads": args.threads,
        "liref_prompts_per_s": args.n / best["liref"],
        "hf_prompts_per_s": args.n / best["hf_output_hidden_states"],
        "speedup": best["hf_output_hidden_states"] / best["liref"],
        "activation_bytes_per_batch_liref": tokens * d * 4,
        "activation_bytes_per_batch_hf": tokens * d * 4 * (n_layers + 1),
        "max_abs_diff": max_diff,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")


if __name__ == "__main__":
    main()
