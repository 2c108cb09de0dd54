"""The inputs of a matching run: a probe run and an SAE, found, loaded and checked against each
other (model, width, layer); and a finished run's outputs read back (``load_match``).

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``), sae-lens hook
``blocks.{l}.hook_resid_post``. The geometry lives in ``probing.matching.geometry``; the
statistics in ``nulls`` / ``scores`` / ``sparse_probes`` / ``injection``; a whole run
(``run_matching``, the ``analysis.match`` job's body) in ``probing.matching.run``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probing.errors import LirefError
from probing.io import read_json

log = logging.getLogger(__name__)

__all__ = [
    "LATENTS_FILENAME",
    "MATCH_FILENAME",
    "MatchInputs",
    "check_model",
    "find_sae_dirs",
    "inputs_from_settings",
    "load_match",
    "load_match_inputs",
    "resolve_probe_dir",
]

#: provenance of a match run (what ``analysis.steer`` needs to load the SAE and the latents)
MATCH_FILENAME = "match.json"
#: one row per latent, sorted by rank
LATENTS_FILENAME = "latents.json"






















def load_match(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, info)`` of a match run: ``latents.json`` (rows sorted by rank) and
    ``match.json`` (sae_dir / sae_release / sae_id, layer, model, d_model, d_sae, probe_dir,
    rank_by, position, data). Load the SAE with
    ``probing.load_sae(info["sae_dir"] or info["sae_release"], info["sae_id"])``."""
    run_dir = Path(run_dir)
    if not (run_dir / MATCH_FILENAME).is_file():
        raise LirefError(f"{run_dir} is not a match run folder: no {MATCH_FILENAME} in it "
                         f"(made by python -m analysis.match)")
    info = read_json(run_dir / MATCH_FILENAME)
    rows = read_json(run_dir / LATENTS_FILENAME)
    return rows, info


# --- inputs: a probe run + an SAE (folder, sweep folder or pretrained release) -------------


@dataclass
class MatchInputs:
    """The SAE and the LiReF a match run compares, after the consistency checks.

    ``direction`` is the probe run's diff-in-means at ``layer`` (``[d_model]`` float64, not
    normalised); ``position`` is where the probe read its activations.
    """

    sae: Any
    layer: int
    direction: torch.Tensor
    position: str
    probe_dir: str
    model: str | None
    d_model: int
    d_sae: int
    architecture: str
    sae_dir: str | None = None
    sae_release: str | None = None
    sae_id: str | None = None
    probe_meta: dict[str, Any] = field(default_factory=dict)
    sae_info: dict[str, Any] = field(default_factory=dict)


def resolve_probe_dir(path: str | Path) -> Path:
    """The folder holding ``directions/``: ``path`` itself (a ``train.probe`` run) or its
    ``probe/`` sub-folder (an ``analysis.pipeline`` run)."""
    p = Path(path).expanduser()
    for cand in (p, p / "probe"):
        if (cand / "directions" / "directions.json").is_file():
            return cand
    raise LirefError(f"probe_dir {str(path)!r} holds no directions/ (expected a train.probe or "
                     f"analysis.pipeline run folder)")


def _is_sae_folder(p: Path) -> bool:
    return (p / "cfg.json").is_file() and (p / "sae_weights.safetensors").is_file()


