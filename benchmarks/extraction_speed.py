"""Activation extraction speed: liref vs a bare HF forward, HF ``output_hidden_states``,
TransformerLens ``run_with_cache`` and nnsight tracing, on the same prompts, batch size and
weights, timed interleaved in one process.

    python -m benchmarks.extraction_speed [--n 128] [--tokens 48] [--repeats 5] [--quick]

The model is a seeded random ``LlamaForCausalLM`` (width 512, 8 blocks, 8 heads, MLP 1376 =
Llama's 2.6875 x width, vocab 32000, float32, CPU); the prompts are N fixed random token
sequences of equal length (a word-level tokenizer maps word ``t<i>`` to id ``i``, so liref's
string API sees exactly those ids). Every method except the bare forward produces the same
thing, the last-token residual of every block, ``[N, n_layers, d]``:

- ``hf_bare_forward``: ``model(input_ids, attention_mask, use_cache=False)`` with logits; the
  baseline of every ratio.
- ``hf_output_hidden_states``: the same with ``output_hidden_states=True``.
- ``hf_blocks_only``: ``model.model(...)``, the decoder blocks (and final norm) without the LM
  head: the floor of any extraction of all layers through the HF blocks; ``liref /
  hf_blocks_only`` is liref's own overhead (hooks, tokenizing, pooling, disk).
- ``liref_cached_all_layers``: ``cached_extract`` of all layers into a fresh cache folder each
  repeat (tokenizing, hooks, early exit after the last block, sharded safetensors + manifest
  written, read back and verified).
- ``liref_half_depth``: ``extract_activations`` of layer ``n_layers // 2 - 1`` (the forward
  pass stops after block n/2 - 1, i.e. half the blocks run).
- ``transformerlens_run_with_cache``: ``HookedTransformer.run_with_cache`` (logits returned, as
  by default) with ``names_filter`` on ``blocks.*.hook_resid_post``, on a ``HookedTransformer``
  of the same shape whose weights are converted from the HF model (so activations can be
  compared).
- ``nnsight_trace``: ``nnsight.LanguageModel(hf_model).trace(...)`` saving every block's
  output.

Ratios (medians): liref all layers / bare (goal <= 0.65), liref half depth / bare (goal <=
0.32), TransformerLens / liref and nnsight / liref (goal >= 1.6 each). TransformerLens and
nnsight are optional (``pip install -e .[bench]``); a missing one is skipped with a note.
Writes ``benchmarks/results/extraction_speed.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

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
from probing.activations.cache import cached_extract
from probing.activations.extract import extract_activations

log = logging.getLogger("liref.bench.extraction")

QUICK = dict(n=8, tokens=8, width=64, layers=4, vocab=1000, heads=4, batch_size=4, repeats=2)


def _batches(ids: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(ids[s : s + batch_size], torch.ones_like(ids[s : s + batch_size]))
            for s in range(0, len(ids), batch_size)]


def build_transformerlens(hf_model: Any) -> Any:
    """A ``HookedTransformer`` of the HF Llama's shape (rotary, RMSNorm, gated SiLU MLP) with
    the HF weights converted by TransformerLens's own ``convert_llama_weights``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = hf_model.config
    d_head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings, d_vocab=c.vocab_size, act_fn=c.hidden_act,
        eps=c.rms_norm_eps, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=d_head,
        rotary_base=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
        dtype=torch.float32, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl = HookedTransformer(cfg)
    missing = tl.load_state_dict(convert_llama_weights(hf_model, cfg), strict=False)
    # only buffers (causal mask, rotary tables) are absent from a converted state dict
    assert all(k.split(".")[-1] in ("mask", "IGNORE", "rotary_sin", "rotary_cos")
               for k in missing.missing_keys), missing
    return tl.eval()


def build_nnsight(hf_model: Any, tokenizer: Any) -> Any:
    import nnsight

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel is deprecated in 0.8 but still works
        return nnsight.LanguageModel(hf_model, tokenizer=tokenizer)


