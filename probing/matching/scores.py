"""SAE latents on labelled question sets: activations per prompt and per token, and the scores
that say which latents separate reasoning (label 1) from memory (label 0) items.

``encode_questions`` runs the model once over the prompts and keeps, at one layer (layer ``l``
= output of decoder block ``l``, HF ``hidden_states[l + 1]``):

- prompt level, at the probe's position (``last`` token or ``mean`` over the prompt, as in
  ``probing.activations.extract``): the residual ``x`` ``[N, d]`` and its latents ``f``
  ``[N, d_sae]``;
- token level, every real token of every prompt (padding and BOS dropped): the latents as a
  sparse table (``rows``/``cols``/``vals``) with each token's prompt, position and id, and the
  token's projection on the LiReF.

Scores: class mean difference, Cohen's d and AUROC per latent (``probing.stats``);
ReasonScore (arXiv 2503.18878); the share of the LiReF projection gap each latent carries;
firing density and max activation; top-activating examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probing.activations.extract import pool_positions, tokenize_prompts
from probing.batching import pad_right
from probing.errors import LirefError
from probing.model.hooks import check_layers, forward_residual
from probing.probes.directions import check_labels
from probing.stats import auroc, cohens_d

__all__ = [
    "LatentActivations",
    "TokenLatents",
    "class_scores",
    "encode_questions",
    "gap_decomposition",
    "prompt_readouts",
    "reason_scores",
    "sae_encode",
    "token_stats",
    "top_examples",
]


def _sae_device_dtype(sae: Any) -> tuple[torch.device, torch.dtype]:
    p = sae.W_dec
    return p.device, p.dtype


@torch.no_grad()
def sae_encode(sae: Any, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``sae.encode`` of ``x`` ``[n, d_in]`` in chunks -> ``[n, d_sae]`` float32 on CPU."""
    device, dtype = _sae_device_dtype(sae)
    if x.shape[0] == 0:
        return torch.zeros((0, int(sae.cfg.d_sae)))
    return torch.cat([sae.encode(x[i:i + chunk].to(device, dtype)).float().cpu()
                      for i in range(0, x.shape[0], chunk)])


@dataclass
class TokenLatents:
    """Latents of every token of every prompt, sparse: token ``t`` of prompt ``prompt[t]`` at
    position ``pos[t]`` (token id ``token[t]``); latent activations as ``(rows, cols, vals)``
    triplets (only non-zeros); ``proj[t]`` = the token's residual projected on the unit
    LiReF (when a direction was given)."""

    prompt: torch.Tensor  # [T] int64
    pos: torch.Tensor  # [T] int64
    token: torch.Tensor  # [T] int64
    rows: torch.Tensor  # [nnz] int64 (token index)
    cols: torch.Tensor  # [nnz] int64 (latent)
    vals: torch.Tensor  # [nnz] float32
    d_sae: int
    proj: torch.Tensor | None = None  # [T] float64

    @property
    def n_tokens(self) -> int:
        return int(self.prompt.shape[0])

    def column(self, latent: int) -> torch.Tensor:
        """``[T]`` activations of one latent (dense)."""
        out = torch.zeros(self.n_tokens)
        m = self.cols == latent
        out[self.rows[m]] = self.vals[m]
        return out

    def dense(self, latents: Sequence[int]) -> torch.Tensor:
        """``[T, len(latents)]`` activations of a few latents."""
        return torch.stack([self.column(int(i)) for i in latents], 1) if len(latents) else \
            torch.zeros((self.n_tokens, 0))

    def prompt_reduce(self, values: torch.Tensor, n_prompts: int, how: str) -> torch.Tensor:
        """Per-prompt ``max`` or ``mean`` of token ``values`` ``[T, k]`` -> ``[n_prompts, k]``
        (a prompt without tokens gets 0)."""
        k = values.shape[1]
        idx = self.prompt.unsqueeze(1).expand(-1, k)
        if how == "max":
            out = torch.full((n_prompts, k), -math.inf, dtype=values.dtype)
            out = out.scatter_reduce(0, idx, values, reduce="amax")
            return torch.where(torch.isfinite(out), out, torch.zeros_like(out))
        if how == "mean":
            total = torch.zeros((n_prompts, k), dtype=values.dtype).index_add_(0, self.prompt,
                                                                               values)
            count = torch.bincount(self.prompt, minlength=n_prompts).clamp_min(1)
            return total / count.unsqueeze(1).to(values.dtype)
        raise LirefError(f"unknown token readout {how!r}; allowed: 'max', 'mean'")


