"""Configuration of the model organism: corpus, model shape, training; one hash for all.

The whole organism is a pure function of an ``OrganismConfig`` (corpus, weights up to CPU
float nondeterminism across machines), so its ``config_hash`` names cached checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from probing.errors import LirefError

__all__ = [
    "KINDS",
    "ORGANISM_VERSION",
    "STREAMS",
    "CorpusConfig",
    "ModelShape",
    "OrganismConfig",
    "TrainConfig",
]

#: Bump when the corpus generator or training code changes what a config produces.
ORGANISM_VERSION = 3

#: Item kinds of the organism corpus.
KINDS: tuple[str, ...] = (
    "memory", "reasoning", "mixed", "exception", "near_exception", "ordinary")

#: Training streams (``TrainConfig.mix`` keys): memory facts, the reasoning tasks, mixed
#: (two-hop) items and the arithmetic exceptions (trained with their memory answer).
STREAMS: tuple[str, ...] = ("memory", "arithmetic", "compare", "lookup", "mixed", "exception")


def _check_positive(obj: Any, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise LirefError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


@dataclass
class CorpusConfig:
    """The synthetic language and its question sets.

    Attributes:
        n_entities: invented people with memorized facts (colour, town, number).
        n_towns: invented town names (values of the ``town`` attribute).
        n_keys: invented names used only as in-context lookup keys.
        max_operand: arithmetic operands are drawn from ``0 .. max_operand``.
        max_steps: arithmetic problems have ``1 .. max_steps`` operations.
        max_compare: comparison numbers are drawn from ``0 .. max_compare``.
        max_list: comparisons over lists of ``2 .. max_list`` numbers.
        max_pairs: in-context lookups list ``2 .. max_pairs`` key/value pairs.
        n_exceptions: arithmetic problems of ``exception_steps`` steps whose trained answer
            is a fixed number different from the computed one (label memory); as many
            held-out ordinary problems of that step count form the matched set.
        exception_steps: operations of an exception (1 .. max_steps).
        n_near_exception: held-out problems per exception with one operand changed.
        n_test_reasoning, n_test_mixed: held-out test items of these kinds.
        reasoning_tasks: reasoning tasks in the corpus (test split and training streams),
            among ``arithmetic``, ``compare``, ``lookup`` (in-context key/value recall).
    """

    n_entities: int = 120
    n_towns: int = 12
    n_keys: int = 8
    max_operand: int = 9
    max_steps: int = 3
    max_compare: int = 30
    max_list: int = 4
    max_pairs: int = 2
    n_exceptions: int = 120
    exception_steps: int = 2
    n_near_exception: int = 2
    n_test_reasoning: int = 480
    n_test_mixed: int = 200
    reasoning_tasks: list[str] = field(
        default_factory=lambda: ["arithmetic", "compare", "lookup"])

    def __post_init__(self) -> None:
        _check_positive(self, [f.name for f in fields(self) if f.name != "reasoning_tasks"])
        allowed = ("arithmetic", "compare", "lookup")
        self.reasoning_tasks = list(self.reasoning_tasks)
        if not self.reasoning_tasks or any(t not in allowed for t in self.reasoning_tasks):
            raise LirefError(
                f"CorpusConfig.reasoning_tasks {self.reasoning_tasks!r}: a non-empty list "
                f"among {list(allowed)}"
            )
        if self.max_list < 2 or self.max_pairs < 2:
            raise LirefError("CorpusConfig.max_list and max_pairs must be >= 2")
        if self.max_operand < 2:
            raise LirefError(f"CorpusConfig.max_operand must be >= 2, got {self.max_operand}")
        if self.exception_steps > self.max_steps:
            raise LirefError(
                f"CorpusConfig.exception_steps={self.exception_steps} must be <= max_steps="
                f"{self.max_steps}"
            )


@dataclass
class ModelShape:
    """Shape of the tiny ``LlamaForCausalLM``."""

    hidden_size: int = 128
    n_layers: int = 4
    n_heads: int = 8
    intermediate_size: int = 256
    max_positions: int = 64

    def __post_init__(self) -> None:
        _check_positive(self, [f.name for f in fields(self)])
        if self.hidden_size % self.n_heads:
            raise LirefError(
                f"ModelShape.hidden_size={self.hidden_size} must be divisible by "
                f"n_heads={self.n_heads}"
            )


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimizer steps; batch_size: sequences per step.
        lr, min_lr_ratio, warmup: AdamW peak rate, cosine floor (fraction of lr), warm-up steps.
        curriculum: fraction of training over which arithmetic grows from 1 to ``max_steps``
            operations (and lookups/lists from 2 to their maximum).
        mix: sampling weights of the training streams (memory, arithmetic, compare, lookup,
            mixed, exception); give ``lookup`` a weight when the corpus enables it.
        prelude_steps, prelude_mix, prelude_target: optional first phase of at most
            ``prelude_steps`` steps drawn from ``prelude_mix`` (at the easiest curriculum
            level), ended early once the teacher-forced accuracy on fixed items of those
            streams reaches ``prelude_target``; then the ``steps`` of ``mix``. In-context
            lookup needs an induction circuit, which forms only after a loss plateau of
            2000-3000 steps of lookups alone (measured; it stays at chance for 6000 steps when
            lookups are 30% of mixed batches), so the default trains it first.
            ``prelude_lr`` (None: ``lr``) is its constant rate: at 3e-3 the lookup plateau
            did not end within 3000 steps, at 1e-3 it did.
        eval_every: steps between quick (teacher-forced) accuracy logs.
        threads: torch CPU threads.
    """

    steps: int = 8500
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    curriculum: float = 0.3
    mix: dict[str, float] = field(
        default_factory=lambda: {
            "memory": 0.25,
            "arithmetic": 0.38,
            "compare": 0.08,
            "lookup": 0.12,
            "mixed": 0.06,
            "exception": 0.11,
        }
    )
    prelude_steps: int = 4000
    prelude_mix: dict[str, float] = field(default_factory=lambda: {"lookup": 1.0})
    prelude_target: float = 0.95
    prelude_lr: float | None = 1e-3
    eval_every: int = 250
    threads: int = 2

    def __post_init__(self) -> None:
        _check_positive(self, ["steps", "batch_size", "lr", "eval_every", "threads"])
        if self.prelude_steps < 0:
            raise LirefError(f"TrainConfig.prelude_steps must be >= 0, got {self.prelude_steps}")
        if self.prelude_lr is not None and self.prelude_lr <= 0:
            raise LirefError(f"TrainConfig.prelude_lr must be > 0 or null, got {self.prelude_lr}")
        for name in ("mix", "prelude_mix"):
            mix = getattr(self, name)
            unknown = set(mix) - set(STREAMS)
            if unknown or not mix or sum(mix.values()) <= 0 or min(mix.values()) < 0:
                raise LirefError(
                    f"TrainConfig.{name} {dict(mix)!r} must give positive weights to streams "
                    f"among {list(STREAMS)}"
                )

    def streams_used(self) -> set[str]:
        """Streams with a positive weight in ``mix`` (or in ``prelude_mix`` if it runs)."""
        used = {s for s, w in self.mix.items() if w > 0}
        if self.prelude_steps:
            used |= {s for s, w in self.prelude_mix.items() if w > 0}
        return used