def make_methods(model: Any, tok: Any, prompts: list[str], ids: torch.Tensor, batch_size: int,
                 half_layer: int, cache_root: Path, skip: Sequence[str],
                 notes: dict[str, str]) -> tuple[dict[str, Callable[[], None]],
                                                 dict[str, torch.Tensor]]:
    """The timed callables and a dict where each leaves its last ``[N, L, d]`` result."""
    n_layers = model.config.num_hidden_layers
    batches = _batches(ids, batch_size)
    last: dict[str, torch.Tensor] = {}
    counter = iter(range(1_000_000))

    @torch.no_grad()
    def hf_bare_forward() -> None:
        for b, m in batches:
            model(input_ids=b, attention_mask=m, use_cache=False)

    @torch.no_grad()
    def hf_output_hidden_states() -> None:
        out = []
        for b, m in batches:
            hs = model(input_ids=b, attention_mask=m, use_cache=False,
                       output_hidden_states=True).hidden_states
            out.append(torch.stack([h[:, -1] for h in hs[1:]], 1))
        last["hf_output_hidden_states"] = torch.cat(out)

    @torch.no_grad()
    def hf_blocks_only() -> None:
        for b, m in batches:
            model.model(input_ids=b, attention_mask=m, use_cache=False)

    def liref_cached_all_layers() -> None:
        folder = cache_root / f"run-{next(counter)}"
        last["liref_cached_all_layers"] = cached_extract(
            model, tok, prompts, folder, layers=None, position="last", batch_size=batch_size,
            progress=False).acts

    def liref_half_depth() -> None:
        last["liref_half_depth"] = extract_activations(
            model, tok, prompts, [half_layer], "last", batch_size, progress=False)

    methods: dict[str, Callable[[], None]] = {
        "hf_bare_forward": hf_bare_forward,
        "hf_output_hidden_states": hf_output_hidden_states,
        "hf_blocks_only": hf_blocks_only,
        "liref_cached_all_layers": liref_cached_all_layers,
        "liref_half_depth": liref_half_depth,
    }

    if "transformerlens" in skip:
        notes["transformerlens"] = "skipped (--skip)"
    else:
        try:
            tl = build_transformerlens(model)
        except ImportError as exc:
            notes["transformerlens"] = f"skipped: not installed ({exc}); pip install -e .[bench]"
        else:
            names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
            wanted = set(names)

            @torch.no_grad()
            def transformerlens_run_with_cache() -> None:
                out = []
                for b, _ in batches:
                    _logits, cache = tl.run_with_cache(b, names_filter=lambda n: n in wanted)
                    out.append(torch.stack([cache[n][:, -1] for n in names], 1))
                last["transformerlens_run_with_cache"] = torch.cat(out)

            methods["transformerlens_run_with_cache"] = transformerlens_run_with_cache
            notes["transformerlens"] = ("HookedTransformer built from a HookedTransformerConfig "
                                        "of the same shape, weights converted from the HF model "
                                        "(convert_llama_weights); logits computed as by default")

    if "nnsight" in skip:
        notes["nnsight"] = "skipped (--skip)"
    else:
        try:
            lm = build_nnsight(model, tok)
            import nnsight
        except ImportError as exc:
            notes["nnsight"] = f"skipped: not installed ({exc}); pip install -e .[bench]"
        else:
            @torch.no_grad()
            def nnsight_trace() -> None:
                out = []
                for b, m in batches:
                    with lm.trace({"input_ids": b, "attention_mask": m}, use_cache=False):
                        saved = nnsight.save([])
                        for layer in range(n_layers):
                            saved.append(lm.model.layers[layer].output)
                    outs = [s[0] if isinstance(s, (tuple, list)) else s for s in saved]
                    out.append(torch.stack([h[:, -1] for h in outs], 1))
                last["nnsight_trace"] = torch.cat(out)

            methods["nnsight_trace"] = nnsight_trace
            notes["nnsight"] = (f"nnsight {nnsight.__version__}: LanguageModel(hf_model)"
                                ".trace(...) saving every block's output; logits computed")
    return methods, last