@dataclass
class LatentActivations:
    """What ``encode_questions`` returns (see the module docstring)."""

    prompts: list[str]
    token_ids: list[list[int]]  # every prompt's tokens, BOS included
    x: torch.Tensor  # [N, d] float32, residual at the probe position
    f: torch.Tensor  # [N, d_sae] float32, its latents
    tokens: TokenLatents
    position: str
    layer: int
    x_mean: torch.Tensor | None = None  # [N, d] residual mean-pooled over pooled tokens
    f_mean: torch.Tensor | None = None  # [N, d_sae] latents mean-pooled over pooled tokens

    def readout(self, latents: Sequence[int], how: str) -> torch.Tensor:
        """``[N, len(latents)]``: each latent per prompt, at the probe ``position`` or the
        ``max`` / ``mean`` over the prompt's tokens."""
        if how == "position":
            return self.f[:, list(latents)]
        return self.tokens.prompt_reduce(self.tokens.dense(latents), len(self.prompts), how)

    def direction_readout(self, r_hat: torch.Tensor, how: str) -> torch.Tensor:
        """``[N]``: the residual's projection on ``r_hat`` per prompt (position, max, mean)."""
        if how == "position":
            return self.x.double() @ r_hat.double()
        if self.tokens.proj is None:
            raise LirefError("token projections were not computed (no direction given)")
        return self.tokens.prompt_reduce(self.tokens.proj.unsqueeze(1), len(self.prompts),
                                         how)[:, 0]


