"""Glue shared by every Hydra job: run dir, seed, wandb run, metrics.json, clean errors.

A job file is thin: ``@hydra.main(...)`` then ``run_job(cfg, "name", body)`` where
``body(ctx) -> dict`` calls ``probing`` functions and returns its metrics.

A user error (``LirefError``) ends a single run with exit status 2 and one ``error:`` line. In a
multirun it ends only its own job: the line goes to that job's log (``<job>.log``), to stderr
and to ``error.txt`` in its folder, and the sweep goes on; at the end ``SweepFailures`` (a Hydra
callback, see ``conf/base.yaml``) prints one ``error:`` line naming the failed jobs and exits 2.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

import train.configs  # noqa: F401  (registers every job's schema in Hydra's ConfigStore)
from probing.errors import LirefError
from probing.io import write_metrics
from probing.seeding import seed_everything
from train.tracking import Tracker

log = logging.getLogger("liref")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: jobs whose runs are each a wandb group of their own (their stages log one run each)
PER_RUN_GROUPS = {"pipeline"}
CONFIG_PATH = str(REPO_ROOT / "conf")
#: written into a multirun job's folder when it failed with a user error (its one-line message)
ERROR_FILE = "error.txt"


@dataclass
class JobContext:
    """What a job body gets: its config, its run directory and its tracker."""

    cfg: DictConfig
    run_dir: Path
    tracker: Tracker
    #: shared by the stage contexts of one pipeline run (``dataclasses.replace`` keeps it)
    shared: dict[str, Any] = field(default_factory=dict)

    def model(self) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of ``cfg.model``, loaded once per job (stages share it)."""
        if "model" not in self.shared:
            from probing.model.loading import load_model_from_config

            self.shared["model"] = load_model_from_config(self.cfg.model, self.cfg.cache_dir)
        return self.shared["model"]


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts/lists); ``None`` and scalars pass through."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def hydra_run_dir() -> Path:
    """The current Hydra run (or multirun job) directory; cwd outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def in_multirun() -> bool:
    """Whether this job is one job of a Hydra multirun (``-m``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _names(job: str, run_dir: Path) -> tuple[str, str]:
    """wandb run name and group from the Hydra job and sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            sweep = Path(hc.sweep.dir).name
            overrides = hc.job.override_dirname or str(hc.job.num)
            return f"{job}:{overrides}", f"{job}-sweep-{sweep}"
    except ValueError:
        pass
    parent = "" if run_dir.parent.name == job else f"{run_dir.parent.name}-"
    name = f"{job}-{parent}{run_dir.name}"
    # a pipeline logs one run per stage: each pipeline run is a group of its own
    return name, (name if job in PER_RUN_GROUPS else job)


def make_tracker(cfg: DictConfig, job: str, run_dir: Path) -> Tracker:
    lcfg = cfg.get("logger") or {}
    name, group = _names(job, run_dir)
    return Tracker(
        mode=str(lcfg.get("mode", "offline")),
        project=str(lcfg.get("project", "liref")),
        entity=lcfg.get("entity"),
        name=lcfg.get("name") or name,
        group=lcfg.get("group") or group,
        job_type=job,
        tags=list(lcfg.get("tags") or []),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        dir=run_dir,
    )


def run_job(cfg: DictConfig, job: str, body: Callable[[JobContext], Mapping[str, Any]]) -> dict:
    """Run ``body`` inside a seeded, tracked job; write ``metrics.json``. A user error exits 2
    with one ``error:`` line; in a multirun it ends this job only (see the module docstring)."""
    run_dir = hydra_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier run in this folder
    seed_everything(int(cfg.get("seed", 0)))
    tracker = make_tracker(cfg, job, run_dir)
    try:
        tracker.start()
        metrics = dict(body(JobContext(cfg=cfg, run_dir=run_dir, tracker=tracker)))
        path = write_metrics(run_dir, metrics)
        tracker.summary(metrics)
        tracker.finish(0)
    except LirefError as exc:
        tracker.finish(1)
        message = " ".join(str(exc).split())  # one line, even when a library's text had several
        log.error("%s failed: %s", job, message)
        print(f"error: {message}", file=sys.stderr)
        if in_multirun():  # the other jobs of the sweep go on; SweepFailures reports at the end
            (run_dir / ERROR_FILE).write_text(message + "\n", encoding="utf-8")
            return {}
        sys.exit(2)
    except BaseException:
        tracker.finish(1)
        raise
    log.info("%s done; results in %s (metrics: %s)", job, run_dir, path)
    return metrics


class SweepFailures(Callback):
    """Hydra callback: after a multirun whose jobs failed with user errors, print one
    ``error:`` line naming them (their messages are in their logs) and exit with status 2."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        failed = sorted(f.parent for f in sweep.rglob(ERROR_FILE)
                        if f.stat().st_mtime >= self.started - 1)
        if not failed:
            return
        n_jobs = sum(1 for _ in sweep.rglob(".hydra"))
        logs = ", ".join(str(d / f"{config.hydra.job.name}.log") for d in failed)
        print(f"error: {len(failed)} of {n_jobs} jobs failed; each failure is the error line "
              f"in its log: {logs}", file=sys.stderr)
        sys.exit(2)


