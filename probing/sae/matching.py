"""Which SAE latents carry the LiReF: decoder/encoder geometry and sparse reconstruction.

The direction is a difference of activation means, not an activation: it is compared with the
SAE's *dictionary* (decoder rows, encoder columns), never passed through the encoder.

Shapes: ``W_dec`` ``[d_sae, d_in]``, ``W_enc`` ``[d_in, d_sae]``, direction ``[d_in]``; all
geometry is computed in float64 on CPU. Layer ``l`` = output of decoder block ``l`` (HF
``hidden_states[l + 1]``), sae-lens hook ``blocks.{l}.hook_resid_post``.

The statistics (nulls, activation scores, sparse probes, token injection) live in
``probing.sae.nulls`` / ``scores`` / ``sparse_probing`` / ``injection``; a whole matching run
(``run_matching``, the ``analysis.match`` job's body) in ``probing.sae.match_run``; its
outputs are read back with ``load_match``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from probing.errors import LirefError
from probing.io import read_json

log = logging.getLogger(__name__)

__all__ = [
    "LATENTS_FILENAME",
    "MATCH_FILENAME",
    "MatchInputs",
    "Reconstruction",
    "check_model",
    "decoder_cosines",
    "decoder_matrix",
    "encoder_cosines",
    "encoder_matrix",
    "find_sae_dirs",
    "load_match",
    "load_match_inputs",
    "omp_path",
    "reconstruct_direction",
    "reconstruction_curve",
    "resolve_probe_dir",
    "unit_direction",
]

#: provenance of a match run (what ``analysis.steer`` needs to load the SAE and the latents)
MATCH_FILENAME = "match.json"
#: one row per latent, sorted by rank
LATENTS_FILENAME = "latents.json"


def decoder_matrix(sae: Any) -> torch.Tensor:
    """``W_dec`` ``[d_sae, d_in]`` as float64 on CPU."""
    return sae.W_dec.detach().to("cpu", torch.float64)


def encoder_matrix(sae: Any) -> torch.Tensor:
    """``W_enc`` ``[d_in, d_sae]`` as float64 on CPU."""
    return sae.W_enc.detach().to("cpu", torch.float64)


def unit_direction(direction: torch.Tensor, d_in: int) -> torch.Tensor:
    """``direction / ||direction||`` ``[d_in]`` float64; width checked against the SAE."""
    r = torch.as_tensor(direction).detach().to("cpu", torch.float64).reshape(-1)
    if r.shape[0] != d_in:
        raise LirefError(f"the direction has width {r.shape[0]} but the SAE reads {d_in}-wide "
                         f"activations: they come from different models or layers")
    norm = r.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise LirefError("the direction is zero (or not finite): nothing to match")
    return r / norm


def _row_cosines(rows: torch.Tensor, r_hat: torch.Tensor) -> torch.Tensor:
    norms = rows.norm(dim=1)
    cos = rows @ r_hat / norms.clamp_min(1e-30)
    return torch.where(norms > 0, cos, torch.zeros_like(cos))


def decoder_cosines(sae: Any, direction: torch.Tensor) -> torch.Tensor:
    """Signed cosine of every decoder row with ``direction``: ``[d_sae]`` float64 (a zero
    row gets 0)."""
    w = decoder_matrix(sae)
    return _row_cosines(w, unit_direction(direction, w.shape[1]))


def encoder_cosines(sae: Any, direction: torch.Tensor) -> torch.Tensor:
    """Signed cosine of every encoder column with ``direction``: ``[d_sae]`` float64."""
    w = encoder_matrix(sae).T
    return _row_cosines(w, unit_direction(direction, w.shape[1]))


class Reconstruction(NamedTuple):
    """A k-latent approximation of the unit direction: ``sum_j coefficients[j] *
    W_dec[indices[j]]``; ``cosine`` = its cosine with the direction."""

    indices: list[int]
    coefficients: torch.Tensor  # [k] float64, signed, in units of the (unnormalised) rows
    cosine: float


def omp_path(w_dec: torch.Tensor, r_hat: torch.Tensor, max_k: int) -> list[Reconstruction]:
    """Orthogonal matching pursuit of ``r_hat`` ``[d]`` (unit) over the rows of ``w_dec``
    ``[d_sae, d]``: step k adds the row whose normalised version has the largest
    ``|<residual, row>|`` and refits all k coefficients by least squares (signed; an
    incrementally orthogonalised basis, so each step costs O(d_sae * d)).

    Returns one ``Reconstruction`` per k = 1..max_k (nested: OMP is greedy, so the k-atom
    set is the best found by this path, not the best of all k-subsets). Stops early when the
    residual vanishes or no linearly independent usable row is left.
    """
    if max_k < 1:
        raise LirefError(f"k must be >= 1, got {max_k}")
    w = w_dec.to(torch.float64)
    r = r_hat.to(torch.float64)
    r = r / r.norm()
    norms = w.norm(dim=1)
    usable = norms > 0
    atoms = w / norms.clamp_min(1e-30).unsqueeze(1)
    d = w.shape[1]
    q = torch.zeros((d, 0), dtype=torch.float64)  # orthonormal basis of the chosen rows
    rmat = torch.zeros((0, 0), dtype=torch.float64)  # w[chosen].T = q @ rmat
    residual = r.clone()
    chosen: list[int] = []
    out: list[Reconstruction] = []
    scores = torch.empty(w.shape[0], dtype=torch.float64)
    while len(out) < min(max_k, d):
        torch.mv(atoms, residual, out=scores)
        scores.abs_()
        scores[~usable] = -1.0
        if chosen:
            scores[torch.tensor(chosen)] = -1.0
        j = int(scores.argmax())
        if scores[j] < 0:
            break
        a = w[j]
        proj = q.T @ a
        v = a - q @ proj
        proj2 = q.T @ v  # re-orthogonalise once (classical Gram-Schmidt, twice)
        v = v - q @ proj2
        proj = proj + proj2
        nv = float(v.norm())
        if nv <= 1e-10 * float(norms[j]):
            usable[j] = False  # in the span of the chosen rows: skip it
            continue
        chosen.append(j)
        k = len(chosen)
        q = torch.cat([q, (v / nv).unsqueeze(1)], 1)
        grown = torch.zeros((k, k), dtype=torch.float64)
        grown[: k - 1, : k - 1] = rmat
        grown[: k - 1, k - 1] = proj
        grown[k - 1, k - 1] = nv
        rmat = grown
        qr = q.T @ r
        coef = torch.linalg.solve_triangular(rmat, qr.unsqueeze(1), upper=True).reshape(-1)
        residual = r - q @ qr
        norm = float(qr.norm())  # = ||approx||; its cosine with the unit r is ||Q^T r||
        out.append(Reconstruction(list(chosen), coef, norm))
        if float(residual.norm()) < 1e-12:
            break
    return out


def reconstruct_direction(sae: Any, direction: torch.Tensor, k: int) -> Reconstruction:
    """``(indices, coefficients, cosine)`` of the k-latent OMP reconstruction of the unit
    direction from decoder rows (fewer than k when it is exact earlier)."""
    w = decoder_matrix(sae)
    path = omp_path(w, unit_direction(direction, w.shape[1]), k)
    return path[-1]


def reconstruction_curve(sae: Any, direction: torch.Tensor,
                         ks: Iterable[int] = range(1, 65)) -> list[dict[str, Any]]:
    """Cosine of the k-latent OMP reconstruction vs k: ``[{"k", "cosine", "latent" (added at
    step k), "coefficient" (its coefficient at step k)}]`` for each k in ``ks`` (a k past an
    early exact stop repeats the last reconstruction)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise LirefError(f"reconstruction ks must be >= 1, got {ks}")
    w = decoder_matrix(sae)
    path = omp_path(w, unit_direction(direction, w.shape[1]), ks[-1])
    rows = []
    for k in ks:
        rec = path[min(k, len(path)) - 1]
        rows.append({"k": k, "cosine": rec.cosine, "latent": rec.indices[-1],
                     "coefficient": float(rec.coefficients[-1])})
    return rows


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


def check_model(inputs: MatchInputs, model: Any) -> None:
    """The loaded model must be the one the probe and the SAE were made on (id and width)."""
    from probing.models import model_id

    width = int(model.get_input_embeddings().weight.shape[1])
    if width != inputs.d_model:
        raise LirefError(f"the model {model_id(model)!r} is {width}-wide but the probe and SAE "
                         f"are {inputs.d_model}-wide (made on {inputs.model!r}): load that model")
    if not _same_model(model_id(model), inputs.model):
        raise LirefError(f"the loaded model is {model_id(model)!r} but the probe and SAE were "
                         f"made on {inputs.model!r}: set model=... to that model")
