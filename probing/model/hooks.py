"""Forward hooks on decoder blocks: record the residual stream, stop early, modify it.

Layer ``l`` = output of decoder block ``l`` = HF ``hidden_states[l + 1]`` (except HF's last
entry, to which HF applies the final norm). Because these are our own hooks on the blocks, they
also see the residual stream while a steering intervention (another hook) is active: modifying
hooks are registered first in the block's hook order, so recording always sees the modified
stream.

Modify (``modify_sites`` / ``modify_residual``): an edit ``[B, T, d] -> [B, T, d]`` replaces a
site's tensor during every forward pass while the context is active. Sites of block ``l``:
``block_out`` (its output = layer ``l``), ``block_in`` (its input hidden states, a pre-hook),
``attn_out`` and ``mlp_out`` (the outputs of its attention and MLP submodules).

Positions (``track_positions``): which absolute token columns a forward pass covers, also under
a KV cache (a cached step sees only its new tokens) and inside ``generate`` (whose first pass is
the prompt), so that "prompt" / "generated" masks are the same with and without a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probing.batching import model_device
from probing.errors import LirefError
from probing.model.blocks import decoder_layers

__all__ = [
    "SITES",
    "Edit",
    "ForwardPositions",
    "StopForward",
    "block_output",
    "check_layers",
    "decoder_stack",
    "forward_residual",
    "modify_residual",
    "modify_sites",
    "record_residual",
    "replace_block_output",
    "site_module",
    "track_positions",
]

#: Where an edit can act in decoder block ``l`` (see the module docstring).
SITES: tuple[str, ...] = ("block_out", "block_in", "attn_out", "mlp_out")
#: Attribute names of a block's attention / MLP submodule across families, tried in order.
ATTENTION_NAMES: tuple[str, ...] = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES: tuple[str, ...] = ("mlp", "feed_forward", "ffn")

#: A modification of one site's hidden states: ``[B, T, d] -> [B, T, d]`` (same dtype/device).
Edit = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by the hook on the last needed block to end the forward pass early."""


def block_output(output: object) -> torch.Tensor:
    """The hidden-state tensor ``[B, T, d]`` of a block's output (a tensor or a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[return-value]


def replace_block_output(output: object, new: torch.Tensor) -> object:
    """``output`` (a tensor, tuple or list) with its hidden-state tensor replaced by ``new``."""
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


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


# ----------------------------------------------------------------------------- modify


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns the decoder blocks (e.g. ``model.model`` of a Llama, ``transformer``
    of GPT-2): its forward pass sees ``input_ids``, ``attention_mask`` and the KV cache."""
    blocks = decoder_layers(model)
    for module in model.modules():
        if any(child is blocks for child in module.children()):
            return module
    raise LirefError(f"cannot find the module holding the decoder blocks of "
                     f"{type(model).__name__}")


def site_module(model: nn.Module, layer: int, site: str) -> nn.Module:
    """The module whose output (or, for ``block_in``, input) is ``site`` of block ``layer``."""
    if site not in SITES:
        raise LirefError(f"unknown site {site!r}; allowed: {list(SITES)}")
    (layer,) = check_layers(model, [layer])
    block = decoder_layers(model)[layer]
    if site in ("block_out", "block_in"):
        return block
    names = ATTENTION_NAMES if site == "attn_out" else MLP_NAMES
    for name in names:
        sub = getattr(block, name, None)
        if isinstance(sub, nn.Module):
            return sub
    children = [name for name, _ in block.named_children()]
    raise LirefError(f"cannot locate the {'attention' if site == 'attn_out' else 'MLP'} "
                     f"submodule of {type(block).__name__} (looked for {list(names)}; its "
                     f"children are {children}); site {site!r} is not available for this model")


def _output_hook(edit: Edit):
    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        return replace_block_output(output, edit(block_output(output)))

    return hook


def _input_hook(edit: Edit):
    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        if "hidden_states" not in kwargs:
            raise LirefError("block_in edit: the block was called without hidden states")
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    return hook


