"""Batching helpers shared by every stage: right-padding token ids, a model's device."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["model_device", "pad_right"]


def model_device(model: nn.Module) -> torch.device:
    """Device of the input embeddings (where input ids must go)."""
    return model.get_input_embeddings().weight.device


def pad_right(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad: real tokens keep positions 0..len-1, so causal outputs equal unbatched ones."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask
