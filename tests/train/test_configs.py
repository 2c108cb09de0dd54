"""One source for every default: each config group's YAML holds only keys its dataclass declares,
with values that differ from the dataclass defaults; every option of every group composes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from train.configs import GROUPS, SCHEMAS, to_settings

CONF = Path(__file__).resolve().parents[2] / "conf"
#: a group option composed into this job's config (the job whose schema holds that group)
JOB_OF_GROUP = {"model": "pipeline", "data": "pipeline", "probe": "pipeline", "sae": "pipeline",
                "corpus": "pipeline", "steer": "pipeline", "logger": "pipeline",
                "conflict_data": "pipeline"}


def _default(cls: type, name: str) -> object:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _options() -> list[tuple[str, Path]]:
    return [(g, p) for g in sorted(GROUPS) for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_folder_has_a_dataclass() -> None:
    folders = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"}
    assert folders == set(GROUPS)
    studies = {p.stem for p in CONF.glob("study_*.yaml")}  # the real-model studies
    assert studies == {"study_smollm2", "study_gemma3"}
    builds = {p.stem for p in CONF.glob("sae_*.yaml")}  # train.sae for the committed SAEs
    assert builds == {"sae_smollm2", "sae_gemma3"}
    assert {p.stem for p in CONF.glob("*.yaml")} - {"base"} - studies - builds == set(SCHEMAS)


@pytest.mark.parametrize(("group", "path"), _options(), ids=lambda x: getattr(x, "stem", x))
def test_yaml_keys_are_declared_and_differ_from_defaults(group: str, path: Path) -> None:
    cls = GROUPS[group]
    data = yaml.safe_load(path.read_text()) or {}
    declared = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key == "defaults":
            continue
        assert key in declared, f"{path.name}: {key!r} is no field of {cls.__name__}"
        if "${" not in str(value):
            assert value != _default(cls, key), (
                f"{path.relative_to(CONF)}: {key}={value!r} repeats {cls.__name__}'s default")


@pytest.mark.parametrize(("group", "path"), _options(), ids=lambda x: getattr(x, "stem", x))
def test_every_group_option_composes_and_validates(group: str, path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    # a conflict set is probed on its own (train.probe, or the pipeline's conflict_data): the
    # pipeline's corpus and steer sets follow the main data
    job = "probe" if path.stem.endswith("_conflict") else JOB_OF_GROUP[group]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(job, overrides=[f"{group}={path.stem}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # paths resolve against hydra:runtime.cwd
    try:
        from omegaconf import OmegaConf

        # a value the user must give (e.g. their file's path): one clear error until given
        if "???" in path.read_text() or OmegaConf.missing_keys(cfg[group]):
            from omegaconf.errors import MissingMandatoryValue

            from probing.errors import LirefError

            with pytest.raises((MissingMandatoryValue, LirefError)):
                to_settings(cfg[group], GROUPS[group])
            return
        settings = to_settings(cfg[group], GROUPS[group])
    finally:
        HydraConfig.instance().cfg = None
    assert isinstance(settings, GROUPS[group])


@pytest.mark.parametrize("job", sorted(SCHEMAS))
def test_every_job_config_composes(job: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(job)
    assert set(cfg) == {f.name for f in dataclasses.fields(SCHEMAS[job])}


def test_unknown_key_is_an_error() -> None:
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(ConfigCompositionException):
            compose("pipeline", overrides=["sae.k_typo=3"])


def test_layers_mean_one_thing_and_the_layer_travels_one_way() -> None:
    """``layers`` = extraction layers everywhere; steering layers are ``steering.steer_layers``;
    no stage is told the probe's chosen layer by the pipeline (each reads it from probe_dir)."""
    import analysis.stages as stages

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pipeline")
    assert "layers" not in cfg.steering and cfg.steering.steer_layers is None
    source = Path(stages.__file__).read_text()
    assert "best_layer\"]" not in source and "state[" not in source


def test_validation_runs_on_composed_settings() -> None:
    from probing.errors import LirefError
    from probing.steering.run import SteeringSettings

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("steer", overrides=["steering.units=furlongs"])
    with pytest.raises(LirefError, match="furlongs"):
        to_settings(cfg.steering, SteeringSettings)
