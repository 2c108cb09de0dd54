"""Every job's settings as Hydra structured configs: one source for each default.

The settings of a stage are the library's own dataclasses (``SAETrainConfig``,
``SAEDataConfig``, ``MatchSettings``, ``SteeringSettings``, ``SteerSets``, ``OrganismConfig``,
``ModelConfig``, ...), validated in their ``__post_init__``. This module composes them into one
schema per job and registers it in Hydra's ``ConfigStore`` as ``<job>_schema``; each primary
config (``conf/<job>.yaml``) names its schema first in its defaults list, so the YAML files under
``conf/`` hold only what differs from these defaults, and a key that no dataclass declares is an
error when the config is composed. ``to_settings(cfg.<section>, Class)`` turns a composed section
into the validated dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from probing.activations.corpus import TextCorpusConfig
from probing.conflicts.build import ConflictConfig
from probing.matching.run import MatchSettings
from probing.model.loading import ModelConfig
from probing.organism.config import OrganismConfig
from probing.probes.estimators import ProbeConfig
from probing.probes.evaluation import EvalConfig
from probing.questions import DataConfig
from probing.questions.prompts import PromptConfig
from probing.sae.runs import SAEConfig, SAEDataConfig
from probing.steering.run import SteeringSettings, SteerSets
from train.tracking import LoggerConfig

__all__ = ["GROUPS", "SCHEMAS", "register_configs", "to_settings"]

T = TypeVar("T")

CACHE_DIR = "${oc.env:LIREF_CACHE,${hydra:runtime.cwd}/.cache/liref}"


@dataclass
class JobConfig:
    """Shared by every job: seed (python, numpy, torch), caches, wandb."""

    seed: int = 0
    #: content-addressed caches (activations, token activations, retrained organisms)
    cache_dir: str = CACHE_DIR
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class ModelJobConfig(JobConfig):
    """A job that runs a model on prompts."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    #: extraction layers (layer l = output of decoder block l); null = every layer
    layers: list[int] | None = None
    #: where question activations are read: last prompt token (the paper) or mean over the prompt
    position: str = "last"
    batch_size: int = 16
    #: how knowledge-conflict sets (popqa_conflict, organism_conflict) are built for the model
    conflict: ConflictConfig = field(default_factory=ConflictConfig)


@dataclass
class ExtractJob(ModelJobConfig):
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class ProbeJob(ExtractJob):
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class ConflictJob(ProbeJob):
    #: the counterfactual items probed on the model's behaviour (a ``data`` config option)
    conflict_data: DataConfig = field(default_factory=DataConfig)
    #: a probe run whose LiReF is scored on the conflict items (``data.transfer`` sets' too)
    probe_dir: str | None = None
    #: label-permuted directions in the null of the knob cosine
    n_permutations: int = 1000


@dataclass
class SAEJob(ModelJobConfig):
    sae: SAEConfig = field(default_factory=SAEConfig)
    corpus: TextCorpusConfig = field(default_factory=TextCorpusConfig)
    activations: SAEDataConfig = field(default_factory=SAEDataConfig)
    #: the SAE's layer; null = the probe run's chosen layer (``probe_dir``'s best_layer)
    layer: int | None = None
    probe_dir: str | None = None
    #: with ``probe_dir`` and no ``layer``: the best validation AUROC among the first this
    #: fraction of the blocks (``probing.sae.builtin.choose_sae_block``); null = best overall
    max_relative_depth: float | None = None
    #: also write a float16 copy with ``metrics.json`` (training curve, block choice) here
    #: (``probing/sae/builtin/<model name>`` for the committed SAEs of the built-in models)
    export_dir: str | None = None


@dataclass
class MatchJob(ExtractJob):
    matching: MatchSettings = field(default_factory=MatchSettings)
    #: sae=<architecture> picks that SAE under sae_dir; sae=<pretrained entry> loads a release
    sae: SAEConfig | None = None
    probe_dir: str | None = None
    sae_dir: str | None = None
    #: null = the SAE's recorded layer (checked against the probe's layers)
    layer: int | None = None
    #: null = the probe's position (a different one is an error)
    position: str | None = None


@dataclass
class SteerJob(ModelJobConfig):
    steer: SteerSets = field(default_factory=SteerSets)
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    probe_dir: str | None = None
    match_dir: str | None = None
    sae_dir: str | None = None
    #: a conflict run: its direction (the knob) is steered beside the LiReF
    conflict_dir: str | None = None


@dataclass
class PipelineJob(ConflictJob):
    sae: SAEConfig = field(default_factory=SAEConfig)
    corpus: TextCorpusConfig = field(default_factory=TextCorpusConfig)
    activations: SAEDataConfig = field(default_factory=SAEDataConfig)
    matching: MatchSettings = field(default_factory=MatchSettings)
    steer: SteerSets = field(default_factory=SteerSets)
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    stages: list[str] = field(default_factory=lambda: ["probe", "conflict", "sae", "match",
                                                       "steer"])
    #: restore a stage from ``<cache_dir>/stages/`` when its inputs are unchanged
    reuse_stages: bool = True
    #: the SAE's layer; null = the probe stage's chosen layer
    layer: int | None = None
    # the input folders of the consuming stages (set by the pipeline per stage)
    probe_dir: str | None = None
    sae_dir: str | None = None
    match_dir: str | None = None
    conflict_dir: str | None = None


@dataclass
class ReportJob(JobConfig):
    run_dir: str | None = None
    #: finished run folders to put side by side in one table (compare.md / .html / .json)
    compare: list[str] | None = None
    #: where the comparison is written; null = this job's run folder
    out: str | None = None
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(mode="disabled"))


@dataclass
class OrganismJob(JobConfig):
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    out_dir: str | None = None
    progress: bool = True


#: job name (its primary config ``conf/<job>.yaml``) -> schema
SCHEMAS: dict[str, type] = {
    "extract": ExtractJob, "probe": ProbeJob, "conflict": ConflictJob, "sae": SAEJob,
    "match": MatchJob,
    "steer": SteerJob, "pipeline": PipelineJob, "report": ReportJob, "organism": OrganismJob,
}

#: config group (folder under conf/) -> the dataclass its options fill
#: (sections without a group folder, e.g. ``eval``, ``activations``, ``matching``, ``steering``,
#: take their defaults from their dataclass alone: ``eval.k_folds=5`` overrides one)
GROUPS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "probe": ProbeConfig, "sae": SAEConfig,
    "corpus": TextCorpusConfig, "steer": SteerSets, "logger": LoggerConfig,
    "conflict_data": DataConfig,
}


def register_configs() -> None:
    """Register every job schema as ``<job>_schema`` (idempotent)."""
    cs = ConfigStore.instance()
    for job, schema in SCHEMAS.items():
        cs.store(name=f"{job}_schema", node=schema)


def to_settings(node: DictConfig | Any, cls: type[T]) -> T:
    """A composed config section as its validated dataclass (``__post_init__`` runs)."""
    if node is None:
        return cls()
    if isinstance(node, cls):
        return node
    if isinstance(node, DictConfig):  # interpolations resolve against the whole job config
        plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        merged = OmegaConf.merge(OmegaConf.structured(cls), plain)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    return cls(**node)


register_configs()
