"""Peak memory of extraction when the number of prompts grows 10x.

    python -m benchmarks.extraction_memory [--n 128] [--factor 10] [--quick]

Runs ``cached_extract`` (all layers, last position, into a fresh cache folder) on the random
Llama of ``extraction_speed`` (width 512, 8 blocks, vocab 32000) for N and factor x N prompts of
48 tokens, each in its own subprocess. Inside each subprocess: the model, tokenizer and prompts
are built, ``VmRSS`` is read (``rss_after_load``), the kernel's peak-RSS mark is reset (Linux:
``/proc/self/clear_refs`` <- 5), extraction runs, and ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
gives the peak during extraction (the model's resident weights included). Reported:

- ``peak_rss_ratio`` = peak RSS during extraction at factor x N / at N (the whole process:
  interpreter, libraries, model, activations). Goal <= 1.2.
- ``extraction_increment_ratio`` = (peak - rss_after_load) at factor x N / at N: the memory
  extraction itself adds. It includes the returned ``[N, n_layers, d]`` float32 array, which
  must grow with N; ``result_bytes`` states its size.

Where the peak mark cannot be reset, ``ru_maxrss`` is the whole-run peak (model loading
included) and ``hwm_reset`` is false. Writes ``benchmarks/results/extraction_memory.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Goal, parse_with_quick, print_goals, write_result

log = logging.getLogger("liref.bench.memory")

QUICK = dict(n=4, tokens=8, width=64, layers=4, vocab=1000, heads=4, batch_size=4)
KIB = 1024


def _vm_rss_kib() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``ru_maxrss``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Build model + prompts, reset the peak mark, extract, measure. Runs in a subprocess."""
    import torch

    from benchmarks.common import fixed_prompts, llama_config, random_llama, word_tokenizer
    from probing.activations.cache import cached_extract

    torch.set_num_threads(args.threads)
    model = random_llama(llama_config(args.width, args.layers, args.vocab, args.heads,
                                      context=max(64, args.tokens)))
    tok = word_tokenizer(args.vocab)
    prompts, _ids = fixed_prompts(args.n, args.tokens, args.vocab)
    gc.collect()
    rss_after_load = _vm_rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    with tempfile.TemporaryDirectory(prefix="liref-bench-mem-") as tmp:
        t0 = time.perf_counter()
        acts = cached_extract(model, tok, prompts, tmp, layers=None, position="last",
                              batch_size=args.batch_size, progress=False).acts
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"n": args.n, "seconds": seconds, "rss_after_load_kib": rss_after_load,
            "peak_rss_before_extraction_kib": peak_before, "peak_rss_kib": peak,
            "hwm_reset": reset, "result_bytes": acts.numel() * acts.element_size(),
            "result_shape": list(acts.shape)}


def start_child(args: argparse.Namespace, n: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "benchmarks.extraction_memory", "--child", "--n", str(n),
           "--tokens", str(args.tokens), "--width", str(args.width), "--layers",
           str(args.layers), "--vocab", str(args.vocab), "--heads", str(args.heads),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_child(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"extraction_memory child failed ({proc.returncode}):\n{err}")
    return json.loads(out.strip().splitlines()[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="prompts of the small run")
    ap.add_argument("--factor", type=int, default=10, help="the large run has factor x n")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--parallel", action="store_true",
                    help="run both subprocesses at once (quicker; their seconds then mean "
                         "little, peak RSS per process is unaffected)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parse_with_quick(ap, argv, QUICK)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return None
    if args.parallel:  # peak RSS is per process, so running both at once leaves it unchanged
        procs = [start_child(args, args.n), start_child(args, args.n * args.factor)]
        small, large = (finish_child(p) for p in procs)
    else:
        small = finish_child(start_child(args, args.n))
        large = finish_child(start_child(args, args.n * args.factor))

    def inc(r: dict[str, Any]) -> int:
        return r["peak_rss_kib"] - (r["rss_after_load_kib"] or 0)

    peak_ratio = large["peak_rss_kib"] / small["peak_rss_kib"]
    inc_ratio = inc(large) / max(inc(small), 1)
    goals = [Goal(f"peak_rss({args.factor}N) / peak_rss(N)", peak_ratio, 1.2, True)]
    settings = {
        "model": "random LlamaForCausalLM (seeded), float32, CPU", "width": args.width,
        "n_layers": args.layers, "vocab": args.vocab, "n_heads": args.heads,
        "n_small": args.n, "n_large": args.n * args.factor, "tokens_per_prompt": args.tokens,
        "batch_size": args.batch_size, "torch_threads": args.threads,
        "subprocesses": "concurrent" if args.parallel else "one after the other",
        "measure": "ru_maxrss inside each subprocess after resetting the peak mark once the "
                   "model is built (peak during extraction, model included); increment = peak "
                   "- VmRSS after model load",
    }
    ratios = {"peak_rss_ratio": peak_ratio, "extraction_increment_ratio": inc_ratio,
              "result_bytes_ratio": large["result_bytes"] / small["result_bytes"]}
    times = {f"N={small['n']}": [small["seconds"]], f"N={large['n']}": [large["seconds"]]}
    result = write_result("extraction_memory", settings, times, ratios, goals, args.out,
                          runs={"small": small, "large": large},
                          increments_kib={"small": inc(small), "large": inc(large)})
    print(f"\nPeak RSS of cached_extract (all {args.layers} layers, width {args.width}) for "
          f"N and {args.factor}N prompts x {args.tokens} tokens, one subprocess each")
    print(f"{'prompts':>8}{'after load MiB':>16}{'peak MiB':>10}{'increment MiB':>15}"
          f"{'result MiB':>12}{'seconds':>9}")
    for r in (small, large):
        print(f"{r['n']:>8}{(r['rss_after_load_kib'] or 0) / KIB:>16.1f}"
              f"{r['peak_rss_kib'] / KIB:>10.1f}{inc(r) / KIB:>15.1f}"
              f"{r['result_bytes'] / KIB / KIB:>12.2f}{r['seconds']:>9.2f}")
    print(f"  extraction increment ratio {inc_ratio:.2f}x (peak mark reset: "
          f"{small['hwm_reset'] and large['hwm_reset']})")
    print_goals(goals)
    return result


if __name__ == "__main__":
    main()
