"""The README is true: its notebook example runs on a fresh pipeline run folder, every job command
line in it composes with Hydra (and its settings validate), every path its layout names exists and
every module of the packages is named there, and no section appears twice."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
CONF = REPO / "conf"
#: job module -> its primary config (conf/<name>.yaml)
JOB_CONFIGS = {
    "analysis.pipeline": "pipeline", "train.probe": "probe", "train.sae": "sae",
    "train.extract": "extract", "train.organism": "organism", "analysis.match": "match",
    "analysis.steer": "steer", "analysis.report": "report", "analysis.conflict": "conflict",
}
JOB_COMMAND = re.compile(r"python -m ((?:train|analysis)\.\w+)(.*)")
#: `<probe run>`-style placeholders and `=...` values become a dummy value
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>|(?<==)\.\.\.(?=\s|$)")
#: the depth-0/1/2 entries of the layout tree are indented by at most this; deeper = continuation
MAX_TREE_INDENT = 4


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _notebook_block() -> str:
    m = re.search(r"<!-- notebook-example -->\s*```python\n(.*?)```", _text(), re.S)
    assert m, "README.md has no <!-- notebook-example --> python block"
    return m.group(1)


def test_readme_notebook_example_runs(organism_study, monkeypatch):
    monkeypatch.chdir(organism_study)  # where outputs/pipeline/<time> is
    env: dict = {}
    exec(compile(_notebook_block(), "README.md:notebook-example", "exec"), env)
    probe, layer = env["probe"], env["layer"]
    assert layer == probe.layer and layer in set(env["per_layer"]["layer"])
    assert env["p_reasoning"].shape == (env["x"].shape[0],)
    assert len(env["acts"].ids) == env["x"].shape[0] and set(env["acts"].labels) == {
        "reasoning", "memory"}
    assert {"latent", "rank", "decoder_cosine"} <= set(env["latents"].columns)
    assert {"set", "intervention", "accuracy", "diff"} <= set(env["steering"].columns)
    assert -1.0 <= float(env["cosine"]) <= 1.0
    assert len(env["plain"]) == len(env["pushed"]) == 8
    assert tuple(env["ablated"].shape) == (8, 1, env["direction"].shape[0])
    with pytest.raises(Exception, match="layer"):
        probe.check(layer=layer + 1)


# --- every job command line composes -------------------------------------------------------

def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)


def _job_commands(text: str) -> list[str]:
    """Every ``python -m <train|analysis>.<job> ...`` line of the README's code blocks (backslash
    continuations joined) and of its inline code spans, as written."""
    lines = [line for block in _code_blocks(text)
             for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return [m.group(0).strip() for line in lines if (m := JOB_COMMAND.search(line))]


def _parse(command: str) -> tuple[str, list[str], bool]:
    """``(config name, overrides, multirun)`` of one command line; placeholders -> ``x``."""
    m = JOB_COMMAND.search(PLACEHOLDER.sub("x", command))
    assert m, command
    module, args = m.group(1), shlex.split(m.group(2), comments=True)
    assert module in JOB_CONFIGS, f"{module} is not a job (known: {sorted(JOB_CONFIGS)})"
    name, overrides, multirun = JOB_CONFIGS[module], [], False
    it = iter(args)
    for arg in it:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--config-name", "-cn"):
            name = next(it)
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        else:
            assert not arg.startswith("-"), f"{command}: unexpected flag {arg}"
            overrides.append(arg)
    return name, overrides, multirun


def _expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """A multirun's sweeps as plain override lists: every value of each swept key, the other
    sweeps at their first value. Outside a multirun the overrides are composed as given."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override()
              else [o.get_value_element_as_str()] for o in parsed]
    keys = [o.get_key_element() for o in parsed]
    combos = {tuple(v[0] for v in values)}
    for i, options in enumerate(values):
        for option in options:
            combos.add(tuple(option if j == i else v[0] for j, v in enumerate(values)))
    return [[f"{k}={v}" for k, v in zip(keys, combo, strict=True)] for combo in sorted(combos)]


