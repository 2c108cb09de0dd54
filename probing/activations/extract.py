"""Residual-stream activations of prompts, and their on-disk cache.

``extract_activations`` returns ``[N, len(layers), d_model]`` float32, rows in prompt order.
Layer ``l`` = output of decoder block ``l`` = HF ``hidden_states[l + 1]`` for every block but the
last (HF applies the final norm to its last ``hidden_states`` entry; liref never does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from probing.batching import pad_right
from probing.errors import LirefError
from probing.model.hooks import check_layers, forward_residual

log = logging.getLogger(__name__)

__all__ = ["POSITIONS", "Position", "extract_activations", "pool_positions",
           "tokenize_prompts"]

Position = Literal["last", "mean"]
POSITIONS: tuple[str, ...] = ("last", "mean")


def tokenize_prompts(tokenizer: object, prompts: Sequence[str], add_special_tokens: bool = True,
                     ) -> list[list[int]]:
    """Token ids of each prompt, unpadded. ``add_special_tokens=False`` for prompts that already
    hold them (a chat template's rendered string starts with its own BOS)."""
    if len(prompts) == 0:
        raise LirefError("no prompts to extract activations from (the question set is empty)")
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]  # type: ignore[operator]
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise LirefError(f"prompt {i} ({prompts[i]!r}) has no tokens")
    return [list(ids) for ids in encoded]




def pool_positions(hidden: torch.Tensor, mask: torch.Tensor, position: str) -> torch.Tensor:
    """``[B, T, d]`` -> ``[B, d]``: the last real token, or the mean over real tokens."""
    mask = mask.to(hidden.device)
    if position == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if position == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1)
    raise LirefError(f"unknown position {position!r}; allowed: {list(POSITIONS)}")


@torch.no_grad()
def extract_activations(
    model: nn.Module,
    tokenizer: object,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    position: str = "last",
    batch_size: int = 8,
    progress: bool = True,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Residual activations at one position of each prompt.

    Args:
        prompts: N prompt strings (already templated, e.g. ``"Q: ...\\nA: "``).
        layers: block indices (``None`` = all); layer l = output of decoder block l.
        position: ``"last"`` (last prompt token) or ``"mean"`` (mean over the prompt's tokens).
        batch_size: prompts per forward pass; batches are sorted by length (less padding) and
            the forward pass stops after the last requested block.
        add_special_tokens: let the tokenizer add BOS etc.; False for chat-templated prompts.

    Returns:
        ``[N, len(layers), d_model]`` float32 on CPU, rows in the order of ``prompts``.
    """
    if position not in POSITIONS:
        raise LirefError(f"unknown position {position!r}; allowed: {list(POSITIONS)}")
    if batch_size < 1:
        raise LirefError(f"batch_size must be >= 1, got {batch_size}")
    layers = check_layers(model, layers)
    token_ids = tokenize_prompts(tokenizer, prompts, add_special_tokens)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    out: torch.Tensor | None = None
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="activations", disable=not progress or len(batches) < 4):
        idx = order[start : start + batch_size]
        input_ids, mask = pad_right([token_ids[i] for i in idx], pad_id)
        store = forward_residual(model, input_ids, mask, layers)
        # Pool each layer on its own device, move it to the CPU, then stack: under a multi-device
        # device_map the blocks (and so their outputs) live on different GPUs.
        pooled = torch.stack([pool_positions(store[layer], mask, position).float().cpu()
                              for layer in layers], 1)
        if out is None:
            out = torch.empty((len(prompts), len(layers), pooled.shape[-1]), dtype=torch.float32)
        out[torch.tensor(idx)] = pooled
    assert out is not None
    return out
