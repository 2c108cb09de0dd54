"""Forward hooks on decoder blocks: record the residual stream, stop early.

Layer ``l`` = output of decoder block ``l`` = HF ``hidden_states[l + 1]`` (except HF's last
entry, to which HF applies the final norm). Because these are our own hooks on the blocks, they
also see the residual stream while a steering intervention (another hook) is active.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from probing.errors import LirefError
from probing.models import decoder_layers, model_device

__all__ = ["StopForward", "check_layers", "forward_residual", "record_residual"]


class StopForward(Exception):
    """Raised by the hook on the last needed block to end the forward pass early."""


def block_output(output: object) -> torch.Tensor:
    """The hidden-state tensor ``[B, T, d]`` of a block's output (a tensor or a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[return-value]


def check_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Validate layer indices (``None`` = all); negative indices count from the end."""
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    out: list[int] = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise LirefError(f"layer {layer!r} is not an integer; valid layers are 0..{n - 1}")
        idx = layer + n if layer < 0 else layer
        if not 0 <= idx < n:
            raise LirefError(f"layer {layer} is out of range; this model has {n} decoder blocks, "
                             f"valid layers are 0..{n - 1} (or -{n}..-1)")
        out.append(idx)
    if not out:
        raise LirefError("no layers requested; give at least one layer or null for all")
    if len(set(out)) != len(out):
        raise LirefError(f"duplicate layers in {list(layers)}")
    return out


@contextmanager
def record_residual(
    model: nn.Module, layers: Sequence[int], early_exit: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """While active, each forward pass stores block ``l``'s output ``[B, T, d]`` in the dict.

    With ``early_exit`` the forward pass raises ``StopForward`` after the last requested block;
    use ``forward_residual`` (which catches it) rather than calling the model directly.
    """
    blocks = decoder_layers(model)
    layers = check_layers(model, layers)
    last = max(layers)
    store: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(idx: int):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            store[idx] = block_output(output).detach()
            if early_exit and idx == last:
                raise StopForward

        return hook

    try:
        for idx in layers:
            handles.append(blocks[idx].register_forward_hook(make_hook(idx)))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def forward_residual(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int],
    early_exit: bool = True,
) -> dict[int, torch.Tensor]:
    """One forward pass; returns ``{layer: [B, T, d]}`` residual activations (model dtype)."""
    device = model_device(model)
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    with record_residual(model, layers, early_exit=early_exit) as store:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
    return dict(store)