def _compose_and_validate(name: str, overrides: list[str]) -> object:
    """Hydra's compose on ``conf/<name>.yaml`` with ``overrides`` (unknown keys are errors: the
    schemas are structured), then the whole config as its job dataclass, so that every section's
    ``__post_init__`` validates the values too. Nothing is run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    import train.configs  # noqa: F401  (registers the job schemas in the ConfigStore)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # paths resolve against hydra:runtime.cwd
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_object(cfg)
    finally:
        HydraConfig.instance().cfg = None


COMMANDS = sorted(set(_job_commands(_text())))


def test_readme_names_the_job_commands():
    assert len(COMMANDS) >= 30
    jobs = {JOB_COMMAND.search(c).group(1) for c in COMMANDS}  # type: ignore[union-attr]
    assert jobs == set(JOB_CONFIGS), f"jobs without a command line: {set(JOB_CONFIGS) - jobs}"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_composes(command: str):
    from train.configs import SCHEMAS

    name, overrides, multirun = _parse(command)
    assert (CONF / f"{name}.yaml").is_file(), f"{command}: no conf/{name}.yaml"
    for plain in _expand(overrides, multirun):
        job = _compose_and_validate(name, plain)
        job_name = name if name in SCHEMAS else "sae" if name.startswith("sae_") else "pipeline"
        schema = SCHEMAS[job_name]  # sae_<model>.yaml: train.sae; study_<model>.yaml: pipeline
        assert isinstance(job, schema), (command, type(job))


@pytest.mark.parametrize("command", [
    "python -m analysis.steer probe_dir=x interventions=[add]",  # now steering.interventions
    "python -m analysis.match probe_dir=x sae_dir=x top_k=10",  # now matching.top_k
    "python -m train.probe eval.k_fold=5",
    "python -m analysis.steer probe_dir=x steering.units=furlongs",  # declared key, bad value
])
def test_command_check_rejects_unknown_keys_and_bad_values(command: str):
    name, overrides, multirun = _parse(command)
    with pytest.raises(Exception):  # noqa: B017  (Hydra's or the dataclass's error)
        for plain in _expand(overrides, multirun):
            _compose_and_validate(name, plain)


def test_multirun_sweeps_are_expanded():
    name, overrides, multirun = _parse(
        "python -m train.sae -m sae=topk,jumprelu sae.k=8,16 probe_dir=<probe run>  # sweep")
    assert (name, multirun) == ("sae", True)
    assert sorted(map(tuple, _expand(overrides, multirun))) == [
        ("sae=jumprelu", "sae.k=8", "probe_dir=x"), ("sae=topk", "sae.k=16", "probe_dir=x"),
        ("sae=topk", "sae.k=8", "probe_dir=x")]
    assert _parse("python -m analysis.pipeline --config-name study_smollm2 stages=[probe]") == (
        "study_smollm2", ["stages=[probe]"], False)


def test_every_python_module_named_exists():
    for module in set(re.findall(r"python -m ((?:train|analysis|benchmarks)\.\w+)", _text())):
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module


# --- the layout names real paths, and every module ------------------------------------------

def _layout_block() -> list[str]:
    section = _text().split("\n## Layout\n", 1)
    assert len(section) == 2, "README.md has no ## Layout section"
    blocks = _code_blocks(section[1])
    assert blocks, "the Layout section has no code block"
    return blocks[0].splitlines()


def _layout_paths() -> dict[Path, str]:
    """Every path the layout tree names -> the line naming it: each entry's path tokens (nested by
    two-space indentation) and the file or folder names (``x.py``, ``x.yaml``, ``x/``) in its
    description, relative to the entry's folder."""
    named: dict[Path, str] = {}
    parents: dict[int, Path] = {-1: REPO}
    base = REPO
    for line in _layout_block():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= MAX_TREE_INDENT:  # an entry: "<path> [<path> ...]  <description>"
            depth = indent // 2
            head, _, description = line.strip().partition("  ")
            tokens = head.split()
            parent = parents[depth - 1]
            for token in tokens:
                named[parent / token] = line
            if len(tokens) == 1 and tokens[0].endswith("/"):
                parents[depth] = base = parent / tokens[0]
            else:
                base = parent
        else:  # a continuation of the previous entry's description
            description = line
        for word in description.split():
            word = word.strip("(),;:`'\"")
            if re.fullmatch(r"\w[\w.-]*(?:/[\w.-]+)*(?:\.py|\.yaml|/)", word):
                named[base / word] = line
    return named


def test_layout_paths_exist():
    named = _layout_paths()
    assert len(named) > 60
    missing = [f"{p.relative_to(REPO)}  (line: {line.strip()!r})" for p, line in named.items()
               if not p.exists()]
    assert not missing, "the README layout names paths that do not exist:\n" + "\n".join(missing)


def test_layout_names_every_module_and_package():
    named = {p.resolve() for p in _layout_paths()}
    modules = [p for pkg in ("probing", "train", "analysis") for p in (REPO / pkg).rglob("*.py")
               if p.name != "__init__.py" and "checkpoint" not in p.parts]
    packages = [p.parent for p in (REPO / "probing").rglob("__init__.py")]
    unnamed = sorted(str(p.relative_to(REPO)) for p in [*modules, *packages]
                     if p.resolve() not in named)
    assert not unnamed, "the README layout does not name: " + ", ".join(unnamed)


# --- no section twice --------------------------------------------------------------------------

def test_no_heading_twice():
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", _text(), flags=re.S | re.M)
    headings = re.findall(r"^#{2,3} (.+?)\s*$", prose, re.M)
    assert len(headings) >= 10
    twice = sorted({h for h in headings if headings.count(h) > 1})
    assert not twice, f"headings that appear twice: {twice}"
    # each job has one section
    for module in JOB_CONFIGS:
        sections = [h for h in headings if f"`python -m {module}" in h]
        assert len(sections) == 1, (module, sections)


def test_main_job_comes_first_and_results_after_the_jobs():
    headings = re.findall(r"^#{2,3} (.+?)\s*$",
                          re.sub(r"^```[^\n]*\n.*?^```", "", _text(), flags=re.S | re.M), re.M)
    jobs = [h for h in headings if h.startswith("`python -m ")]
    assert jobs[0].startswith("`python -m analysis.pipeline`")
    order = [next(i for i, h in enumerate(headings) if h.startswith(s)) for s in (
        "The two commands", "What `make run` produces", "The jobs", "In a notebook", "Sweeps",
        "What it finds", "Benchmarks", "Layout")]
    assert order == sorted(order), headings


def test_every_benchmark_is_in_make_bench_and_the_table():
    from benchmarks import run_all

    present, missing = run_all.available()
    on_disk = {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {
        "__init__", "common", "run_all"}
    assert not missing and set(present) == on_disk
    table = _text().split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    for name in on_disk:
        assert f"`python -m benchmarks.{name}`" in table, name