@torch.no_grad()
def encode_questions(
    model: Any,
    tokenizer: Any,
    sae: Any,
    prompts: Sequence[str],
    layer: int,
    position: str = "last",
    direction: torch.Tensor | None = None,
    batch_size: int = 16,
    add_special_tokens: bool = True,
    drop_bos: bool = True,
    pool_exclude: Sequence[int] | None = None,
    progress: bool = True,
) -> LatentActivations:
    """One forward pass per batch of prompts; SAE latents at the prompt and token level.

    Args:
        prompts: N templated prompts. layer: decoder block (its output). position: where the
            prompt-level activation is read (``last`` / ``mean``, as the probe did).
        direction: ``[d]`` LiReF (any norm); each token's projection on its unit vector is kept.
        drop_bos: leave BOS and each prompt's first position (the attention sink) out of the
            token table (their residual is atypical; SAE training dropped them too).
        pool_exclude: when given, also ``x_mean`` / ``f_mean``: the residual and its latents
            (each token encoded, then averaged) mean-pooled over the prompt's non-padding
            tokens whose id is not in ``pool_exclude`` (SAEBench's pooling; a prompt left
            without tokens gets zeros). Pooled on the fly: no ``[N, T, d_sae]`` is kept.

    Returns:
        ``LatentActivations`` (prompt-level tensors in prompt order).
    """
    from probing.activations.tokens import token_mask

    (layer,) = check_layers(model, [layer])
    ids = tokenize_prompts(tokenizer, prompts, add_special_tokens)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    bos = getattr(tokenizer, "bos_token_id", None)
    r_hat = None
    if direction is not None:
        r_hat = direction.detach().to("cpu", torch.float64)
        r_hat = r_hat / r_hat.norm()
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    x_parts: dict[int, torch.Tensor] = {}
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("prompt", "pos", "token", "rows",
                                                             "cols", "vals", "proj")}
    offset = 0
    pooled_sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    exclude = torch.tensor(sorted({int(i) for i in pool_exclude}) if pool_exclude else [],
                           dtype=torch.long)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="SAE latents", disable=not progress or len(starts) < 8):
        idx = order[s:s + batch_size]
        input_ids, mask = pad_right([ids[i] for i in idx], pad)
        hidden = forward_residual(model, input_ids, mask, [layer])[layer]
        pooled = pool_positions(hidden, mask, position).float().cpu()
        for j, i in enumerate(idx):
            x_parts[i] = pooled[j]
        keep = token_mask(input_ids, mask, bos, drop_bos)
        where = keep.nonzero()  # [n, 2] (row in batch, position), row-major
        acts = hidden[keep.to(hidden.device)].float()  # [n, d], on the model's device
        parts["prompt"].append(torch.tensor(idx, dtype=torch.long)[where[:, 0]])
        parts["pos"].append(where[:, 1])
        parts["token"].append(input_ids[keep])
        lat = sae_encode(sae, acts)  # [n, d_sae] on CPU, one batch at a time
        nz = lat.nonzero()
        parts["rows"].append(nz[:, 0] + offset)
        parts["cols"].append(nz[:, 1])
        parts["vals"].append(lat[nz[:, 0], nz[:, 1]])
        if r_hat is not None:
            parts["proj"].append((acts.double() @ r_hat.to(acts.device)).cpu())
        if pool_exclude is not None:
            if pooled_sums is None:
                pooled_sums = (torch.zeros((len(ids), acts.shape[1]), dtype=torch.float64),
                               torch.zeros((len(ids), lat.shape[1])),  # float32: [N, d_sae]
                               torch.zeros(len(ids), dtype=torch.float64))
            use = ~torch.isin(input_ids[keep], exclude)  # [n], aligned with acts / lat
            who = torch.tensor(idx, dtype=torch.long)[where[:, 0][use]]
            pooled_sums[0].index_add_(0, who, acts[use.to(acts.device)].double().cpu())
            pooled_sums[1].index_add_(0, who, lat[use])
            pooled_sums[2].index_add_(0, who, torch.ones(len(who), dtype=torch.float64))
        offset += acts.shape[0]
    x = torch.stack([x_parts[i] for i in range(len(ids))])
    f = sae_encode(sae, x)
    x_mean = f_mean = None
    if pooled_sums is not None:
        count = pooled_sums[2].clamp_min(1.0).unsqueeze(1)
        x_mean = (pooled_sums[0] / count).float()
        f_mean = pooled_sums[1] / count.float()
    tokens = TokenLatents(
        prompt=torch.cat(parts["prompt"]), pos=torch.cat(parts["pos"]),
        token=torch.cat(parts["token"]), rows=torch.cat(parts["rows"]),
        cols=torch.cat(parts["cols"]), vals=torch.cat(parts["vals"]), d_sae=int(f.shape[1]),
        proj=torch.cat(parts["proj"]) if parts["proj"] else None)
    return LatentActivations(prompts=list(prompts), token_ids=ids, x=x, f=f, tokens=tokens,
                             position=position, layer=layer, x_mean=x_mean, f_mean=f_mean)


