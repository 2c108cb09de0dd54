"""train.tracking: the failure-proof wandb wrapper and the offline-run reader."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probing.errors import LirefError
from train.tracking import Tracker, flatten, read_offline_run, tracked


def _exercise(tracker: Tracker, png: Path | None = None) -> None:
    """Every call a job makes, in the order jobs make them."""
    tracker.define_metric("probe/*", step_metric="probe/layer")
    tracker.log({"probe": {"layer": 0, "accuracy": 0.5}})
    tracker.log({"probe/layer": 1, "probe/accuracy": 0.75})
    tracker.log_table("probe/per_layer", ["layer", "accuracy"], [[0, 0.5], [1, 0.75]])
    if png is not None:
        tracker.log_image("probe/plot", png)
    tracker.summary({"best": {"accuracy": 0.75}, "best_layer": 1, "skipped": float("nan"),
                     "note": "ok"})


def _png(path: Path) -> Path:
    from probing.figures import agg_figure, save_png

    fig, ax = agg_figure(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    return save_png(fig, path)


def test_flatten_nested_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}


def test_bad_mode_is_a_clear_error() -> None:
    with pytest.raises(LirefError, match=r"'onlne'.*offline.*online.*disabled"):
        Tracker(mode="onlne")


def test_disabled_mode_never_imports_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` now raises ImportError
    caplog.set_level(logging.WARNING, logger="train.tracking")
    with tracked(mode="disabled", dir=tmp_path / "run", config={"seed": 0}) as tracker:
        _exercise(tracker, tmp_path / "not-there.png")
        tracker.log_artifact(tmp_path, "probe", "probe")
        assert not tracker.active
    assert tracker.run is None and tracker.run_dir is None
    assert not (tmp_path / "run").exists()
    assert caplog.records == []  # an attempted import would have logged a failure


def test_offline_run_is_read_back(tmp_path: Path) -> None:
    tracker = Tracker(mode="offline", project="liref-test", name="unit-run", group="unit-group",
                      job_type="probe", tags=["t1"], dir=tmp_path,
                      config={"seed": 3, "probe": {"kind": "diffmean"}})
    tracker.start()
    assert tracker.active, "offline wandb run did not start"
    run_dir = tracker.run_dir
    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert run_dir.parent == tmp_path / "wandb"
    _exercise(tracker, _png(tmp_path / "plot.png"))
    tracker.finish()
    assert not tracker.active

    rec = read_offline_run(run_dir)
    summary = rec["summary"]
    assert summary["best/accuracy"] == 0.75
    assert summary["best_layer"] == 1
    assert summary["note"] == "ok"
    assert "skipped" not in summary  # NaN is not logged
    assert summary["probe/per_layer/_type"] == "table-file"
    assert summary["probe/per_layer/nrows"] == 2
    assert summary["probe/plot/_type"] == "image-file"
    steps = [(row["probe/layer"], row["probe/accuracy"])
             for row in rec["history"] if "probe/accuracy" in row]
    assert steps == [(0, 0.5), (1, 0.75)]
    assert rec["config"]["seed"] == 3
    assert rec["config"]["probe"] == {"kind": "diffmean"}
    run = rec["run"]
    assert (run["name"], run["group"], run["job_type"], run["project"]) == (
        "unit-run", "unit-group", "probe", "liref-test")
    assert run["tags"] == ["t1"]
    # the same reader accepts the folder above the run folder
    assert read_offline_run(tmp_path / "wandb")["summary"]["best_layer"] == 1


def test_read_offline_run_errors(tmp_path: Path) -> None:
    with pytest.raises(LirefError, match="no .wandb file"):
        read_offline_run(tmp_path)
    (tmp_path / "run-x.wandb").write_bytes(b"not a wandb log")
    with pytest.raises(LirefError, match="not a wandb transaction log"):
        read_offline_run(tmp_path)


def test_init_failure_warns_and_turns_tracking_off(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import wandb

    def broken_init(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no account")

    monkeypatch.setattr(wandb, "init", broken_init)
    caplog.set_level(logging.WARNING, logger="train.tracking")
    tracker = Tracker(mode="offline", dir=tmp_path)
    assert tracker.start() is tracker
    assert not tracker.active
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "init failed" in warnings[0] and "no account" in warnings[0]
    _exercise(tracker, tmp_path / "missing.png")  # all no-ops, none raises
    tracker.log_artifact(tmp_path / "missing", "x", "probe")
    tracker.finish(0)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert not list(tmp_path.glob("wandb/offline-run-*"))


class _FlakyRun:
    """A wandb run whose ``log`` fails (disk full, service down)."""

    def __init__(self) -> None:
        self.finished: list[int] = []
        self.summary: dict[str, Any] = {}
        self.logged = 0

    def log(self, data: dict, step: int | None = None) -> None:
        self.logged += 1
        raise OSError("disk full")

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def test_failure_mid_run_finishes_the_run_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="train.tracking")
    tracker = Tracker(mode="offline")
    run = _FlakyRun()
    tracker.run = run
    tracker.log({"a": 1.0})
    assert not tracker.active
    assert run.finished == [1]  # the broken run is closed as failed
    assert any("log failed" in r.getMessage() and "disk full" in r.getMessage()
               for r in caplog.records)
    tracker.log({"a": 2.0})
    tracker.summary({"b": 1})
    tracker.finish(0)
    assert run.logged == 1 and run.summary == {} and run.finished == [1]


def test_summary_skips_non_numbers() -> None:
    tracker = Tracker(mode="offline")

    class Run:
        def __init__(self) -> None:
            self.summary: dict[str, Any] = {}

    tracker.run = Run()
    tracker.summary({"x": 1, "y": math.nan, "z": np.array([1, 2]), "w": True, "s": "t"})
    assert tracker.run.summary == {"x": 1, "w": True, "s": "t"}
