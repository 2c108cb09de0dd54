"""Batched greedy decoding for any HuggingFace causal LM.

Prompts are sorted by length, left-padded (``model.generate`` derives position ids from the
attention mask), decoded greedily, cut at the first ``stop_at`` and returned in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["StopOnString", "greedy_generate"]

log = logging.getLogger(__name__)


class StopOnString:
    """Stopping criterion: a row is done once its new text contains ``stop``.

    Called by ``generate`` with ``input_ids`` [batch, prompt + new] and returns a bool [batch].
    """

    def __init__(self, tokenizer: Any, prompt_len: int, stop: str) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_len :], skip_special_tokens=True
        )
        return torch.tensor([self.stop in t for t in texts], device=input_ids.device)


def _device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_at: str | None = "\n",
    on_batch: Callable[[list[int]], None] | None = None,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts`` (the new text only, cut before ``stop_at``).

    Args:
        model: a HF causal LM (``generate`` available).
        tokenizer: its tokenizer; needs a pad token (``probing.load_model`` sets one).
        prompts: N prompt strings (special tokens added as the tokenizer does by default).
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call.
        stop_at: stop a row once its completion contains this string and cut the completion
            there; ``None`` generates up to ``max_new_tokens`` (or EOS).
        on_batch: called with the indices (into ``prompts``) of each batch's rows, in row
            order, before that batch is generated (e.g. to give each row its steering setting).
        add_special_tokens: let the tokenizer add BOS etc.; False for chat-templated prompts
            (they hold their own).

    Returns:
        N completion strings, in the order of ``prompts``.
    """
    from transformers import StoppingCriteriaList

    if batch_size <= 0 or max_new_tokens <= 0:
        from probing.errors import LirefError

        raise LirefError(
            f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be > 0"
        )
    prompts = list(prompts)
    out: list[str] = [""] * len(prompts)
    if not prompts:
        return out
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    device = _device(model)
    lengths = [len(tokenizer(p, add_special_tokens=add_special_tokens).input_ids)
               for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if on_batch is not None:
                on_batch(list(idx))
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            prompt_len = enc["input_ids"].shape[1]
            criteria = None
            if stop_at is not None:
                criteria = StoppingCriteriaList([StopOnString(tokenizer, prompt_len, stop_at)])
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                stopping_criteria=criteria,
            )
            texts = tokenizer.batch_decode(gen[:, prompt_len:], skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                if stop_at is not None and stop_at in text:
                    text = text[: text.index(stop_at)]
                out[i] = text
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out
