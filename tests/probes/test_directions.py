from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.errors import LirefError
from probing.probes.directions import (
    diff_in_means,
    layer_directions,
    load_direction,
    load_directions,
    project,
    save_directions,
    select_layer,
    unit,
)


def test_diff_in_means_is_float64_class_mean_difference():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [0.0, 3.0]])
    y = [1, 1, 0, 0]
    d = diff_in_means(x, y)
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, torch.tensor([2.0, -1.0], dtype=torch.float64))


def test_layer_directions_match_per_layer_diff_in_means():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(20, 3, 5, generator=g)
    y = np.array([0, 1] * 10)
    dirs = layer_directions(acts, y)
    assert dirs.shape == (3, 5)
    for j in range(3):
        torch.testing.assert_close(dirs[j], diff_in_means(acts[:, j], y))


def test_projection_and_width_mismatch():
    d = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(project(torch.tensor([[3.0, 4.0]]), d),
                               torch.tensor([5.0], dtype=torch.float64))
    assert unit(d).norm().item() == pytest.approx(1.0)
    with pytest.raises(LirefError, match="width 3 but the direction has width 2"):
        project(torch.ones(1, 3), d)


@pytest.mark.parametrize(
    ("x", "y", "msg"),
    [
        (torch.ones(0, 2), [], "empty data"),
        (torch.ones(3, 2), [1, 1, 1], "one-class data: all 3 examples are labelled 'reasoning'"),
        (torch.ones(3, 2), [0, 0, 0], "labelled 'memory'"),
        (torch.ones(3, 2), [0, 1], "3 activation rows but 2 labels"),
        (torch.ones(3, 2), [0, 1, 2], "labels must be 0"),
    ],
)
def test_bad_labels(x, y, msg):
    with pytest.raises(LirefError, match=msg):
        diff_in_means(x, y)


def test_select_layer_and_save_load(tmp_path):
    rows = [{"layer": 0, "auroc": 0.6}, {"layer": 1, "auroc": 0.9}, {"layer": 2, "auroc": 0.9}]
    assert select_layer(rows) == 1
    dirs = torch.randn(3, 4, dtype=torch.float64)
    save_directions(tmp_path, dirs, [0, 1, 2], {"model": "m"})
    loaded, meta = load_directions(tmp_path)
    assert meta["model"] == "m" and meta["d_model"] == 4
    torch.testing.assert_close(loaded[2], dirs[2])


def test_load_one_layer_and_the_chosen_one(tmp_path):
    dirs = torch.randn(3, 4, dtype=torch.float64)
    save_directions(tmp_path / "directions", dirs, [0, 2, 5], {"best_layer": 2})
    one, meta = load_directions(tmp_path, layer=5)  # a run folder holding directions/
    torch.testing.assert_close(one, dirs[2])
    torch.testing.assert_close(load_direction(tmp_path), dirs[1])  # best_layer
    torch.testing.assert_close(load_direction(tmp_path / "directions", 0), dirs[0])
    with pytest.raises(LirefError, match=r"layer 3 has no saved direction .*\[0, 2, 5\]"):
        load_directions(tmp_path, layer=3)
    with pytest.raises(LirefError, match="no saved directions in"):
        load_directions(tmp_path / "nowhere")
    (tmp_path / "directions" / "directions.safetensors").write_bytes(b"junk")
    with pytest.raises(LirefError, match="cannot be read"):
        load_directions(tmp_path)
