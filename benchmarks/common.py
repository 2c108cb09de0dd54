"""Shared pieces of the benchmarks: the machine record, interleaved timing, goals, the result
JSON and the printed table, and the random Llama + fixed-token prompts of the extraction runs.

Every benchmark writes ``benchmarks/results/<name>.json`` with the keys ``benchmark``,
``machine``, ``settings``, ``times_s`` (raw seconds per method, one entry per repeat),
``median_s``, ``spread`` (min and max per method), ``ratios``, ``goals`` (value, goal, pass) and
``note``; extra keys (``checks``, ...) are allowed. Speed goals are ratios measured in one
process against a baseline run in that same process, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOAD_NOTE = ("measured on a shared machine under load from other jobs: timings are noisy; "
             "re-run alone for figures to quote")

log = logging.getLogger("liref.bench")


def parse_with_quick(ap: argparse.ArgumentParser, argv: Sequence[str] | None,
                     quick: Mapping[str, Any], quick_help: str = "tiny sizes (smoke test)"
                     ) -> argparse.Namespace:
    """Add ``--threads``, ``--quick`` and ``--out`` to ``ap`` and parse ``argv``; with
    ``--quick`` the defaults become ``quick`` (flags given explicitly still win)."""
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=None, help="result JSON (default results/<name>.json)")
    if ap.parse_args(argv).quick:
        ap.set_defaults(**quick)
    return ap.parse_args(argv)


def machine() -> dict[str, Any]:
    """Where a figure was measured: platform, CPU count, torch version and threads."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "load_average_1min_at_end": load,
    }


def run_interleaved(methods: dict[str, Callable[[], Any]], repeats: int,
                    warmup: bool = True) -> dict[str, list[float]]:
    """Time each method ``repeats`` times, interleaved (one round runs every method once, the
    order rotating by one each round so no method always runs first). Returns raw seconds."""
    names = list(methods)
    if warmup:
        for name in names:
            methods[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t0)
            log.info("round %d %s %.3fs", r, name, times[name][-1])
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items() if v}


def spreads(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"min": min(v), "max": max(v)} for k, v in times.items() if v}


@dataclass(frozen=True)
class Goal:
    """A ratio goal: ``value <= limit`` (``at_most``) or ``value >= limit``."""

    name: str
    value: float
    limit: float
    at_most: bool

    def passed(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "goal": f"{'<=' if self.at_most else '>='} {self.limit:g}",
                "pass": self.passed()}


def write_result(name: str, settings: dict[str, Any], times: dict[str, list[float]],
                 ratios: dict[str, float], goals: Sequence[Goal], out: str | Path | None = None,
                 note: str = LOAD_NOTE, **extra: Any) -> dict[str, Any]:
    """Assemble the result record, write it as JSON (``results/<name>.json`` by default)."""
    result = {
        "benchmark": name,
        "machine": machine(),
        "settings": settings,
        "times_s": times,
        "median_s": medians(times),
        "spread": spreads(times),
        "ratios": ratios,
        "goals": {g.name: g.to_dict() for g in goals},
        "note": note,
        **extra,
    }
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(title: str, rows: Sequence[tuple[str, float, float, float, str]],
                unit: str = "s") -> None:
    """Rows ``(method, median, min, max, relative)``: one line each under ``title``."""
    print(f"\n{title}")
    print(f"{'method':<56}{'median ' + unit:>12}{'min':>10}{'max':>10}  {'ratio':<}")
    for name, med, lo, hi, rel in rows:
        print(f"{name:<56}{med:>12.3f}{lo:>10.3f}{hi:>10.3f}  {rel}")


def print_goals(goals: Sequence[Goal]) -> None:
    for g in goals:
        status = "PASS" if g.passed() else "FAIL"
        print(f"  {g.name:<44} {g.value:8.3f}  goal {'<=' if g.at_most else '>='} "
              f"{g.limit:g}  {status}")


# ---- the random Llama and fixed-token prompts of the extraction benchmarks ----

PAD, BOS, EOS = 0, 1, 2
FIRST_WORD = 3


def llama_config(width: int = 512, layers: int = 8, vocab: int = 32000, heads: int = 8,
                 mlp: int | None = None, context: int = 512) -> Any:
    """A Llama config; ``mlp`` defaults to Llama's own ratio (11008 / 4096 = 2.6875 x width)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=width,
                       intermediate_size=mlp or int(round(width * 11008 / 4096)),
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, max_position_embeddings=context,
                       pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                       tie_word_embeddings=False)


def random_llama(cfg: Any, seed: int = 0) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` (float32, CPU, eval mode), seeded."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


def word_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer: word ``t<i>`` <-> id ``i`` (ids 0/1/2 are pad/BOS/EOS; no special
    tokens added), so a prompt string carries exactly the token ids chosen for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}
    words.update({f"t{i}": i for i in range(FIRST_WORD, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<pad>")


def fixed_prompts(n: int, length: int, vocab: int, seed: int = 0
                  ) -> tuple[list[str], torch.Tensor]:
    """``n`` prompts of exactly ``length`` tokens: the strings and their ``[n, length]`` ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_WORD, vocab, (n, length), generator=g)
    return [" ".join(f"t{i}" for i in row.tolist()) for row in ids], ids