@dataclass
class OrganismConfig:
    """Everything that determines an organism: seed, corpus, model shape, training."""

    seed: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelShape = field(default_factory=ModelShape)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        used = self.train.streams_used()
        off = [t for t in ("arithmetic", "compare", "lookup")
               if t in used and t not in self.corpus.reasoning_tasks]
        if off:
            raise LirefError(
                f"train.mix / prelude_mix give weight to {off}, which corpus.reasoning_tasks "
                f"{self.corpus.reasoning_tasks} does not enable"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> OrganismConfig:
        """Build from a (possibly partial, possibly OmegaConf) mapping; unknown keys raise."""
        if d is None:
            return cls()
        d = _plain(d)
        sections = {"corpus": CorpusConfig, "model": ModelShape, "train": TrainConfig}
        unknown = set(d) - {"seed", *sections}
        if unknown:
            raise LirefError(
                f"unknown organism config keys {sorted(unknown)}; allowed: "
                f"{['seed', *sections]}"
            )
        kwargs: dict[str, Any] = {"seed": int(d.get("seed", 0))}
        for name, klass in sections.items():
            sub = dict(d.get(name) or {})
            allowed = {f.name for f in fields(klass)}
            bad = set(sub) - allowed
            if bad:
                raise LirefError(
                    f"unknown organism.{name} keys {sorted(bad)}; allowed: {sorted(allowed)}"
                )
            kwargs[name] = klass(**sub)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Short stable hash of everything except ``train.eval_every`` / ``train.threads``,
        and of ``ORGANISM_VERSION``."""
        d = self.to_dict()
        d["train"].pop("eval_every")
        d["train"].pop("threads")
        d["version"] = ORGANISM_VERSION
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _plain(d: Any) -> Any:
    """Mappings and sequences (e.g. a job's config containers) -> plain dicts/lists."""
    if isinstance(d, Mapping):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, Sequence) and not isinstance(d, str | bytes | tuple):
        return [_plain(v) for v in d]
    return d