@contextmanager
def modify_sites(model: nn.Module, edits: Sequence[tuple[int, str, Edit]]) -> Iterator[None]:
    """While active, ``site`` of block ``layer`` becomes ``edit(hidden [B, T, d])`` for each
    ``(layer, site, edit)``; several edits on one site run in the given order. The hooks run
    before any other hook on the same module and are removed on exit, also after an exception.
    """
    handles = []
    try:
        # prepend=True puts a hook first; registering in reverse keeps the given order
        for layer, site, edit in reversed(list(edits)):
            module = site_module(model, layer, site)
            if site == "block_in":
                handles.append(module.register_forward_pre_hook(
                    _input_hook(edit), with_kwargs=True, prepend=True))
            else:
                handles.append(module.register_forward_hook(_output_hook(edit), prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def modify_residual(model: nn.Module, edits: Mapping[int, Edit]) -> Iterator[None]:
    """``modify_sites`` on block outputs: ``{layer: edit}``, layer ``l`` = output of block l."""
    with modify_sites(model, [(layer, "block_out", edit) for layer, edit in edits.items()]):
        yield


# ----------------------------------------------------------------------------- positions


@dataclass
class ForwardPositions:
    """The token columns of the forward pass in progress (updated by ``track_positions``).

    Columns are absolute indices in the padded sequence the model has seen so far: a forward
    pass covers ``offset .. offset + width - 1`` (``offset`` = tokens already in the KV cache).
    Columns ``< prompt_width`` are the prompt: inside ``generate``, the width of its first
    forward pass (the left-padded prompt); outside it, a pass that starts at column 0 is all
    prompt. ``prompt_lengths`` (``[B]``), when set by the caller, overrides it per row (e.g.
    right-padded teacher-forced rows ``prompt + answer``).
    """

    offset: int = 0
    width: int = 0
    batch: int = 0
    prompt_width: int = 0
    prompt_lengths: torch.Tensor | None = None
    in_generate: int = 0
    _fresh: bool = True

    def columns(self, device: torch.device | None = None) -> torch.Tensor:
        """``[width]`` absolute column indices of the current pass."""
        return torch.arange(self.offset, self.offset + self.width, device=device)

    def prompt_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """``[1, width]`` (or ``[B, width]`` with ``prompt_lengths``) bool: prompt columns."""
        cols = self.columns(device).unsqueeze(0)
        if self.prompt_lengths is not None:
            return cols < self.prompt_lengths.to(device).reshape(-1, 1)
        return cols < self.prompt_width


def _past_length(kwargs: Mapping[str, Any], width: int) -> int:
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return int(mask.shape[1]) - width
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            return int(cache[0][0].shape[-2])  # legacy ((k, v), ...) with k [B, H, T, dh]
    return 0


@contextmanager
def track_positions(model: nn.Module) -> Iterator[ForwardPositions]:
    """While active, the yielded ``ForwardPositions`` describes each forward pass through the
    decoder stack (a pre-hook reads ``input_ids`` / ``inputs_embeds``, the 2-D attention mask or
    the KV cache) and ``model.generate`` marks where its prompt ends. Restored on exit."""
    state = ForwardPositions()
    stack = decoder_stack(model)

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if not isinstance(x, torch.Tensor):
            raise LirefError("track_positions: the decoder stack was called without input_ids "
                             "or inputs_embeds")
        state.batch, state.width = int(x.shape[0]), int(x.shape[1])
        state.offset = _past_length(kwargs, state.width)
        if state.in_generate:
            if state._fresh:
                state.prompt_width, state._fresh = state.offset + state.width, False
        elif state.offset == 0:
            state.prompt_width = state.width

    handle = stack.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
    own = "generate" in model.__dict__
    previous = model.__dict__.get("generate")
    generate = getattr(model, "generate", None)
    if generate is not None:
        def steered_generate(*args: Any, **kwargs: Any) -> Any:
            state.in_generate += 1
            state._fresh = True
            try:
                return generate(*args, **kwargs)
            finally:
                state.in_generate -= 1

        model.generate = steered_generate  # type: ignore[method-assign]
    try:
        yield state
    finally:
        handle.remove()
        if generate is not None:
            if own:
                model.generate = previous  # type: ignore[method-assign]
            else:
                del model.generate
