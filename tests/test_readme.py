"""The README's notebook example runs, as written, on a fresh pipeline run folder."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO


def _notebook_block() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- notebook-example -->\s*```python\n(.*?)```", text, re.S)
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