def find_sae_dirs(root: str | Path) -> list[Path]:
    """SAE folders (sae-lens format) at or below ``root``: the folder itself, a run's
    ``sae/``, or every SAE of a sweep folder (sorted)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LirefError(f"sae_dir {str(root)!r} is not a folder")
    if _is_sae_folder(root):
        return [root]
    return sorted(p.parent for p in root.rglob("cfg.json") if _is_sae_folder(p.parent))


def _sae_layer(meta: dict[str, Any]) -> int | None:
    if meta.get("liref_layer") is not None:
        return int(meta["liref_layer"])
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", str(meta.get("hook_name") or ""))
    return int(m.group(1)) if m else None


def _describe_sae_folder(p: Path) -> dict[str, Any]:
    from probing.sae.training import LIREF_SAE_FILENAME

    info: dict[str, Any] = {}
    if (p / LIREF_SAE_FILENAME).is_file():
        info = dict(read_json(p / LIREF_SAE_FILENAME))
    cfg = read_json(p / "cfg.json")
    meta = dict(cfg.get("metadata") or {})
    info.setdefault("layer", _sae_layer(meta))
    info.setdefault("model_id", meta.get("model_name"))
    info.setdefault("architecture", cfg.get("architecture"))
    info.setdefault("d_in", cfg.get("d_in"))
    info.setdefault("d_sae", cfg.get("d_sae"))
    return info


def _pick_sae_folder(sae_dir: str | Path, layer: int | None, architecture: str | None
                     ) -> tuple[Path, dict[str, Any]]:
    found = [(p, _describe_sae_folder(p)) for p in find_sae_dirs(sae_dir)]
    if not found:
        raise LirefError(f"no SAE (cfg.json + sae_weights.safetensors) at or below {sae_dir}")
    if len(found) == 1:  # one SAE: the layer / architecture checks name the mismatch
        path, info = found[0]
        if architecture is not None and info.get("architecture") not in (None, architecture):
            raise LirefError(f"sae={architecture} but the SAE in {path} is a "
                             f"{info.get('architecture')} SAE")
        return found[0]
    keep = [(p, i) for p, i in found
            if (layer is None or i.get("layer") in (None, layer))
            and (architecture is None or i.get("architecture") in (None, architecture))]
    if len(keep) == 1:
        return keep[0]
    listing = "; ".join(f"{p} (architecture {i.get('architecture')}, layer {i.get('layer')})"
                        for p, i in found[:12])
    if not keep:
        raise LirefError(f"no SAE under {sae_dir} matches layer={layer}, architecture="
                         f"{architecture}; found: {listing}")
    raise LirefError(f"{len(keep)} SAEs under {sae_dir} match layer={layer}, architecture="
                     f"{architecture}: set layer=... and/or sae=<architecture> to pick one; "
                     f"found: {listing}")


def _same_model(a: str | None, b: str | None) -> bool:
    """Model ids agree (or one is unknown); ``org/name`` matches ``name`` case-insensitively
    (sae-lens releases name models without the hub organisation)."""
    if not a or not b:
        return True
    if a == b:
        return True
    return Path(str(a)).name.lower() == Path(str(b)).name.lower()


def load_match_inputs(
    probe_dir: str | Path,
    sae_dir: str | Path | None = None,
    release: str | None = None,
    sae_id: str | None = None,
    layer: int | None = None,
    architecture: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> MatchInputs:
    """Load the probe run's direction and the SAE, and check they belong together.

    Args:
        probe_dir: a ``train.probe`` (or ``analysis.pipeline``) run folder.
        sae_dir: an SAE folder, a ``train.sae`` run, or a sweep folder holding several (then
            ``layer`` / ``architecture`` pick one). release, sae_id: a sae-lens pretrained SAE
            instead (needs the HF hub).
        layer: the block to match at; ``None`` = the SAE's layer. It must be the SAE's layer
            and one of the probe's layers.

    Raises:
        LirefError: naming the mismatch (model, width or layer) or the missing input.
    """
    from probing.probes.directions import load_directions
    from probing.sae.training import load_sae

    if (sae_dir is None) == (release is None):
        raise LirefError("give exactly one SAE: sae_dir=<folder> or a pretrained release "
                         "(sae=<pretrained entry>, e.g. sae=gemma_scope_9b)")
    pdir = resolve_probe_dir(probe_dir)
    directions, pmeta = load_directions(pdir / "directions")
    if sae_dir is not None:
        folder, info = _pick_sae_folder(sae_dir, layer, architecture)
        sae = load_sae(folder, device=device, dtype=dtype)
        sae_layer = info.get("layer")
        src = {"sae_dir": str(folder.resolve())}
    else:
        sae = load_sae(str(release), sae_id, device=device, dtype=dtype)
        raw = getattr(sae.cfg, "metadata", None)
        meta = dict(raw.to_dict() if hasattr(raw, "to_dict") else (raw or {}))
        info = {"model_id": meta.get("model_name"), "layer": _sae_layer(meta),
                "architecture": f"pretrained:{release}", "d_in": int(sae.cfg.d_in),
                "d_sae": int(sae.cfg.d_sae)}
        sae_layer = info["layer"]
        src = {"sae_release": str(release), "sae_id": sae_id}
    if layer is None:
        if sae_layer is None:
            raise LirefError("the SAE does not record its layer; set layer=<block index>")
        layer = int(sae_layer)
    elif sae_layer is not None and int(sae_layer) != int(layer):
        raise LirefError(f"layer={layer} but the SAE was trained on layer {sae_layer}: the SAE "
                         f"and the direction must come from the same layer")
    if int(layer) not in directions:
        raise LirefError(f"the probe run {pdir} has no direction at layer {layer}; its layers "
                         f"are {sorted(directions)}")
    d_model = int(pmeta.get("d_model", directions[int(layer)].shape[0]))
    d_in = int(sae.cfg.d_in)
    if d_in != d_model:
        raise LirefError(f"the SAE reads {d_in}-wide activations but the probe's direction is "
                         f"{d_model}-wide: different models (SAE {info.get('model_id')!r}, "
                         f"probe {pmeta.get('model')!r})")
    if not _same_model(info.get("model_id"), pmeta.get("model")):
        raise LirefError(f"the SAE was trained on model {info.get('model_id')!r} but the probe "
                         f"on {pmeta.get('model')!r}")
    return MatchInputs(
        sae=sae, layer=int(layer), direction=directions[int(layer)].to(torch.float64),
        position=str(pmeta.get("position") or "last"), probe_dir=str(pdir.resolve()),
        model=pmeta.get("model") or info.get("model_id"), d_model=d_model,
        d_sae=int(sae.cfg.d_sae), architecture=str(info.get("architecture")),
        probe_meta=dict(pmeta), sae_info=dict(info), **src)


def inputs_from_settings(probe_dir: str | Path | None, sae_dir: str | Path | None = None,
                         sae: Mapping[str, Any] | None = None, layer: int | None = None,
                         position: str | None = None) -> MatchInputs:
    """``load_match_inputs`` from a match job's settings: ``sae`` is an ``sae:`` config section
    (an architecture that picks one SAE under ``sae_dir``, or ``pretrained: {release, sae_id,
    layer}``); ``position`` (``None`` = the probe's) must equal the probe's."""
    sae = dict(sae or {})
    pretrained = sae.get("pretrained") or {}
    if probe_dir is None:
        raise LirefError("probe_dir is required: a train.probe or analysis.pipeline run folder")
    if pretrained and sae_dir:
        raise LirefError(f"both sae_dir={sae_dir} and a pretrained SAE "
                         f"({pretrained.get('release')}) are set; give one")
    if layer is None and pretrained:
        layer = pretrained.get("layer")
    inputs = load_match_inputs(
        probe_dir, sae_dir=sae_dir, release=pretrained.get("release"),
        sae_id=pretrained.get("sae_id"), layer=None if layer is None else int(layer),
        architecture=None if pretrained else sae.get("architecture"))
    if position not in (None, inputs.position):
        raise LirefError(f"position={position} but the probe read its activations at "
                         f"{inputs.position!r}; leave position unset (null)")
    return inputs


def check_model(inputs: MatchInputs, model: Any) -> None:
    """The loaded model must be the one the probe and the SAE were made on (id and width)."""
    from probing.model.blocks import model_id

    width = int(model.get_input_embeddings().weight.shape[1])
    if width != inputs.d_model:
        raise LirefError(f"the model {model_id(model)!r} is {width}-wide but the probe and SAE "
                         f"are {inputs.d_model}-wide (made on {inputs.model!r}): load that model")
    if not _same_model(model_id(model), inputs.model):
        raise LirefError(f"the loaded model is {model_id(model)!r} but the probe and SAE were "
                         f"made on {inputs.model!r}: set model=... to that model")
