"""SAEs trained by the project for the built-in real models and committed with it.

``probing/sae/builtin/<model name>/`` holds one residual SAE per built-in model
(``smollm2-135m``, ``gemma3-270m``) in sae-lens's format -- ``cfg.json`` +
``sae_weights.safetensors`` stored in float16 (``load_builtin_sae`` restores float32) -- beside
``liref_sae.json`` (model, block, corpus, training settings), ``metrics.json`` (held-out quality
under sae-lens's definitions, the training curve, and why this block) and ``COMMAND`` (how it was
made). ``probing.load_sae("smollm2-135m")`` loads it; the studies use it by default.

The block is chosen on the probe stage's validation data (``choose_sae_block``): the best
validation AUROC among the first ``max_relative_depth`` (80 %) of the blocks, because the last
blocks mostly write the next token.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.io import atomic_replace_dir, ensure_dir, write_json

__all__ = [
    "BUILTIN_SAE_ROOT",
    "builtin_sae_dir",
    "builtin_sae_names",
    "choose_sae_block",
    "choose_sae_block_of_run",
    "export_builtin_sae",
    "load_builtin_sae",
]

#: where the committed SAEs live (one folder per built-in model name)
BUILTIN_SAE_ROOT = Path(__file__).resolve().parent / "builtin"
#: the float dtype of the committed weights (``load_builtin_sae`` restores float32)
STORED_DTYPE = "float16"


def builtin_sae_names() -> list[str]:
    """Built-in model names that have a committed SAE."""
    if not BUILTIN_SAE_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_SAE_ROOT.iterdir() if (p / "cfg.json").is_file())


def builtin_sae_dir(name: str) -> Path:
    """The committed SAE folder of built-in model ``name`` (one clear error if there is none)."""
    folder = BUILTIN_SAE_ROOT / name
    if not (folder / "cfg.json").is_file():
        raise LirefError(f"no built-in SAE named {name!r}; built-in SAEs: {builtin_sae_names()}")
    return folder


def load_builtin_sae(name: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """The committed SAE of built-in model ``name`` as a sae-lens ``SAE`` in ``dtype``
    (float32 by default: the float16 weights on disk are cast back)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(builtin_sae_dir(name)), device=device, dtype=dtype)


def builtin_sae_info(name: str) -> dict[str, Any]:
    """``metrics.json`` of a committed SAE (block, why, quality, training curve)."""
    return dict(json.loads((builtin_sae_dir(name) / "metrics.json").read_text()))


def choose_sae_block(per_layer: Sequence[dict[str, Any]], n_blocks: int,
                     max_relative_depth: float = 0.8, metric: str = "val_auroc"
                     ) -> dict[str, Any]:
    """The block for an SAE: best ``metric`` (a probe stage's validation score per layer) among
    blocks ``< ceil(max_relative_depth * n_blocks)``; ties go to the earlier block.

    Returns ``{"block", "relative_depth", "metric", "value", "allowed", "best_overall",
    "why"}`` (what ``metrics.json`` records)."""
    import math

    if not 0 < max_relative_depth <= 1:
        raise LirefError(f"max_relative_depth must be in (0, 1], got {max_relative_depth}")
    limit = math.ceil(max_relative_depth * n_blocks)
    rows = [r for r in per_layer if metric in r and r[metric] is not None]
    if not rows:
        raise LirefError(f"no per-layer {metric!r} to choose an SAE block from; the probe "
                         f"stage's per_layer.json rows have keys "
                         f"{sorted(per_layer[0]) if per_layer else []}")
    allowed = [r for r in rows if int(r["layer"]) < limit]
    if not allowed:
        raise LirefError(f"no probed layer lies in the first {limit} of {n_blocks} blocks "
                         f"(probed: {[int(r['layer']) for r in rows]})")
    best = max(allowed, key=lambda r: (float(r[metric]), -int(r["layer"])))
    overall = max(rows, key=lambda r: (float(r[metric]), -int(r["layer"])))
    block = int(best["layer"])
    return {
        "block": block, "relative_depth": block / n_blocks, "metric": metric,
        "value": float(best[metric]), "allowed": f"blocks 0..{limit - 1} of {n_blocks}",
        "best_overall": {"block": int(overall["layer"]), "value": float(overall[metric])},
        "why": (f"best validation {metric} ({float(best[metric]):.3f}) among the first "
                f"{max_relative_depth:.0%} of the blocks (the last blocks mostly write the next "
                f"token); best over all blocks: block {int(overall['layer'])} "
                f"({float(overall[metric]):.3f})"),
    }


def choose_sae_block_of_run(probe_dir: str | Path, n_blocks: int,
                            max_relative_depth: float = 0.8) -> dict[str, Any]:
    """``choose_sae_block`` on a probe run's ``per_layer.json`` (its validation AUROC per layer)."""
    from probing.io import read_json

    path = Path(probe_dir) / "per_layer.json"
    if not path.is_file():
        raise LirefError(f"{probe_dir} is not a probe run folder: no per_layer.json in it")
    return choose_sae_block(read_json(path), n_blocks, max_relative_depth)


def export_builtin_sae(sae_dir: str | Path, out_dir: str | Path, metrics: dict[str, Any],
                       command: str) -> Path:
    """Copy a trained SAE folder (sae-lens format) to ``out_dir`` with its float weights cast to
    float16, plus ``metrics.json`` and ``COMMAND``; written beside and moved into place."""
    import torch
    from safetensors.torch import load_file, save_file

    src, out = Path(sae_dir), Path(out_dir)
    weights = src / "sae_weights.safetensors"
    if not weights.is_file():
        raise LirefError(f"{src} is not a saved SAE: no sae_weights.safetensors in it")
    ensure_dir(out.parent)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ensure_dir(tmp)
    try:
        tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
                   for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(tmp / "sae_weights.safetensors"))
        for name in ("cfg.json", "liref_sae.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        write_json(tmp / "metrics.json", {**metrics, "stored_dtype": STORED_DTYPE})
        (tmp / "COMMAND").write_text(command.strip() + "\n")
        atomic_replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
