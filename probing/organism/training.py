"""Train, evaluate, save and locate the model organism (a tiny ``LlamaForCausalLM``).

Training: an optional prelude of ``TrainConfig.prelude_steps`` steps from ``prelude_mix`` at
the easiest level (by default in-context lookups over 2 pairs, whose induction circuit forms
only after a long plateau), then ``steps`` steps whose batches are sampled from the corpus
streams (weights ``TrainConfig.mix``) with an arithmetic/list/lookup curriculum from 1 to
``max_steps`` operations. Cross-entropy on the answer token and the newline after it only
(answer-only loss); AdamW with linear warm-up, a constant rate through the prelude, then
cosine decay. Checkpoints are written to a temp folder and renamed into place.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from probing.io import file_lock, read_json, remove_orphans
from probing.organism.config import KINDS, OrganismConfig
from probing.organism.corpus import Corpus, Item, format_prompt
from probing.organism.store import ORGANISM_FILE, save_checkpoint
from probing.organism.tokenizer import BOS, EOS, NEWLINE, PAD, SPECIAL_TOKENS, vocab_of

__all__ = [
    "batch_items",
    "build_model",
    "encode_items",
    "evaluate_organism",
    "replay_training_stream",
    "teacher_forced_accuracy",
    "train_and_save",
    "train_organism",
]

log = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]

#: steps between checks of the prelude's stopping accuracy
PRELUDE_CHECK_EVERY = 50


def build_model(cfg: OrganismConfig, vocab_size: int) -> nn.Module:
    """A freshly initialised ``LlamaForCausalLM`` of shape ``cfg.model`` (seeded by caller)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_heads,
        max_position_embeddings=m.max_positions,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
    )
    return LlamaForCausalLM(config)


