"""SAE metrics on held-out tokens, under sae-lens's own definitions (``sae_lens.evals``), and
the latent density histogram.

Definitions (``x`` = activations ``[N, d]``, ``x_hat`` = SAE reconstruction, ``f`` = latents),
as ``sae_lens.evals.get_sparsity_and_variance_metrics`` / ``get_recons_loss`` compute them:
- ``l0``: mean over tokens of the number of non-zero latents.
- ``explained_variance``: ``1 - mean_t ||x_t - x_hat_t||^2 / (mean_t ||x_t||^2 - ||mean_t x_t||^2)``
  (sae-lens's ``ExplainedVarianceCalculator``).
- ``mse``: mean over tokens of ``||x - x_hat||^2`` summed over dimensions (sae-lens's ``mse``).
- ``dead_fraction``: fraction of latents that never fire on the held-out tokens.
- ``ce_loss_recovered`` (sae-lens's ``ce_loss_score``): ``(L_zero - L_sae) / (L_zero - L_clean)``
  where ``L`` is the model's mean next-token loss with the block output replaced by the SAE
  reconstruction at the stream's tokens (``L_sae``; not padding, not BOS when the stream drops
  it, as sae-lens skips special tokens), by zeros at EVERY position (``L_zero``, BOS included, as
  sae-lens), or untouched (``L_clean``), counted at positions whose input token is a stream
  token (sae-lens drops the losses at special tokens) and whose target is a real token.
- ``ce_loss_recovered_answer_tokens`` (liref's variant, only with ``last_n``): the same three
  losses counted at each sequence's last ``last_n`` tokens only (the organism's answer and
  newline, all it was trained to predict).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probing.batching import model_device
from probing.errors import LirefError
from probing.model.hooks import modify_residual

__all__ = [
    "METRIC_KEYS",
    "CELossResult",
    "ReconstructionMetrics",
    "ce_loss_recovered",
    "plot_latent_density",
    "reconstruction_metrics",
    "splice_block_output",
]

#: Keys every SAE run writes to ``metrics.json``.
METRIC_KEYS = ("l0", "explained_variance", "mse", "dead_fraction", "ce_loss_recovered")


def _sae_forward(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents [N, d_sae], reconstruction [N, d])`` in float32."""
    p = next(sae.parameters())
    feats = sae.encode(x.to(p.device, p.dtype))
    recon = sae.decode(feats)
    return feats.float(), recon.float()


@dataclass
class ReconstructionMetrics:
    """Reconstruction and sparsity on held-out tokens; ``latent_density`` is ``[d_sae]``."""

    l0: float
    explained_variance: float
    mse: float
    dead_fraction: float
    n_tokens: int
    latent_density: torch.Tensor

    def scalars(self) -> dict[str, float]:
        d = asdict(self)
        d.pop("latent_density")
        return d


@torch.no_grad()
def reconstruction_metrics(
    sae: Any, batches: Iterable[torch.Tensor], max_tokens: int | None = None
) -> ReconstructionMetrics:
    """Stream ``[n, d]`` activation batches through the SAE; sums kept in float64."""
    n = 0
    sq_err = 0.0
    l0_sum = 0.0
    sum_x: torch.Tensor | None = None
    sum_x2 = 0.0
    fires: torch.Tensor | None = None
    for x in batches:
        if max_tokens is not None:
            x = x[: max_tokens - n]
        if x.shape[0] == 0:
            break
        feats, recon = _sae_forward(sae, x)
        xf = x.to(recon.device, torch.float64)
        sq_err += (recon.double() - xf).pow(2).sum().item()
        sum_x = xf.sum(0) if sum_x is None else sum_x + xf.sum(0)
        sum_x2 += xf.pow(2).sum().item()
        active = feats != 0
        l0_sum += active.sum().item()
        counts = active.sum(0).double().cpu()
        fires = counts if fires is None else fires + counts
        n += x.shape[0]
        if max_tokens is not None and n >= max_tokens:
            break
    if n == 0 or sum_x is None or fires is None:
        raise LirefError("no held-out tokens to evaluate the SAE on")
    total_var = sum_x2 - (sum_x.pow(2).sum().item() / n)
    ev = 1.0 - sq_err / total_var if total_var > 0 else float("nan")
    density = (fires / n).float()
    return ReconstructionMetrics(
        l0=l0_sum / n,
        explained_variance=ev,
        mse=sq_err / n,
        dead_fraction=float((fires == 0).double().mean().item()),
        n_tokens=n,
        latent_density=density,
    )


