"""``steer``: apply interventions to a model's forward passes and ``generate`` while active.

One setting (a list of interventions) applies to every row::

    with steer(model, [AddDirection(2, r, 4.0, units="gap")]):
        out = model.generate(**enc, max_new_tokens=8)

Several settings share one batch (a sweep's strengths and controls in one forward/generate
call): ``steer_settings(model, settings)`` yields a ``Steering`` whose ``set_rows(rows)`` says
which setting each batch row gets (``-1`` = none, the unsteered baseline in the same batch)::

    with steer_settings(model, [[], [AddDirection(2, r, 1.0)], [AddDirection(2, -r, 1.0)]]) as s:
        s.set_rows([0, 0, 1, 1, 2, 2])            # prompts repeated once per setting
        logits = model(**enc).logits

Interventions of one kind at one site are applied to all their rows at once (a per-row vector
table for additions, per-row unit vectors and coefficients for projections, per-row latents and
values for clamps). Hooks are removed on exit, also after an exception; activations recorded
inside the context (``probing.model.hooks.record_residual``, ``extract_activations``) are the steered
ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from probing.errors import LirefError
from probing.model.hooks import ForwardPositions, modify_sites, track_positions
from probing.steering.interventions import Add, Clamp, Erase, Intervention, Op, Project

__all__ = ["Steering", "steer", "steer_settings"]

_HALF = (torch.float16, torch.bfloat16)


class Steering:
    """What ``steer`` / ``steer_settings`` yield: the row -> setting map and the positions."""

    def __init__(self, n_settings: int, positions: ForwardPositions) -> None:
        self.n_settings = n_settings
        self.positions = positions
        self.rows: torch.Tensor | None = None

    def set_rows(self, rows: Sequence[int] | torch.Tensor | None) -> None:
        """Setting index of each batch row of the next forward / ``generate`` calls (``-1``:
        no intervention); ``None`` = setting 0 for every row (one setting only)."""
        if rows is None:
            self.rows = None
            return
        t = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= self.n_settings):
            raise LirefError(f"row settings must be in -1..{self.n_settings - 1}, got "
                             f"{sorted(set(t.tolist()))[:8]}")
        self.rows = t

    def set_prompt_lengths(self, lengths: Sequence[int] | torch.Tensor | None) -> None:
        """Per-row prompt lengths ``[B]`` for right-padded ``prompt + continuation`` rows
        (``positions="prompt"/"generated"`` then split each row there); ``None`` = automatic."""
        self.positions.prompt_lengths = (None if lengths is None else
                                         torch.as_tensor(lengths, dtype=torch.long).reshape(-1))

    def local_rows(self, table: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """``[B]`` group-local index of each row (``-1`` = not in the group)."""
        if self.rows is None:
            if self.n_settings != 1:
                raise LirefError(f"{self.n_settings} settings are active: call set_rows(...) "
                                 f"to say which setting each batch row gets")
            return table[:1].expand(batch).to(device)
        if self.rows.numel() != batch:
            raise LirefError(f"the batch has {batch} rows but set_rows gave {self.rows.numel()}")
        idx = torch.where(self.rows >= 0, self.rows, torch.full_like(self.rows, self.n_settings))
        return table[idx].to(device)


def _position_mask(positions: Any, state: ForwardPositions, h: torch.Tensor,
                   ) -> torch.Tensor | None:
    """``[B or 1, T]`` bool of the columns to steer, ``None`` = every column."""
    if isinstance(positions, str) and positions == "all":
        return None
    batch, width = h.shape[0], h.shape[1]
    if state.width != width:
        raise LirefError(f"cannot place positions={positions!r}: this forward pass has {width} "
                         f"tokens but the decoder stack saw {state.width} (the blocks were "
                         f"called outside the model's decoder stack)")
    if isinstance(positions, str):
        prompt = state.prompt_mask(h.device)
        return prompt if positions == "prompt" else ~prompt
    cols = state.columns(h.device)
    mask = positions.to(h.device)
    if mask.shape[0] not in (1, batch):
        raise LirefError(f"the positions mask has {mask.shape[0]} rows but the batch has {batch}")
    inside = cols < mask.shape[1]
    out = torch.zeros((mask.shape[0], width), dtype=torch.bool, device=h.device)
    out[:, inside] = mask[:, cols[inside]]
    return out


class _Group:
    """Interventions of one op kind, one positions spec (and one SAE) in one slot of a site."""

    def __init__(self, ops: dict[int, Op], positions: Any, n_settings: int) -> None:
        self.settings = sorted(ops)
        self.ops = [ops[s] for s in self.settings]
        self.positions = positions
        self.local = torch.full((n_settings + 1,), -1, dtype=torch.long)
        for j, s in enumerate(self.settings):
            self.local[s] = j
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = self.build(device, dtype)
        return self._tables[key]

    def build(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def delta(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """The steered ``h`` of every row as if all rows were in the group (``loc >= 0``)."""
        raise NotImplementedError

    def apply(self, h: torch.Tensor, steering: Steering) -> torch.Tensor:
        work = h.float() if h.dtype in _HALF else h
        loc = steering.local_rows(self.local, h.shape[0], h.device)
        mask = _position_mask(self.positions, steering.positions, h)
        inside = loc >= 0
        every_row = steering.rows is None or bool(inside.all())
        new = self.delta(work, loc.clamp(min=0))
        if mask is not None or not every_row:
            keep = inside[:, None] if mask is None else mask & inside[:, None]
            new = torch.where(keep.unsqueeze(-1), new, work)
        return new.to(h.dtype) if new.dtype != h.dtype else new


class _AddGroup(_Group):
    def build(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        ops: list[Add] = self.ops  # type: ignore[assignment]
        return (torch.stack([op.vector for op in ops]).to(device, dtype),)

    def delta(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        (table,) = self.tables(h.device, h.dtype)
        if table.shape[0] == 1:
            return h + table[0]
        return h + table[loc].unsqueeze(1)


class _ProjectGroup(_Group):
    def build(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        ops: list[Project] = self.ops  # type: ignore[assignment]
        units = torch.stack([op.unit for op in ops]).to(device, dtype)
        coefs = torch.tensor([op.coef for op in ops], dtype=dtype, device=device)
        return units, coefs

    def delta(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        units, coefs = self.tables(h.device, h.dtype)
        if units.shape[0] == 1:
            u, c = units[0], coefs[0]
            return h + (c * (h @ u)).unsqueeze(-1) * u
        u, c = units[loc], coefs[loc]  # [B, d], [B]
        proj = torch.einsum("btd,bd->bt", h, u)
        return h + (c[:, None] * proj).unsqueeze(-1) * u[:, None, :]


class _ClampGroup(_Group):
    def build(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        ops: list[Clamp] = self.ops  # type: ignore[assignment]
        p = next(self.ops[0].sae.parameters())  # type: ignore[union-attr]
        latents = torch.tensor([op.latent for op in ops], dtype=torch.long, device=p.device)
        values = torch.tensor([op.value for op in ops], dtype=p.dtype, device=p.device)
        return latents, values

    def delta(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        sae = self.ops[0].sae  # type: ignore[union-attr]
        latents, values = self.tables(h.device, h.dtype)
        p = next(sae.parameters())
        batch, width, d = h.shape
        x = h.reshape(-1, d).to(p.device, p.dtype)
        feats = sae.encode(x)
        loc = loc.to(p.device)
        per_token = torch.arange(batch * width, device=p.device)
        lat = latents[loc].repeat_interleave(width)
        val = values[loc].repeat_interleave(width)
        clamped = feats.clone()
        clamped[per_token, lat] = val
        change = sae.decode(clamped) - sae.decode(feats)  # the error term x - SAE(x) is kept
        return h + change.reshape(batch, width, d).to(h.device, h.dtype)


class _EraseGroup(_Group):
    """Affine erasures ``h - ((h - bias) @ right.T) @ left.T``; ranks padded with zeros."""

    def build(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        ops: list[Erase] = self.ops  # type: ignore[assignment]
        d, k = ops[0].left.shape[0], max(op.left.shape[1] for op in ops)
        left = torch.zeros((len(ops), d, k), dtype=torch.float64)
        right = torch.zeros((len(ops), k, d), dtype=torch.float64)
        for j, op in enumerate(ops):
            left[j, :, : op.left.shape[1]] = op.left
            right[j, : op.right.shape[0]] = op.right
        bias = torch.stack([op.bias for op in ops])
        return left.to(device, dtype), right.to(device, dtype), bias.to(device, dtype)

    def delta(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        left, right, bias = self.tables(h.device, h.dtype)
        if left.shape[0] == 1:
            return h - ((h - bias[0]) @ right[0].T) @ left[0].T
        coords = torch.einsum("btd,bkd->btk", h - bias[loc][:, None], right[loc])  # [B, T, k]
        return h - torch.einsum("btk,bdk->btd", coords, left[loc])


_GROUPS: dict[type, type[_Group]] = {Add: _AddGroup, Project: _ProjectGroup, Clamp: _ClampGroup,
                                     Erase: _EraseGroup}


def _group_key(op: Op, positions_key: object) -> tuple:
    sae_id = id(op.sae) if isinstance(op, Clamp) else None
    return type(op), positions_key, sae_id


def _site_edits(model: nn.Module, settings: Sequence[Sequence[Intervention]],
                ) -> dict[tuple[int, str], list[list[_Group]]]:
    """``{(layer, site): [slot -> [groups]]}``; slot k holds each setting's k-th op there."""
    per_site: dict[tuple[int, str], dict[int, list[tuple[Op, Any, object]]]] = {}
    for s, setting in enumerate(settings):
        for iv in setting:
            if not isinstance(iv, Intervention):
                raise LirefError(f"{iv!r} is not an intervention (AddDirection, AblateDirection, "
                                 f"ScaleProjection, AddLatent, ClampLatent, EraseConcept)")
            for layer, site, op in iv.ops(model):
                per_site.setdefault((layer, site), {}).setdefault(s, []).append(
                    (op, iv.positions, iv.positions_key))  # type: ignore[attr-defined]
    out: dict[tuple[int, str], list[list[_Group]]] = {}
    for key, by_setting in sorted(per_site.items()):
        n_slots = max(len(v) for v in by_setting.values())
        slots: list[list[_Group]] = []
        for k in range(n_slots):
            members: dict[tuple, tuple[dict[int, Op], Any]] = {}
            for s, ops in by_setting.items():
                if k < len(ops):
                    op, positions, pkey = ops[k]
                    entry = members.setdefault(_group_key(op, pkey), ({}, positions))
                    entry[0][s] = op
            slots.append([_GROUPS[gkey[0]](ops, positions, len(settings))
                          for gkey, (ops, positions) in members.items()])
        out[key] = slots
    return out