def agreement(last: dict[str, torch.Tensor], half_layer: int) -> dict[str, float]:
    """Max abs differences between liref's activations and each other route's."""
    ours = last["liref_cached_all_layers"]
    n_layers = ours.shape[1]
    checks: dict[str, float] = {}
    if "hf_output_hidden_states" in last:  # HF's last entry has the final norm: compare 0..L-2
        ref = last["hf_output_hidden_states"]
        checks["liref_vs_hf_hidden_states_layers_0_to_L-2"] = float(
            (ours[:, : n_layers - 1] - ref[:, : n_layers - 1]).abs().max())
    if "liref_half_depth" in last:
        checks["liref_half_depth_vs_liref_all_layers"] = float(
            (last["liref_half_depth"][:, 0] - ours[:, half_layer]).abs().max())
    for other in ("transformerlens_run_with_cache", "nnsight_trace"):
        if other in last:
            checks[f"liref_vs_{other}_all_layers"] = float((ours - last[other]).abs().max())
    return checks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="prompts")
    ap.add_argument("--tokens", type=int, default=48, help="tokens per prompt")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["transformerlens", "nnsight"])
    return parse_with_quick(ap, argv, QUICK, "tiny sizes (smoke test, seconds)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = llama_config(args.width, args.layers, args.vocab, args.heads,
                       context=max(64, args.tokens))
    model = random_llama(cfg)
    tok = word_tokenizer(args.vocab)
    prompts, ids = fixed_prompts(args.n, args.tokens, args.vocab)
    half_layer = args.layers // 2 - 1
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="liref-bench-") as tmp:
        methods, last = make_methods(model, tok, prompts, ids, args.batch_size, half_layer,
                                     Path(tmp), args.skip, notes)
        times = run_interleaved(methods, args.repeats)
    med = medians(times)
    bare = med["hf_bare_forward"]
    liref = med["liref_cached_all_layers"]
    ratios = {f"{k}/hf_bare_forward": v / bare for k, v in med.items()}
    ratios["liref_cached_all_layers/hf_blocks_only"] = liref / med["hf_blocks_only"]
    goals = [Goal("liref_all_layers_cached / bare_forward", liref / bare, 0.65, True),
             Goal("liref_half_depth / bare_forward", med["liref_half_depth"] / bare, 0.32, True)]
    for other, label in (("transformerlens_run_with_cache", "transformerlens / liref_all_layers"),
                         ("nnsight_trace", "nnsight / liref_all_layers")):
        if other in med:
            ratios[f"{other}/liref_cached_all_layers"] = med[other] / liref
            goals.append(Goal(label, med[other] / liref, 1.6, False))
    checks = agreement(last, half_layer)
    settings = {
        "model": "random LlamaForCausalLM (seeded), float32, CPU",
        "width": args.width, "n_layers": args.layers, "n_heads": args.heads,
        "mlp": cfg.intermediate_size, "vocab": args.vocab, "n_prompts": args.n,
        "tokens_per_prompt": args.tokens, "batch_size": args.batch_size,
        "repeats": args.repeats, "torch_threads": args.threads, "half_depth_layer": half_layer,
        "position": "last", "attn_implementation": str(getattr(cfg, "_attn_implementation", "")),
        "order": "interleaved, one warm-up call of each method first, order rotating per round",
    }
    # diagnostics: each round's own ratio to that round's bare forward (slow load drifts cancel)
    paired = {k: statistics.median(t / b for t, b in zip(v, times["hf_bare_forward"],
                                                          strict=True))
              for k, v in times.items()}
    result = write_result("extraction_speed", settings, times, ratios, goals, args.out,
                          checks=checks, methods=notes,
                          per_round_ratio_to_bare_median=paired)
    sp = spreads(times)
    rows = [(name, med[name], sp[name]["min"], sp[name]["max"], f"{med[name] / bare:.3f}x bare")
            for name in med]
    print_table(f"Extraction, random Llama width {args.width}, {args.layers} blocks, vocab "
                f"{args.vocab}: {args.n} prompts x {args.tokens} tokens, batch "
                f"{args.batch_size}, {args.repeats} interleaved repeats, "
                f"{args.threads} thread(s)", rows)
    print_goals(goals)
    print(f"  liref all layers / HF blocks without the LM head (liref's own overhead): "
          f"{ratios['liref_cached_all_layers/hf_blocks_only']:.3f}")
    for key, value in checks.items():
        print(f"  max abs diff {key}: {value:.3g}")
    for key, value in notes.items():
        print(f"  {key}: {value}")
    return result


if __name__ == "__main__":
    main()