def encode_items(
    vocab: Mapping[str, int], items: Sequence[Item], with_answer: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids of ``Q: q\\nA: a\\n`` (or of the prompt only).

    Returns:
        ``input_ids`` [B, T], ``attention_mask`` [B, T], ``answer_pos`` [B]: the position of the
        last prompt token (its next-token prediction is the answer).
    """
    seqs: list[list[int]] = []
    pos: list[int] = []
    for it in items:
        ids = [vocab["Q:"], *(vocab[w] for w in it.question.split()), vocab[NEWLINE],
               vocab["##A:"]]
        pos.append(len(ids) - 1)
        if with_answer:
            ids += [vocab[it.answer], vocab[NEWLINE]]
        seqs.append(ids)
    width = max(len(s) for s in seqs)
    pad = vocab[PAD]
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return input_ids, mask, torch.tensor(pos)


def _loss(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
          pos: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer token and the newline after it."""
    hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    rows = torch.arange(len(pos)).repeat(2)
    cols = torch.cat([pos, pos + 1])
    logits = model.lm_head(hidden[rows, cols])  # [2B, V]
    return nn.functional.cross_entropy(logits, input_ids[rows, cols + 1])


@torch.no_grad()
def teacher_forced_accuracy(model: nn.Module, vocab: Mapping[str, int],
                            items: Sequence[Item]) -> float:
    """Share of items whose argmax answer and following newline are both right
    (equals greedy exact match for one-word answers)."""
    if not items:
        return float("nan")
    input_ids, mask, pos = encode_items(vocab, items)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    rows = torch.arange(len(pos))
    ok = (logits[rows, pos].argmax(-1) == input_ids[rows, pos + 1]) & (
        logits[rows, pos + 1].argmax(-1) == input_ids[rows, pos + 2]
    )
    return ok.float().mean().item()


def _lr_factor(step: int, cfg: OrganismConfig, prelude_end: int | None) -> float:
    """Multiplier of the base rate at ``step`` (``train.prelude_lr`` while the prelude runs,
    ``train.lr`` after): linear warm-up, constant while the prelude runs (``prelude_end is
    None``), then cosine decay over the ``train.steps`` after it."""
    t = cfg.train
    if step < t.warmup:
        return (step + 1) / t.warmup
    if prelude_end is None:
        return 1.0
    start = max(t.warmup, prelude_end)
    frac = (step - start) / max(1, prelude_end + t.steps - start)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _prelude_probe(corpus: Corpus, cfg: OrganismConfig, n: int) -> list[Item]:
    """Fixed items of the prelude streams at the easiest level: the prelude ends once the
    model answers ``train.prelude_target`` of them (teacher-forced)."""
    rng = random.Random(f"liref-organism-{cfg.seed}-prelude-probe")
    streams, weights = zip(*cfg.train.prelude_mix.items(), strict=True)
    return [corpus.sample_train(rng, s, 0.0) for s in rng.choices(streams, weights, k=n)]


def _probes(corpus: Corpus, n: int) -> dict[str, list[Item]]:
    """Small fixed held-out subsets for the quick accuracy logs during training: one per kind,
    one per reasoning task (``reasoning_<task>``) and the exceptions in trained phrasings
    (``exception_trained``)."""
    rng = random.Random(0)
    out = {}
    for kind in KINDS:
        items = corpus.split("test", kind)
        out[kind] = rng.sample(items, min(n, len(items)))
    trained = corpus.split("train", "exception")
    out["exception_trained"] = rng.sample(trained, min(n, len(trained)))
    for task in corpus.config.reasoning_tasks:
        items = [it for it in corpus.split("test", "reasoning") if it.task == task]
        out[f"reasoning_{task}"] = rng.sample(items, min(n, len(items)))
    return out


def _train_rng(cfg: OrganismConfig) -> random.Random:
    return random.Random(f"liref-organism-{cfg.seed}-train-stream")


def batch_items(corpus: Corpus, cfg: OrganismConfig, rng: random.Random, step: int,
                prelude_end: int | None) -> tuple[list[Item], float]:
    """The items of training step ``step`` (0-based) and their curriculum hardness: from
    ``prelude_mix`` at hardness 0 while the prelude runs (``prelude_end is None``), then from
    ``mix`` with hardness growing over the first ``curriculum`` share of the main steps."""
    t = cfg.train
    if prelude_end is None:
        streams, weights = zip(*t.prelude_mix.items(), strict=True)
        hardness = 0.0
    else:
        streams, weights = zip(*t.mix.items(), strict=True)
        hardness = (1.0 if t.curriculum <= 0
                    else min(1.0, (step - prelude_end) / (t.curriculum * t.steps)))
    chosen = rng.choices(streams, weights=weights, k=t.batch_size)
    return [corpus.sample_train(rng, s, hardness) for s in chosen], hardness


def replay_training_stream(cfg: OrganismConfig, prelude_steps_run: int, steps: int | None = None,
                           corpus: Corpus | None = None) -> Iterator[Item]:
    """Every item training ``cfg`` sees, in order, given the step at which its prelude ended
    (``prelude_steps_run``, in the checkpoint's metrics.json; 0 without a prelude): the same
    seeded draws as ``train_organism``. ``steps`` stops after that many steps (default: all)."""
    corpus = corpus or Corpus(cfg.corpus, cfg.seed)
    rng = _train_rng(cfg)
    total = prelude_steps_run + cfg.train.steps if steps is None else steps
    for step in range(total):
        prelude_end = prelude_steps_run if step >= prelude_steps_run else None
        yield from batch_items(corpus, cfg, rng, step, prelude_end)[0]


def train_organism(
    cfg: OrganismConfig,
    log_fn: LogFn | None = None,
    progress: bool = True,
) -> tuple[nn.Module, Corpus, dict[str, float]]:
    """Train an organism from scratch (deterministic for ``cfg.seed`` on a given machine).

    Returns:
        ``(model, corpus, stats)`` with ``stats`` = ``train_seconds`` (wall),
        ``train_cpu_seconds`` (this process's CPU time: on a shared machine closer to what
        an idle one would take with 1 thread), ``final_loss``, ``prelude_steps_run``.
    """
    t = cfg.train
    corpus = Corpus(cfg.corpus, cfg.seed)
    vocab = vocab_of(corpus.vocabulary)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(t.threads)
    torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls down 10x
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, len(vocab))
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=(0.9, 0.98), eps=1e-8,
        )
        rng = _train_rng(cfg)
        probes = _probes(corpus, 64)
        prelude_probe = _prelude_probe(corpus, cfg, 128) if t.prelude_steps else []
        #: step at which the prelude ended (None while it runs)
        prelude_end: int | None = None if t.prelude_steps else 0
        start, start_cpu = time.perf_counter(), time.process_time()
        ema: float | None = None
        bar = tqdm(total=t.prelude_steps + t.steps, desc="organism", disable=not progress,
                   mininterval=2.0)
        step = 0
        while prelude_end is None or step < prelude_end + t.steps:
            in_prelude = prelude_end is None and t.prelude_lr is not None
            base_lr = t.prelude_lr if in_prelude else t.lr
            lr = base_lr * _lr_factor(step, cfg, prelude_end)
            for group in opt.param_groups:
                group["lr"] = lr
            items, hardness = batch_items(corpus, cfg, rng, step, prelude_end)
            input_ids, mask, pos = encode_items(vocab, items)
            loss = _loss(model, input_ids, mask, pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            step += 1
            bar.update(1)
            value = loss.item()
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            row: dict[str, float] = {}
            if prelude_end is None and (step % PRELUDE_CHECK_EVERY == 0
                                        or step == t.prelude_steps):
                model.eval()
                acc = teacher_forced_accuracy(model, vocab, prelude_probe)
                model.train()
                if acc >= t.prelude_target or step == t.prelude_steps:
                    prelude_end = step
                    bar.total = prelude_end + t.steps
                    row["train/prelude_accuracy"] = acc
                    log.info("prelude ended at step %d (accuracy %.3f)", step, acc)
            if step % t.eval_every == 0 or step == prelude_end or (
                    prelude_end is not None and step == prelude_end + t.steps):
                model.eval()
                row.update({"train/loss": ema, "train/lr": lr, "train/hardness": hardness})
                for name, its in probes.items():
                    row[f"quick/accuracy_{name}"] = teacher_forced_accuracy(model, vocab, its)
                model.train()
                bar.set_postfix(loss=f"{ema:.3f}", mem=f"{row['quick/accuracy_memory']:.2f}",
                                rea=f"{row['quick/accuracy_reasoning']:.2f}")
                log.info("step %d: %s", step, ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
            if row and log_fn is not None:
                log_fn(row, step)
        bar.close()
        train_seconds = time.perf_counter() - start
        train_cpu_seconds = time.process_time() - start_cpu
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(False)
    model.eval()
    return model, corpus, {"train_seconds": train_seconds,
                           "train_cpu_seconds": train_cpu_seconds,
                           "final_loss": float(ema or 0.0),
                           "prelude_steps_run": float(prelude_end or 0)}


def evaluate_organism(
    model: nn.Module,
    tokenizer: Any,
    corpus: Corpus,
    split: str = "test",
    n_per_kind: int | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    """Greedy exact-match accuracy per kind (and per reasoning task) on ``split``.

    Returns ``accuracy_{memory,reasoning,mixed,ordinary}``, ``accuracy_reasoning_{task}``,
    ``accuracy_arithmetic_{k}step``, ``accuracy_exception_memory`` (exceptions answered with
    their memory answer), ``rule_rate_exception`` (with the computed answer), and on the test
    split ``accuracy_near_exception`` and ``stale_rate_near_exception`` (near-exceptions
    answered with the related exception's memory answer).
    """
    from probing.evaluation.generation import greedy_generate

    metrics: dict[str, float] = {}
    for kind in KINDS:
        items = corpus.split(split, kind)
        if not items:
            continue
        if n_per_kind is not None:
            items = random.Random(0).sample(items, min(n_per_kind, len(items)))
        outs = [o.strip() for o in greedy_generate(
            model, tokenizer, [format_prompt(it.question) for it in items], max_new_tokens=3,
            batch_size=batch_size)]
        ok = [o == it.answer for o, it in zip(outs, items, strict=True)]
        name = "exception_memory" if kind == "exception" else kind
        metrics[f"accuracy_{name}"] = sum(ok) / len(ok)
        if kind == "reasoning":
            for task in corpus.config.reasoning_tasks:
                sel = [k for k, it in zip(ok, items, strict=True) if it.task == task]
                metrics[f"accuracy_reasoning_{task}"] = sum(sel) / max(1, len(sel))
            for steps in sorted({it.meta["steps"] for it in items if it.task == "arithmetic"}):
                sel = [k for k, it in zip(ok, items, strict=True)
                       if it.task == "arithmetic" and it.meta["steps"] == steps]
                metrics[f"accuracy_arithmetic_{steps}step"] = sum(sel) / max(1, len(sel))
        if kind == "exception":
            rule = [o == it.meta["rule_answer"] for o, it in zip(outs, items, strict=True)]
            metrics["rule_rate_exception"] = sum(rule) / len(rule)
        if kind == "near_exception":
            stale = [o == it.meta["stale_answer"] for o, it in zip(outs, items, strict=True)]
            metrics["stale_rate_near_exception"] = sum(stale) / len(stale)
    return metrics


def _hf_tokenizer(corpus: Corpus) -> Any:
    """The organism's HF tokenizer (built in memory, same as the saved one)."""
    from transformers import PreTrainedTokenizerFast

    from probing.organism.tokenizer import UNK, build_tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(corpus.vocabulary),
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        clean_up_tokenization_spaces=False, model_max_length=512,
    )


def train_and_save(
    cfg: OrganismConfig,
    folder: str | Path,
    log_fn: LogFn | None = None,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train an organism, evaluate it on the held-out test split (greedy exact match) and
    save it atomically to ``folder``; returns its metrics (also in ``folder/metrics.json``)."""
    model, corpus, stats = train_organism(cfg, log_fn=log_fn, progress=progress)
    tokenizer = _hf_tokenizer(corpus)
    metrics: dict[str, float] = {**evaluate_organism(model, tokenizer, corpus), **stats}
    metrics["n_params"] = float(sum(p.numel() for p in model.parameters()))
    save_checkpoint(model, corpus, cfg, folder, metrics=metrics, command=command)
    return metrics


def ensure_organism(
    cfg_dict: Mapping[str, Any] | None,
    retrain: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """The checkpoint folder to load for organism config ``cfg_dict``.

    The default config (``None`` or the committed checkpoint's config) without ``retrain``
    gives ``DEFAULT_CHECKPOINT``. Otherwise the organism is trained into
    ``cache_dir/organism-<config hash>/`` unless a complete one is already there. The check and
    the training hold the lock ``cache_dir/organism-<config hash>.lock``: parallel jobs asking
    for one config train it once (the others wait, then load it); temporary folders of a
    killed trainer are removed.
    """
    from probing.organism import DEFAULT_CHECKPOINT

    cfg = OrganismConfig.from_dict(cfg_dict)
    default_hash = None
    if (DEFAULT_CHECKPOINT / ORGANISM_FILE).is_file():
        default_hash = read_json(DEFAULT_CHECKPOINT / ORGANISM_FILE).get("config_hash")
    if not retrain and cfg.config_hash() == default_hash:
        return DEFAULT_CHECKPOINT
    root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "liref"
    folder = root.expanduser() / f"organism-{cfg.config_hash()}"
    with file_lock(folder.parent / f"{folder.name}.lock", what=str(folder)):
        if (folder / ORGANISM_FILE).is_file() and (folder / "config.json").is_file():
            log.info("organism %s found in cache: %s", cfg.config_hash(), folder)
            return folder
        remove_orphans(folder.parent, [f".{folder.name}.tmp-*", f".{folder.name}.old-*"])
        log.info("training organism %s into %s", cfg.config_hash(), folder)
        train_and_save(cfg, folder, progress=progress)
    return folder