@torch.no_grad()
def prompt_readouts(
    model: Any,
    tokenizer: Any,
    sae: Any,
    prompts: Sequence[str],
    layer: int,
    latents: Sequence[int],
    r_hat: torch.Tensor,
    position: str = "last",
    batch_size: int = 32,
    add_special_tokens: bool = True,
    drop_bos: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-prompt readouts of a few latents and of the LiReF projection.

    Returns:
        ``{"max", "mean", "position"}`` -> ``[N, len(latents) + 1]`` float32: columns are the
        latents, then the projection on the unit ``r_hat``; ``max`` / ``mean`` over the
        prompt's tokens (no padding, no BOS), ``position`` at the probe position.
    """
    from probing.activations.tokens import token_mask

    (layer,) = check_layers(model, [layer])
    ids = tokenize_prompts(tokenizer, prompts, add_special_tokens)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    bos = getattr(tokenizer, "bos_token_id", None)
    cols = torch.tensor([int(i) for i in latents], dtype=torch.long)
    r = (r_hat.double() / r_hat.double().norm()).float()
    out = {k: torch.zeros((len(ids), len(cols) + 1)) for k in ("max", "mean", "position")}
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="injection readouts", disable=not progress or len(starts) < 8):
        idx = order[s:s + batch_size]
        input_ids, mask = pad_right([ids[i] for i in idx], pad)
        hidden = forward_residual(model, input_ids, mask, [layer])[layer]
        keep = token_mask(input_ids, mask, bos, drop_bos)
        flat = hidden[keep.to(hidden.device)].float()  # [n, d] real tokens only
        proj = (flat @ r.to(flat.device)).cpu()
        vals = torch.cat([sae_encode(sae, flat)[:, cols], proj.unsqueeze(1)], 1)
        row = keep.nonzero()[:, 0]
        b, k = len(idx), vals.shape[1]
        index = row.unsqueeze(1).expand(-1, k)
        top = torch.full((b, k), -math.inf).scatter_reduce(0, index, vals, reduce="amax")
        total = torch.zeros((b, k)).index_add_(0, row, vals)
        count = torch.bincount(row, minlength=b).clamp_min(1).unsqueeze(1)
        rows = torch.tensor(idx, dtype=torch.long)
        out["max"][rows] = top
        out["mean"][rows] = total / count
        pooled = pool_positions(hidden, mask, position).float()
        out["position"][rows] = torch.cat([sae_encode(sae, pooled)[:, cols],
                                           (pooled @ r.to(pooled.device)).cpu().unsqueeze(1)],
                                          1)
    out["max"] = torch.where(torch.isfinite(out["max"]), out["max"], torch.zeros_like(out["max"]))
    return out


def class_scores(f: torch.Tensor | np.ndarray, y: Sequence[int] | np.ndarray
                 ) -> dict[str, np.ndarray]:
    """Per latent (columns of ``f`` ``[N, d_sae]``): ``mean_diff`` (mean on reasoning minus
    mean on memory), ``cohens_d`` and ``auroc`` (``probing.stats``); each ``[d_sae]``."""
    f = np.asarray(f, dtype=np.float64)
    y_arr = check_labels(f, y)
    pos, neg = f[y_arr == 1], f[y_arr == 0]
    k = f.shape[1]
    out = {"mean_diff": pos.mean(0) - neg.mean(0), "cohens_d": np.empty(k), "auroc": np.empty(k)}
    for i in range(k):
        out["cohens_d"][i] = cohens_d(pos[:, i], neg[:, i])
        out["auroc"][i] = auroc(y_arr, f[:, i])
    return out


def reason_scores(tokens: TokenLatents, token_label: torch.Tensor | np.ndarray,
                  token_source: torch.Tensor | np.ndarray, decoder_norms: torch.Tensor,
                  alpha: float = 0.7, token_weight: torch.Tensor | None = None
                  ) -> dict[str, np.ndarray]:
    """ReasonScore of every latent (arXiv 2503.18878), on token-level activations.

    With decoder norms folded into the encoder (``a_i = f_i * ||d_i||``): ``mu+_i`` = mean
    of ``a_i`` over reasoning-item tokens, ``mu-_i`` over memory-item tokens; ``mu_ij`` = mean
    over the tokens of reasoning source ``j``, ``p_ij = mu_ij / sum_j mu_ij``, ``H_i =
    -sum_j p_ij log p_ij / log(J)`` (J reasoning sources; ``H = 1`` when J = 1; ``H = 0`` for
    a latent silent on reasoning tokens); ``ReasonScore_i = (mu+_i / sum_k mu+_k) * H_i^alpha
    - mu-_i / sum_k mu-_k``.

    Args:
        token_label: ``[T]`` 1 / 0 per token (its prompt's label). token_source: ``[T]`` int
            source id of the token's prompt (only reasoning tokens' sources are used).
        token_weight: ``[T]`` bool, the tokens to use (e.g. the training split's); all if None.

    Returns:
        ``mu_reasoning``, ``mu_memory``, ``entropy``, ``reason_score``: each ``[d_sae]``.
    """
    if alpha < 0:
        raise LirefError(f"ReasonScore alpha must be >= 0, got {alpha}")
    label = torch.as_tensor(np.asarray(token_label)).long()
    source = torch.as_tensor(np.asarray(token_source)).long()
    use = torch.ones_like(label, dtype=torch.bool) if token_weight is None else \
        torch.as_tensor(np.asarray(token_weight)).bool()
    d_sae = tokens.d_sae
    vals = tokens.vals.double() * decoder_norms.double()[tokens.cols]
    tok = tokens.rows
    keep = use[tok]

    def mean_over(mask: torch.Tensor) -> torch.Tensor:
        n = int((mask & use).sum())
        if n == 0:
            raise LirefError("ReasonScore: no tokens of one class in the data")
        sel = keep & mask[tok]
        return torch.zeros(d_sae, dtype=torch.float64).index_add_(0, tokens.cols[sel],
                                                                  vals[sel]) / n

    mu_pos = mean_over(label == 1)
    mu_neg = mean_over(label == 0)
    sources = sorted(set(source[(label == 1) & use].tolist()))
    per_source = torch.stack([mean_over((label == 1) & (source == s)) for s in sources], 1)
    if len(sources) > 1:
        total = per_source.sum(1, keepdim=True)
        p = per_source / total.clamp_min(1e-300)
        plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
        entropy = -plogp.sum(1) / math.log(len(sources))
        entropy = torch.where(total[:, 0] > 0, entropy, torch.zeros_like(entropy))
    else:
        entropy = torch.where(mu_pos > 0, torch.ones_like(mu_pos), torch.zeros_like(mu_pos))
    entropy = entropy.clamp(0.0, 1.0)
    pos_share = mu_pos / mu_pos.sum() if float(mu_pos.sum()) > 0 else torch.zeros_like(mu_pos)
    neg_share = mu_neg / mu_neg.sum() if float(mu_neg.sum()) > 0 else torch.zeros_like(mu_neg)
    score = pos_share * entropy.pow(alpha) - neg_share
    return {"mu_reasoning": mu_pos.numpy(), "mu_memory": mu_neg.numpy(),
            "entropy": entropy.numpy(), "reason_score": score.numpy()}


def gap_decomposition(sae: Any, x: torch.Tensor, f: torch.Tensor,
                      y: Sequence[int] | np.ndarray, r_hat: torch.Tensor) -> dict[str, Any]:
    """Split the LiReF projection gap ``mean_R <x, r> - mean_M <x, r>`` (``r`` unit) over the
    SAE's terms: ``x = sum_i f_i(x) d_i + b_dec + e(x)`` with ``e`` everything the linear
    dictionary leaves out (the SAE error), so

    ``gap = sum_i contribution_i + bias_term + error_term`` exactly, where
    ``contribution_i = (mean_R f_i - mean_M f_i) * <d_i, r>``, ``bias_term`` = 0 (a constant
    cancels in a difference of means; kept for the bookkeeping) and ``error_term`` = the gap
    of ``<e(x), r>``.

    Returns:
        ``gap``, ``bias_term``, ``error_term`` (floats), ``contribution`` and ``share``
        (``contribution / gap``) ``[d_sae]`` numpy.
    """
    from probing.matching.geometry import decoder_matrix

    y_arr = check_labels(x, y)
    w = decoder_matrix(sae)
    b = sae.b_dec.detach().to("cpu", torch.float64)
    r = r_hat.to(torch.float64)
    x64, f64 = x.to(torch.float64), f.to(torch.float64)
    pos = torch.as_tensor(y_arr == 1)

    def gap_of(v: torch.Tensor) -> torch.Tensor:
        return v[pos].mean(0) - v[~pos].mean(0)

    proj_dec = w @ r  # [d_sae]
    contribution = gap_of(f64) * proj_dec
    err = x64 - f64 @ w - b
    gap = float(gap_of(x64 @ r))
    bias_term = float(gap_of((b @ r).expand(x64.shape[0])))
    error_term = float(gap_of(err @ r))
    share = contribution / gap if gap != 0 else torch.full_like(contribution, float("nan"))
    return {"gap": gap, "bias_term": bias_term, "error_term": error_term,
            "contribution": contribution.numpy(), "share": share.numpy()}


def token_stats(tokens: TokenLatents) -> dict[str, np.ndarray]:
    """``density`` (share of tokens on which the latent is > 0) and ``max_activation`` (max
    over tokens; 0 for a latent that never fires): each ``[d_sae]``."""
    d = tokens.d_sae
    fires = tokens.vals > 0
    count = torch.bincount(tokens.cols[fires], minlength=d).double()
    top = torch.zeros(d).scatter_reduce(0, tokens.cols, tokens.vals, reduce="amax",
                                        include_self=True)
    return {"density": (count / max(tokens.n_tokens, 1)).numpy(),
            "max_activation": top.double().numpy()}


def highlight(tokenizer: Any, ids: Sequence[int], pos: int, mark: tuple[str, str] = ("[[", "]]")
              ) -> str:
    """The prompt's text with token ``pos`` wrapped in ``mark`` (spaces a tokenizer puts
    before a token stay outside the mark; a whitespace-only token is shown escaped, e.g.
    ``[[\\n]]``)."""
    def dec(part: Sequence[int]) -> str:
        return tokenizer.decode(list(part), skip_special_tokens=True)

    full, head, upto = dec(ids), dec(ids[:pos]), dec(ids[: pos + 1])
    if full.startswith(upto) and upto.startswith(head):
        start, end = len(head), len(upto)
        raw = full[start:end]
        while start < end and full[start].isspace():
            start += 1
        if start == end:  # the token is whitespace (a newline, say)
            shown = raw.encode("unicode_escape").decode("ascii")
            return f"{full[:len(head)]}{mark[0]}{shown}{mark[1]}{full[end:]}"
        return f"{full[:start]}{mark[0]}{full[start:end]}{mark[1]}{full[end:]}"
    return f"{head} {mark[0]}{dec(ids[pos:pos + 1])}{mark[1]} {dec(ids[pos + 1:])}"


def top_examples(acts: LatentActivations, values: torch.Tensor, tokenizer: Any,
                 labels: Sequence[int] | np.ndarray, n_tokens: int = 10, n_prompts: int = 5
                 ) -> dict[str, list[dict[str, Any]]]:
    """Highest-activating tokens and prompts of one latent (or the LiReF projection).

    Args:
        values: ``[T]`` per-token values (``acts.tokens.column(i)`` or the projections).
        labels: ``[N]`` prompt labels (1 reasoning, 0 memory).

    Returns:
        ``{"tokens": [...], "prompts": [...]}``; each entry has ``prompt`` (index),
        ``position``, ``token`` (text), ``activation``, ``label`` and ``text`` (the prompt with
        the token in ``[[...]]``). ``prompts`` holds distinct prompts ranked by their max token.
    """
    t = acts.tokens
    labels = np.asarray(labels)
    order = torch.argsort(values, descending=True)

    def entry(k: int) -> dict[str, Any]:
        p, pos = int(t.prompt[k]), int(t.pos[k])
        return {"prompt": p, "position": pos, "token": tokenizer.decode([int(t.token[k])]),
                "activation": float(values[k]), "label": int(labels[p]),
                "text": highlight(tokenizer, acts.token_ids[p], pos)}

    tokens = [entry(int(k)) for k in order[:n_tokens]]
    prompts, seen = [], set()
    for k in order.tolist():
        p = int(t.prompt[k])
        if p not in seen:
            seen.add(p)
            prompts.append(entry(k))
            if len(prompts) >= n_prompts:
                break
    return {"tokens": tokens, "prompts": prompts}
