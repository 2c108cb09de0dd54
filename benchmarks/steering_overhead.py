"""Steering cost: (1) ``generate`` under an active intervention vs plain ``generate`` on the same
prompts (goal: ratio <= 1.05); (2) a 9-setting sweep (unsteered + 4 strengths x {+LiReF,
-LiReF}) run batched (several settings per forward / generate call) vs setting by setting,
teacher-forced and with generation.

    python -m benchmarks.steering_overhead [--model organism] [--n 256] [--new-tokens 16]

Prints a table and writes ``benchmarks/results/steering_overhead.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import (
    Goal,
    medians,
    parse_with_quick,
    print_goals,
    print_table,
    run_interleaved,
    write_result,
)
from probing.model.blocks import num_layers
from probing.model.loading import load_model
from probing.questions import Question
from probing.steering import AddDirection, steer
from probing.steering.evaluate import EvalSet, evaluate_generation, evaluate_teacher_forced


def _questions(model_name: str, n: int) -> list[Question]:
    if model_name == "organism":
        from probing.organism.questions import load_organism_questions

        qs = load_organism_questions(kinds=["memory", "reasoning"])
        return [qs[(i * 7919) % len(qs)] for i in range(n)]
    words = "what is the colour of the old house near the river where seven birds sang".split()
    return [Question(id=f"b/{i}", question=" ".join(words[: 3 + i % 10]) + f" {i} ?",
                     answers=(str(i % 10),), label="reasoning", source="bench")
            for i in range(n)]


@torch.no_grad()
def generation_methods(model, tok, prompts: list[str], layer: int, direction: torch.Tensor,
                       new_tokens: int, batch_size: int) -> dict[str, Callable[[], None]]:
    """Plain ``generate`` and the same calls inside ``steer`` (all positions; generated only)."""
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

    return {"generate_plain": run, "generate_steered_all": steered("all"),
            "generate_steered_generated": steered("generated")}


def sweep_methods(model, tok, questions: list[Question], layer: int, direction: torch.Tensor,
                  new_tokens: int, batch_size: int) -> tuple[dict[str, Callable[[], Any]],
                                                             dict[str, bool]]:
    """9 settings (unsteered + 4 strengths x +-LiReF) in one batched evaluation vs 9 evaluations
    of one setting each, teacher-forced and with generation; and whether both give the same
    per-item outcomes."""
    from probing.questions.prompts import format_prompts

    evalset = EvalSet("bench", questions, format_prompts(questions))
    settings = [[]] + [[AddDirection(layer, sign * direction, a, units="gap")]
                       for a in (0.5, 1.0, 2.0, 4.0) for sign in (1, -1)]
    fns = {
        "teacher_forced": lambda s: evaluate_teacher_forced(model, tok, evalset, s, batch_size,
                                                            progress=False),
        "generate": lambda s: evaluate_generation(model, tok, evalset, s, new_tokens,
                                                  batch_size, stop_at=None),
    }
    methods: dict[str, Callable[[], Any]] = {}
    same: dict[str, bool] = {}
    for name, fn in fns.items():
        batched = fn(settings)
        alone = [fn([st]) for st in settings]
        same[name] = all(bool((batched.correct[k] == a.correct[0]).all())
                         for k, a in enumerate(alone))
        methods[f"sweep_{name}_batched"] = lambda f=fn: f(settings)
        methods[f"sweep_{name}_one_by_one"] = lambda f=fn: [f([st]) for st in settings]
    return methods, same


QUICK = dict(n=16, sweep_n=16, new_tokens=4, repeats=1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sweep-n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    return parse_with_quick(ap, argv, QUICK, "tiny sizes: a smoke test")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    model.eval()
    layer = num_layers(model) // 2
    d = model.get_input_embeddings().weight.shape[1]
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    questions = _questions(args.model, max(args.n, args.sweep_n))
    from probing.questions.prompts import format_prompts

    prompts = format_prompts(questions[: args.n])
    methods = generation_methods(model, tok, prompts, layer, direction, args.new_tokens,
                                 args.batch_size)
    sweep, same = sweep_methods(model, tok, questions[: args.sweep_n], layer, direction,
                                min(args.new_tokens, 4), args.batch_size * 4)
    times = run_interleaved({**methods, **sweep}, args.repeats)
    med = medians(times)
    ratios = {
        "steered_all / plain generate": med["generate_steered_all"] / med["generate_plain"],
        "steered_generated / plain generate": (med["generate_steered_generated"]
                                               / med["generate_plain"]),
        "teacher-forced sweep: one by one / batched": (med["sweep_teacher_forced_one_by_one"]
                                                       / med["sweep_teacher_forced_batched"]),
        "generation sweep: one by one / batched": (med["sweep_generate_one_by_one"]
                                                   / med["sweep_generate_batched"]),
    }
    goals = [Goal("steered generate / plain generate (all positions)",
                  ratios["steered_all / plain generate"], 1.05, at_most=True)]
    settings = {"model": args.model, "n_prompts": args.n, "layer": layer,
                "new_tokens": args.new_tokens, "batch_size": args.batch_size,
                "sweep_items": args.sweep_n, "sweep_settings": 9, "repeats": args.repeats,
                "quick": args.quick}
    write_result("steering_overhead", settings, times, ratios, goals, out=args.out,
                 batched_equals_one_by_one=same)
    print_table("steering overhead", [(k, med[k], min(v), max(v), "") for k, v in times.items()])
    for key, value in ratios.items():
        print(f"{key:45s} {value:.3f}")
    print(f"batched sweep gives the same per-item outcomes as one by one: {same}")
    print_goals(goals)


if __name__ == "__main__":
    main()
