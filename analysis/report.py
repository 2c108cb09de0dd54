"""``python -m analysis.report run_dir=...``: rebuild ``report.md`` and ``report.html`` of a run
folder from its artifacts alone (no model is loaded). ``compare=[run_a,run_b,...]``: one table
of several finished runs side by side (``compare.md``, ``compare.html``, ``compare.json``, in
``out=`` or this job's run folder)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from probing.errors import LirefError
from probing.report.build import build_report
from probing.report.compare import build_compare
from train.jobkit import CONFIG_PATH, JobContext, run_job

log = logging.getLogger("liref.report")


def report(ctx: JobContext) -> dict:
    run_dir, compare = ctx.cfg.get("run_dir"), ctx.cfg.get("compare")
    if run_dir and compare:
        raise LirefError("give run_dir= (one run's report) or compare=[...] (runs side by "
                         "side), not both")
    if compare:
        md, page, data = build_compare(list(compare), ctx.cfg.get("out") or ctx.run_dir)
        log.info("comparison of %d runs written: %s, %s and %s", len(compare), md, page, data)
        return {"compared_runs": len(compare)}
    if not run_dir:
        raise LirefError("give the run folder to report on: python -m analysis.report "
                         "run_dir=outputs/pipeline/<time>, or runs to compare: "
                         "compare=[outputs/pipeline/<a>,outputs/pipeline/<b>]")
    md, page = build_report(run_dir)
    log.info("report written: %s and %s", md, page)
    for stage_image in sorted(md.parent.glob("*/*.png")):
        ctx.tracker.log_image(f"report/{stage_image.parent.name}/{stage_image.stem}", stage_image)
    return {"report_bytes": page.stat().st_size}


@hydra.main(config_path=CONFIG_PATH, config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "report", report)


if __name__ == "__main__":
    main()
