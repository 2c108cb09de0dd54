"""probing.load_results: a run's result table as a DataFrame."""

from __future__ import annotations

import json

import pytest

import probing
from probing.errors import LirefError


def test_per_layer_table_of_a_probe_run_and_of_a_pipeline_run(tmp_path):
    rows = [{"layer": 0, "auroc": 0.7}, {"layer": 1, "auroc": 0.9}]
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "per_layer.json").write_text(json.dumps(rows))
    df = probing.load_results(tmp_path)  # a pipeline folder: found in probe/
    assert list(df["layer"]) == [0, 1] and df.loc[1, "auroc"] == 0.9
    df2 = probing.load_results(tmp_path / "probe", table="per_layer")
    assert df2.equals(df)
    (tmp_path / "match").mkdir()
    (tmp_path / "match" / "latents.json").write_text(json.dumps([{"latent": 3, "rank": 1}]))
    with pytest.raises(LirefError, match="several tables"):
        probing.load_results(tmp_path)
    assert probing.load_results(tmp_path, "latents")["latent"].tolist() == [3]
    with pytest.raises(LirefError, match="unknown result table 'x'"):
        probing.load_results(tmp_path, "x")
    with pytest.raises(LirefError, match="holds a 'steering' table"):
        probing.load_results(tmp_path, "steering")
    with pytest.raises(LirefError, match="does not exist"):
        probing.load_results(tmp_path / "missing")


def test_write_csv_union_of_keys_or_given_columns(tmp_path):
    """``probing.io.write_csv`` (steering results.csv and match latents.csv): header, empty cells
    for ``None`` / missing keys, quoting, the union of keys in first-seen order or the given
    columns only."""
    import csv

    from probing.io import write_csv

    rows = [{"a": 1, "b": None, "c": "x,y"}, {"b": 2.5, "d": 'q"uote', "a": 3}]
    path = write_csv(tmp_path / "all.csv", rows)
    assert path.read_bytes() == b'a,b,c,d\r\n1,,"x,y",\r\n3,2.5,,"q""uote"\r\n'
    with path.open(newline="") as fh:
        assert list(csv.DictReader(fh))[1] == {"a": "3", "b": "2.5", "c": "", "d": 'q"uote'}
    some = write_csv(tmp_path / "some.csv", rows, ["d", "a"])
    assert some.read_text().splitlines() == ["d,a", ",1", '"q""uote",3']
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
