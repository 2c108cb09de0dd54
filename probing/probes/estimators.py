"""Probes with one protocol: fit / decision_function / predict_proba / predict / score /
direction / save / load (scikit-learn style: parameters in ``__init__``, learned state in
attributes ending in ``_``).

Targets: 1 = reasoning (the data config's first class), 0 = memory (its second). Inputs ``X``
are ``[N, d_model]`` activations of one layer. Every probe's decision threshold is chosen on
the data it is fitted on (``probing.stats.balanced_threshold``: the best balanced accuracy, the
probe's own threshold when that is among the best), so imbalanced classes do not push it off.
Saved as ``probe.safetensors`` (tensors) + ``probe.json`` (kind, params, layer, threshold,
metadata).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probing.errors import LirefError
from probing.io import read_json, write_json
from probing.probes.directions import check_labels, diff_in_means, unit
from probing.stats import balanced_threshold
from probing.version import __version__

log = logging.getLogger(__name__)

__all__ = ["PROBES", "DiffMeanProbe", "LogisticProbe", "Probe", "SparseProbe", "load_probe",
           "make_probe"]

ArrayLike = np.ndarray | torch.Tensor


def _norm(value: Any) -> Any:
    """Lists and tuples compare equal (JSON turns tuples into lists)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _as_f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise LirefError(f"probe input must be [N, d_model], got shape {x.shape}")
    return x


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


