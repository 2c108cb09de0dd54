"""Presets: interventions that reproduce a published recipe exactly.

``released_code``: the paper's released code (Hong et al. 2025) steers by rescaling the
projection on one layer's LiReF, ``h <- h + s * (h . r_hat) r_hat`` (default ``s = 0.1``), as a
pre-hook on the input of every decoder block and as a hook on every attention output and every
MLP output of every block, at all positions, with the same direction everywhere. (Its "layer l"
is HF ``hidden_states[l]``, index 0 = the embeddings: one less than our layer l = output of
block l. Pass the direction of the layer you mean in our convention.)
"""

from __future__ import annotations

import torch

from probing.steering.interventions import ScaleProjection

__all__ = ["RELEASED_CODE_SITES", "released_code"]

#: Where the released code hooks every block: its input, its attention and its MLP output.
RELEASED_CODE_SITES: tuple[str, ...] = ("block_in", "attn_out", "mlp_out")


def released_code(direction: torch.Tensor, scale: float = 0.1) -> list[ScaleProjection]:
    """The released code's intervention: one ``ScaleProjection`` on every block's input,
    attention output and MLP output, all positions, ``direction`` ``[d]`` everywhere."""
    return [ScaleProjection(None, direction, scale, site=RELEASED_CODE_SITES, positions="all")]