def question_activations(cfg: DictConfig, model: Any, tokenizer: Any, sets: list,
                         controls: bool = True, data: Any = None) -> Any:
    """``ProbeData`` (activations ``[N, L, d]``, questions, prompts, mean input embeddings) of
    question ``sets`` under ``data``'s ``n`` and ``classes`` (default: the job's ``data``), the
    job's ``seed``, ``layers``, ``position``, ``batch_size``, ``prompt`` and cache. Conflict
    sets are built for the model first, and prompted with ``conflict.prompt``."""
    data = cfg.data if data is None else data
    from probing.conflicts.build import CONFLICT_SETS, conflict_template
    from probing.model.loading import organism_checkpoint
    from probing.probes.data import probe_data
    from probing.questions import load_questions
    from probing.questions.prompts import prompt_template

    template = prompt_template(plain(cfg.prompt))
    sets = built_sets(cfg, model, tokenizer, sets)
    if any(s.get("name") in CONFLICT_SETS for s in sets):  # conflict items keep their prompt
        template = conflict_template(conflict_settings(cfg), template)
    questions = load_questions(sets, data.get("n"), cfg.seed, organism_checkpoint(model),
                               classes=plain(data.get("classes")))
    layers = None if cfg.layers is None else list(cfg.layers)
    return probe_data(model, tokenizer, questions, cfg.cache_dir, layers, cfg.position,
                      cfg.batch_size, template, controls=controls)


def probe_settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``run_probe_stage`` settings of a job: probe kind and parameters, the ``eval`` split,
    layer choice and bootstrap, and the seed."""
    return {"kind": cfg.probe.kind, "params": plain(cfg.probe.params),
            "val_size": cfg.eval.val_size, "test_size": cfg.eval.test_size,
            "k_folds": cfg.eval.k_folds, "seed": cfg.seed, "select_by": cfg.eval.select_by,
            "n_resamples": cfg.eval.n_resamples}


def conflict_settings(cfg: DictConfig) -> Any:
    """The job's ``conflict:`` section as a ``ConflictConfig``."""
    from probing.conflicts.build import ConflictConfig
    from train.configs import to_settings

    return to_settings(cfg.get("conflict"), ConflictConfig)


def built_sets(cfg: DictConfig, model: Any, tokenizer: Any, sets: list,
               add_prompt: bool = False) -> list[dict]:
    """``sets`` with every knowledge-conflict set built for the job's model (cached)."""
    from probing.conflicts.build import prepare_sets
    from probing.model.loading import organism_checkpoint
    from probing.questions.prompts import prompt_template

    return prepare_sets(plain(sets) or [], model, tokenizer, conflict_settings(cfg),
                        prompt_template(plain(cfg.prompt)), cfg.cache_dir,
                        organism_checkpoint(model), add_prompt)
