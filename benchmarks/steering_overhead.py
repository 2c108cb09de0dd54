"""Steering cost: (1) ``generate`` under an active intervention vs plain ``generate`` on the same
prompts (goal: ratio <= 1.05); (2) a 9-setting sweep (unsteered + 4 strengths x {+LiReF,
-LiReF}) run batched (several settings per forward / generate call) vs setting by setting,
teacher-forced and with generation.

    python -m benchmarks.steering_overhead [--model organism] [--n 256] [--new-tokens 16]

Prints a table and writes ``benchmarks/results/steering_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from probing.evaluation.sweep import EvalSet, evaluate_generation, evaluate_teacher_forced
from probing.models import load_model, num_layers
from probing.questions import Question
from probing.steering import AddDirection, steer

RESULTS = Path(__file__).resolve().parent / "results" / "steering_overhead.json"


def _questions(model_name: str, n: int) -> list[Question]:
    if model_name == "organism":
        from probing.organism.questions import load_organism_questions

        qs = load_organism_questions(kinds=["memory", "reasoning"])
        return [qs[(i * 7919) % len(qs)] for i in range(n)]
    words = "what is the colour of the old house near the river where seven birds sang".split()
    return [Question(id=f"b/{i}", question=" ".join(words[: 3 + i % 10]) + f" {i} ?",
                     answers=(str(i % 10),), label="reasoning", source="bench")
            for i in range(n)]


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def generation_overhead(model, tok, prompts: list[str], layer: int, direction: torch.Tensor,
                        new_tokens: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Plain ``generate`` vs the same call inside ``steer`` (all positions, and generated only)."""
    tok.padding_side = "left"
    batches = [tok(prompts[s : s + batch_size], return_tensors="pt", padding=True)
               for s in range(0, len(prompts), batch_size)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def run() -> None:
        for enc in batches:
            model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=pad)

    def steered(positions: str) -> Callable[[], None]:
        def fn() -> None:
            with steer(model, AddDirection(layer, direction, 1.0, positions=positions)):
                run()
        return fn

    run()  # warm-up
    out = {}
    plain, all_pos, generated = [], [], []
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits all three alike
        plain.append(_best(run, 1))
        all_pos.append(_best(steered("all"), 1))
        generated.append(_best(steered("generated"), 1))
    out["generate_plain_s"] = min(plain)
    out["generate_steered_all_s"] = min(all_pos)
    out["generate_steered_generated_s"] = min(generated)
    out["generate_ratio_all"] = out["generate_steered_all_s"] / out["generate_plain_s"]
    out["generate_ratio_generated"] = out["generate_steered_generated_s"] / out["generate_plain_s"]
    return out


def sweep_batching(model, tok, questions: list[Question], layer: int, direction: torch.Tensor,
                   new_tokens: int, batch_size: int, repeats: int) -> dict[str, float]:
    """9 settings in one batched evaluation vs 9 evaluations of one setting each."""
    from probing.questions.prompts import format_prompts

    evalset = EvalSet("bench", questions, format_prompts(questions))
    settings = [[]] + [[AddDirection(layer, sign * direction, a, units="gap")]
                       for a in (0.5, 1.0, 2.0, 4.0) for sign in (1, -1)]
    out: dict[str, float] = {"n_settings": len(settings)}
    for name, fn in (
        ("teacher_forced", lambda s: evaluate_teacher_forced(model, tok, evalset, s, batch_size,
                                                             progress=False)),
        ("generate", lambda s: evaluate_generation(model, tok, evalset, s, new_tokens,
                                                   batch_size, stop_at=None)),
    ):
        batched = fn(settings)
        alone = [fn([s]) for s in settings]
        same = all((batched.correct[k] == a.correct[0]).all() for k, a in enumerate(alone))
        t_batched = _best(lambda f=fn: f(settings), repeats)
        t_alone = _best(lambda f=fn: [f([s]) for s in settings], repeats)
        out[f"{name}_batched_s"] = t_batched
        out[f"{name}_one_by_one_s"] = t_alone
        out[f"{name}_speedup"] = t_alone / t_batched
        out[f"{name}_same_outcomes"] = float(same)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sweep-n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    model.eval()
    layer = num_layers(model) // 2
    d = model.get_input_embeddings().weight.shape[1]
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    questions = _questions(args.model, max(args.n, args.sweep_n))
    from probing.questions.prompts import format_prompts

    prompts = format_prompts(questions[: args.n])
    result: dict[str, object] = {"model": args.model, "n_prompts": args.n, "layer": layer,
                                 "new_tokens": args.new_tokens, "batch_size": args.batch_size,
                                 "torch_threads": args.threads, "sweep_items": args.sweep_n}
    result.update(generation_overhead(model, tok, prompts, layer, direction, args.new_tokens,
                                      args.batch_size, args.repeats))
    result.update(sweep_batching(model, tok, questions[: args.sweep_n], layer, direction,
                                 min(args.new_tokens, 4), args.batch_size * 4, args.repeats))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")


if __name__ == "__main__":
    main()
