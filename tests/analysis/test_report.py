"""``python -m analysis.report``: ``compare=[...]`` writes the side-by-side table of finished
runs into the job's run folder (or ``out=``); a folder that is not a finished run is exit
status 2 with one error line naming it."""

from __future__ import annotations

import json

from tests.job_fixtures import run_main_in_process
from tests.report.test_compare import full_run
from tests.report.test_findings import write_run


def test_compare_writes_one_table_of_the_runs(tmp_path, monkeypatch, capsys):
    a = full_run(tmp_path / "a", model="organism", n_layers=4)
    b = write_run(tmp_path / "b", stages=("probe",))  # stopped after the probe stage
    (b / "probe" / "directions").mkdir()
    (b / "probe" / "directions" / "directions.json").write_text(
        json.dumps({"model": "gemma-3-270m", "n_layers": 18}))

    def run(*args: str) -> tuple[int, str]:
        return run_main_in_process("analysis.report", list(args), tmp_path,
                                   monkeypatch, capsys)

    code, err = run(f"compare=[{a},{b}]")
    assert code == 0, err
    (folder,) = (tmp_path / "outputs" / "report").iterdir()  # the job's run folder
    assert {"compare.md", "compare.html", "compare.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "metrics.json").read_text())["compared_runs"] == 2
    rows = json.loads((folder / "compare.json").read_text())["rows"]
    assert [(r["model"], r["n_blocks"]) for r in rows] == [("organism", 4), ("gemma-3-270m", 18)]
    assert rows[1]["cells"]["sae"]["text"] == "\u2014"

    code, err = run(f"compare=[{b}]", f"out={tmp_path / 'cmp'}")
    assert code == 0, err
    assert (tmp_path / "cmp" / "compare.html").is_file()

    code, err = run(f"compare=[{a},{tmp_path}]")  # a folder that holds runs, not a run
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert f"{tmp_path} is not a finished run folder" in errors[0]
    code, err = run(f"run_dir={a}", f"compare=[{a}]")
    assert code == 2 and "not both" in err