@contextmanager
def steer_settings(model: nn.Module, settings: Sequence[Sequence[Intervention]],
                   ) -> Iterator[Steering]:
    """Apply ``settings`` (each a list of interventions, applied in order) during forward
    passes and ``generate``; rows pick their setting through ``Steering.set_rows``."""
    settings = [list(s) for s in settings]
    if not settings:
        raise LirefError("no settings to steer with (give at least one, possibly empty, list)")
    plan = _site_edits(model, settings)
    with track_positions(model) as positions:
        steering = Steering(len(settings), positions)

        def make_edit(slots: list[list[_Group]]):
            def edit(h: torch.Tensor) -> torch.Tensor:
                for groups in slots:
                    for group in groups:
                        h = group.apply(h, steering)
                return h

            return edit

        edits = [(layer, site, make_edit(slots)) for (layer, site), slots in plan.items()]
        with modify_sites(model, edits):
            yield steering


@contextmanager
def steer(model: nn.Module, interventions: Intervention | Sequence[Intervention],
          ) -> Iterator[Steering]:
    """Apply ``interventions`` (in order) to every row of every forward pass and ``generate``
    call while active. Layer ``l`` = output of decoder block ``l``."""
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    with steer_settings(model, [list(interventions)]) as steering:
        yield steering