class Probe:
    """Base class. Subclasses set ``kind`` and implement ``_fit``, ``_score`` (the raw score, 0
    at the probe's own threshold), ``direction`` and the tensor (de)serialisation; the base
    class chooses ``decision_threshold_`` (in ``_score`` units) on the fit data."""

    kind: ClassVar[str] = ""
    _tensor_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, layer: int | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.layer = layer
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.d_model_: int | None = None
        self.decision_threshold_ = 0.0

    # --- protocol ---------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {}

    def fit(self, X: ArrayLike, y: ArrayLike) -> Probe:
        """Fit on ``X`` ``[N, d]`` and labels ``y`` ``[N]`` (1 reasoning, 0 memory)."""
        x = _as_f64(X)
        y_arr = check_labels(x, y)
        self.d_model_ = x.shape[1]
        self._fit(x, y_arr)
        self.decision_threshold_ = balanced_threshold(y_arr, self._score(x))
        return self

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> np.ndarray:
        """``[N]`` raw scores of checked ``x`` ``[N, d]``; 0 is the probe's own threshold."""
        raise NotImplementedError

    def _check(self, X: ArrayLike) -> np.ndarray:
        if self.d_model_ is None:
            raise LirefError(f"{type(self).__name__} is not fitted yet; call fit() first")
        x = _as_f64(X)
        if x.shape[1] != self.d_model_:
            raise LirefError(
                f"this probe was trained on activations of width {self.d_model_} "
                f"(model {self.metadata.get('model', '?')!r}, layer {self.layer}); got width "
                f"{x.shape[1]}: use activations of the same model"
            )
        return x

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """``[N]`` real-valued scores of ``X`` ``[N, d]``; > 0 means reasoning (0 is the
        threshold chosen on the fit data)."""
        return self._score(self._check(X)) - self.decision_threshold_

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """``[N]`` probability of the reasoning class (sigmoid of ``decision_function``, so
        0.5 sits at the chosen threshold)."""
        return _sigmoid(self.decision_function(X))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``[N]`` labels (1 reasoning, 0 memory)."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy on ``(X, y)``."""
        y_arr = np.asarray(y).reshape(-1)
        return float((self.predict(X) == y_arr).mean())

    @property
    def direction(self) -> torch.Tensor:
        """Unit vector ``[d_model]`` (float64) pointing towards reasoning, in activation space."""
        raise NotImplementedError

    # --- persistence ------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(getattr(self, name), dtype=torch.float64).reshape(-1)
                for name in self._tensor_names}

    def _set_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self._tensor_names:
            value = tensors[name].numpy()
            setattr(self, name, float(value[0]) if name in self._scalar_names() else value)

    def _scalar_names(self) -> tuple[str, ...]:
        return ()

    def save(self, folder: str | Path) -> Path:
        """Write ``probe.safetensors`` + ``probe.json`` into ``folder``."""
        if self.d_model_ is None:
            raise LirefError("cannot save an unfitted probe")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self._tensors().items()},
                  str(folder / "probe.safetensors"))
        write_json(folder / "probe.json", {
            "kind": self.kind, "params": self.params(), "layer": self.layer,
            "d_model": self.d_model_, "threshold": self.decision_threshold_,
            "threshold_chosen_by": "balanced accuracy on the fit data",
            "metadata": self.metadata, "liref_version": __version__,
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Probe:
        return load_probe(folder)

    def check(self, model: Any = None, layer: int | None = None, position: str | None = None,
              template: Any = None) -> Probe:
        """Raise ``LirefError`` unless this probe belongs where it is about to be used.

        Args:
            model: a loaded model (compared by weight fingerprint when the probe recorded
                one, else by name; and by residual width) or a model name.
            layer: the layer whose activations will be fed (must be the probe's own).
            position: ``"last"`` / ``"mean"`` (must be the one it was trained at).
            template: a ``PromptTemplate`` (or its dict) the prompts will be made with.

        Returns ``self`` (``load_probe(p).check(model=m, layer=l)`` chains).
        """
        meta = self.metadata
        where = f"probe (model {meta.get('model', '?')!r}, layer {self.layer})"
        if layer is not None and self.layer is not None and int(layer) != int(self.layer):
            raise LirefError(f"{where} was trained on layer {self.layer}, not layer {layer}; "
                             f"feed it layer {self.layer} activations")
        if position is not None and meta.get("position") not in (None, position):
            raise LirefError(f"{where} was trained at position {meta['position']!r}, not "
                             f"{position!r}")
        if template is not None and meta.get("prompt_template") is not None:
            from dataclasses import asdict, is_dataclass

            from probing.questions.prompts import PromptTemplate

            defaults = asdict(PromptTemplate())  # keys a recorded template left out
            given = {**defaults, **(asdict(template) if is_dataclass(template)
                                    else dict(template))}
            mine = {**defaults, **meta["prompt_template"]}
            diff = sorted(k for k in set(given) | set(mine)
                          if _norm(given.get(k)) != _norm(mine.get(k)))
            if diff:
                raise LirefError(f"{where} was trained with another prompt template "
                                 f"(differs in {diff}): {mine}")
        if model is not None:
            self._check_model(model, where)
        return self

    def _check_model(self, model: Any, where: str) -> None:
        meta = self.metadata
        if isinstance(model, str):
            if meta.get("model") not in (None, model):
                raise LirefError(f"{where} belongs to model {meta['model']!r}, not {model!r}")
            return
        from probing.fingerprint import model_fingerprint
        from probing.model.blocks import model_id

        width = int(model.get_input_embeddings().weight.shape[1])
        if self.d_model_ is not None and width != self.d_model_:
            raise LirefError(f"{where} reads {self.d_model_}-wide activations; model "
                             f"{model_id(model)!r} has width {width}")
        recorded = meta.get("model_fingerprint")
        if recorded is not None and recorded != model_fingerprint(model):
            raise LirefError(f"{where} was trained on other weights than model "
                             f"{model_id(model)!r} (fingerprint {recorded} vs "
                             f"{model_fingerprint(model)}): retrained or another checkpoint")


class DiffMeanProbe(Probe):
    """Diff-in-means probe: direction = mean(reasoning) - mean(memory) (float64); its own
    threshold is the midpoint of the two classes' mean projections (moved on the fit data when
    another cut has a higher balanced accuracy); ``predict_proba`` is a sigmoid of the
    projection distance to the threshold, in units of the pooled within-class std."""

    kind = "diffmean"
    _tensor_names = ("direction_", "threshold_", "scale_")

    def _scalar_names(self) -> tuple[str, ...]:
        return ("threshold_", "scale_")

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        d = diff_in_means(torch.from_numpy(x), y)
        self.direction_ = d.numpy()
        u = unit(d).numpy()
        proj = x @ u
        m1, m0 = proj[y == 1].mean(), proj[y == 0].mean()
        self.threshold_ = float((m1 + m0) / 2)
        resid = np.concatenate([proj[y == 1] - m1, proj[y == 0] - m0])
        self.scale_ = float(max(resid.std(), 1e-12))

    def _score(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.direction.numpy() - self.threshold_) / self.scale_

    @property
    def direction(self) -> torch.Tensor:
        return unit(torch.as_tensor(self.direction_, dtype=torch.float64))


class LogisticProbe(Probe):
    """Logistic regression (scikit-learn) on standardised features.

    Args:
        C: inverse regularisation strength. l1_ratio: 0 = L2, 1 = L1 (sparse; uses saga).
        standardize: z-score features with the training mean/std first.
    """

    kind = "logistic"
    _tensor_names = ("mean_", "scale_", "coef_", "intercept_")

    def __init__(self, C: float = 1.0, l1_ratio: float = 0.0, standardize: bool = True,
                 max_iter: int = 2000, layer: int | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(layer=layer, metadata=metadata)
        if C <= 0:
            raise LirefError(f"C must be > 0, got {C}")
        if not 0.0 <= l1_ratio <= 1.0:
            raise LirefError(f"l1_ratio must be in [0, 1], got {l1_ratio}")
        self.C = float(C)
        self.l1_ratio = float(l1_ratio)
        self.standardize = bool(standardize)
        self.max_iter = int(max_iter)

    def params(self) -> dict[str, Any]:
        return {"C": self.C, "l1_ratio": self.l1_ratio, "standardize": self.standardize,
                "max_iter": self.max_iter}

    def _scalar_names(self) -> tuple[str, ...]:
        return ("intercept_",)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.scale_

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        if self.standardize:
            self.mean_ = x.mean(0)
            std = x.std(0)
            self.scale_ = np.where(std > 1e-12, std, 1.0)
        else:
            self.mean_ = np.zeros(x.shape[1])
            self.scale_ = np.ones(x.shape[1])
        solver = "saga" if self.l1_ratio > 0 else "lbfgs"
        clf = LogisticRegression(C=self.C, l1_ratio=self.l1_ratio, solver=solver,
                                 max_iter=self.max_iter)
        clf.fit(self._standardise(x), y)
        self.coef_ = clf.coef_.reshape(-1).astype(np.float64)
        self.intercept_ = float(clf.intercept_[0])

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self._standardise(x) @ self.coef_ + self.intercept_

    @property
    def direction(self) -> torch.Tensor:
        """The normal of the decision boundary in raw activation space (coef / std), unit."""
        return unit(torch.as_tensor(self.coef_ / self.scale_, dtype=torch.float64))

    @property
    def n_nonzero(self) -> int:
        return int(np.count_nonzero(self.coef_))


class SparseProbe(LogisticProbe):
    """Sparse probe: L1 logistic regression, optionally restricted to the top-``k`` features.

    With ``k`` set, the ``k`` features with the largest |coef| of the L1 fit are kept and an L2
    logistic is refitted on them (coefficients elsewhere are exactly 0).
    """

    kind = "sparse"

    def __init__(self, C: float = 0.1, k: int | None = None, standardize: bool = True,
                 max_iter: int = 2000, layer: int | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(C=C, l1_ratio=1.0, standardize=standardize, max_iter=max_iter,
                         layer=layer, metadata=metadata)
        if k is not None and k < 1:
            raise LirefError(f"k must be >= 1 or null, got {k}")
        self.k = k

    def params(self) -> dict[str, Any]:
        return {"C": self.C, "k": self.k, "standardize": self.standardize,
                "max_iter": self.max_iter}

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        super()._fit(x, y)
        if self.k is None or self.k >= x.shape[1]:
            return
        keep = np.argsort(-np.abs(self.coef_), kind="stable")[: self.k]
        clf = LogisticRegression(C=1.0, max_iter=self.max_iter)
        clf.fit(self._standardise(x)[:, keep], y)
        coef = np.zeros(x.shape[1])
        coef[keep] = clf.coef_.reshape(-1)
        self.coef_ = coef
        self.intercept_ = float(clf.intercept_[0])


PROBES: dict[str, type[Probe]] = {p.kind: p for p in (DiffMeanProbe, LogisticProbe, SparseProbe)}


@dataclass
class ProbeConfig:
    """Which probe a job fits per layer (``conf/probe/*.yaml``): ``kind`` (one of ``PROBES``)
    and its constructor ``params``."""

    kind: str = "diffmean"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROBES:
            raise LirefError(f"unknown probe kind {self.kind!r}; allowed: {sorted(PROBES)}")


def make_probe(kind: str, **params: Any) -> Probe:
    """A new, unfitted probe of ``kind`` (one of ``PROBES``) with ``params``."""
    if kind not in PROBES:
        raise LirefError(f"unknown probe kind {kind!r}; allowed: {sorted(PROBES)}")
    return PROBES[kind](**params)


def load_probe(path: str | Path) -> Probe:
    """Load a saved probe folder: ``.direction`` (unit ``[d_model]``), ``.layer``,
    ``.predict_proba(X)`` and ``.metadata`` (model, position, data, metrics)."""
    folder = Path(path)
    meta = read_json(folder / "probe.json")
    kind = meta.get("kind")
    if kind not in PROBES:
        raise LirefError(f"{folder}: unknown probe kind {kind!r}; allowed: {sorted(PROBES)}")
    try:
        tensors = load_file(str(folder / "probe.safetensors"))
    except (SafetensorError, OSError, FileNotFoundError) as exc:
        raise LirefError(f"{folder / 'probe.safetensors'} cannot be read: {exc}") from exc
    probe = PROBES[kind](**meta.get("params", {}), layer=meta.get("layer"),
                         metadata=meta.get("metadata"))
    missing = [n for n in probe._tensor_names if n not in tensors]
    if missing:
        raise LirefError(f"{folder}: probe tensors {missing} missing")
    probe._set_tensors(tensors)
    probe.d_model_ = int(meta["d_model"])
    # probes saved before thresholds were chosen predicted at their own threshold (0)
    probe.decision_threshold_ = float(meta.get("threshold", 0.0))
    return probe