@contextmanager
def splice_block_output(
    model: nn.Module, layer: int, replace: Any, positions: torch.Tensor | None = None
) -> Iterator[None]:
    """While active, block ``layer``'s output ``h [B, T, d]`` becomes ``replace(h)`` at
    ``positions`` (``[B, T]`` bool; ``None`` = everywhere). ``replace`` maps ``[n, d] -> [n, d]``.
    (A thin use of ``probing.model.hooks.modify_residual``.)
    """

    def edit(h: torch.Tensor) -> torch.Tensor:
        mask = positions.to(h.device) if positions is not None else torch.ones(
            h.shape[:2], dtype=torch.bool, device=h.device)
        new = h.clone()
        new[mask] = replace(h[mask]).to(h.device, h.dtype)
        return new

    with modify_residual(model, {layer: edit}):
        yield


@dataclass
class CELossResult:
    """Mean next-token losses (nats) and the fraction recovered (sae-lens's ``ce_loss_score``);
    the ``_answer_tokens`` variants only when counted on each sequence's last tokens."""

    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_recovered: float
    n_ce_tokens: int
    ce_loss_clean_answer_tokens: float | None = None
    ce_loss_sae_answer_tokens: float | None = None
    ce_loss_zero_answer_tokens: float | None = None
    ce_loss_recovered_answer_tokens: float | None = None
    n_ce_answer_tokens: int | None = None


def _token_losses(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` next-token cross-entropy at every position (target = the next token)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    tgt = ids[:, 1:]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                           reduction="none").view_as(tgt)


def _recovered(clean: float, sae: float, zero: float) -> float:
    denom = zero - clean
    return (zero - sae) / denom if abs(denom) > 1e-12 else float("nan")


@torch.no_grad()
def ce_loss_recovered(
    model: nn.Module,
    sae: Any,
    layer: int,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    bos_id: int | None = None,
    drop_bos: bool = True,
    max_batches: int | None = None,
    last_n: int | None = None,
) -> CELossResult:
    """CE loss recovered over right-padded ``(input_ids [B, T], attention_mask [B, T])`` batches
    (sae-lens's ``ce_loss_score``; see the module docstring). With ``last_n`` the
    ``..._answer_tokens`` fields count only each sequence's last ``last_n`` tokens."""
    from probing.activations.tokens import token_mask

    device = model_device(model)
    sums = {k: 0.0 for k in ("clean", "sae", "zero", "clean_a", "sae_a", "zero_a")}
    count = count_a = 0

    def recon(h: torch.Tensor) -> torch.Tensor:
        return _sae_forward(sae, h)[1]

    for i, (ids, mask) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        ids, mask = ids.to(device), mask.to(device)
        stream = token_mask(ids, mask, bos_id, drop_bos)
        counted = stream[:, :-1] & mask[:, 1:].bool()
        answer = None
        if last_n is not None:
            lengths = mask.sum(1, keepdim=True)  # right padded
            target_pos = torch.arange(1, ids.shape[1], device=device).unsqueeze(0)
            answer = mask[:, 1:].bool() & mask[:, :-1].bool() & (target_pos >= lengths - last_n)
        losses = {"clean": _token_losses(model, ids, mask)}
        with splice_block_output(model, layer, recon, stream):
            losses["sae"] = _token_losses(model, ids, mask)
        with splice_block_output(model, layer, torch.zeros_like, None):  # every position
            losses["zero"] = _token_losses(model, ids, mask)
        for key, value in losses.items():
            sums[key] += float(value[counted].sum().item())
            if answer is not None:
                sums[f"{key}_a"] += float(value[answer].sum().item())
        count += int(counted.sum().item())
        if answer is not None:
            count_a += int(answer.sum().item())
    if count == 0:
        raise LirefError("no held-out tokens to compute the CE loss on")
    clean, sae_l, zero = (sums[k] / count for k in ("clean", "sae", "zero"))
    out = CELossResult(clean, sae_l, zero, _recovered(clean, sae_l, zero), count)
    if last_n is not None and count_a:
        ca, sa, za = (sums[k] / count_a for k in ("clean_a", "sae_a", "zero_a"))
        out.ce_loss_clean_answer_tokens, out.ce_loss_sae_answer_tokens = ca, sa
        out.ce_loss_zero_answer_tokens = za
        out.ce_loss_recovered_answer_tokens = _recovered(ca, sa, za)
        out.n_ce_answer_tokens = count_a
    return out


def plot_latent_density(density: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Histogram of log10 latent firing density ``[d_sae]`` (dead latents counted apart);
    writes a PNG."""
    from probing.figures import agg_figure, save_png

    dens = density.double()
    alive = dens[dens > 0]
    n_dead = int((dens == 0).sum().item())
    fig, ax = agg_figure(figsize=(5, 3.2))
    if alive.numel():
        ax.hist(torch.log10(alive).numpy(), bins=50, color="tab:blue")
    ax.set_xlabel("log10 firing density on held-out tokens")
    ax.set_ylabel("latents")
    ax.set_title(f"{title + ': ' if title else ''}{n_dead} of {dens.numel()} latents dead",
                 fontsize=9)
    return save_png(fig, path, dpi=100)
