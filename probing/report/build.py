"""Build ``report.md`` and a self-contained ``report.html`` from a run folder's artifacts alone.

A pipeline run folder holds one sub-folder per stage (``probe/``, ``sae/``, ``match/``,
``steer/``), each with its ``metrics.json`` and plots, plus ``environment.json`` (software
versions, machine) and Hydra's ``.hydra/overrides.yaml`` (the command). A stage that did not run
is left out of the report. The report opens with **Findings** (``probing.report.findings``):
the headline figures beside their controls, each linking to its section. Every number shown in a
table or a finding carries its source (``<stage>:<metrics key>``) in the HTML, so the report can
be checked against the stages.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.io import atomic_write_text, read_json, write_json
from probing.report.blocks import Block, Cell, fmt, render_html, render_markdown
from probing.report.conflicts import conflict_blocks
from probing.report.findings import HEADINGS, findings

__all__ = ["STAGE_FOLDERS", "build_report", "environment_info", "probe_metadata",
           "read_stages", "write_environment"]

STAGE_FOLDERS = ("probe", "conflict", "sae", "match", "steer")
ENVIRONMENT_FILE = "environment.json"
PACKAGES = ("torch", "transformers", "sae_lens", "scikit-learn", "numpy", "wandb", "hydra-core",
            "datasets", "liref")


def environment_info() -> dict[str, Any]:
    """Software versions and the machine (for the report's reproducibility section)."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "processor": platform.machine(), "cpu_count": os.cpu_count(),
                            "packages": versions}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001 - informative only
        pass
    return info


def write_environment(run_dir: str | Path) -> Path:
    path = Path(run_dir) / ENVIRONMENT_FILE
    write_json(path, environment_info())
    return path


class _Stage:
    """One stage folder's metrics and files."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.metrics: dict[str, Any] = (read_json(folder / "metrics.json")
                                        if (folder / "metrics.json").is_file() else {})

    def json(self, file: str) -> Any:
        path = self.folder / file
        return read_json(path) if path.is_file() else None

    def cell(self, key: str, digits: int = 3) -> Cell:
        value = self.metrics.get(key)
        return Cell(fmt(value, digits), f"{self.name}:{key}", value) if value is not None \
            else Cell("n/a")

    def ci(self, key: str) -> Cell:
        """``value [low, high]`` for ``key`` with ``key_ci_low`` / ``key_ci_high``."""
        value = self.metrics.get(key)
        if value is None:
            return Cell("n/a")
        lo, hi = self.metrics.get(f"{key}_ci_low"), self.metrics.get(f"{key}_ci_high")
        text = fmt(value) if lo is None else f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"
        return Cell(text, f"{self.name}:{key}", value)

    def images(self) -> list[Path]:
        return sorted(self.folder.glob("*.png"))


def read_stages(run_dir: str | Path) -> dict[str, _Stage]:
    """``{stage name: its metrics and files}`` of the stages a run folder holds: a pipeline
    run's ``<stage>/metrics.json`` folders, or a single-stage job's own folder; empty when it
    holds none."""
    run_dir = Path(run_dir)
    found = {name: _Stage(name, run_dir / name) for name in STAGE_FOLDERS
             if (run_dir / name / "metrics.json").is_file()}
    if not found and (run_dir / "metrics.json").is_file():  # a single-stage job's folder
        for name, marker in (("probe", "per_layer.json"), ("match", "latents.json"),
                             ("steer", "results.json"), ("sae", "sae")):
            if (run_dir / marker).exists():
                found[name] = _Stage(name, run_dir)
                break
    return found


def probe_metadata(stages: Mapping[str, _Stage]) -> dict[str, Any]:
    """What the probe stage recorded of its model and data (``directions/directions.json``:
    ``model``, ``n_layers``, ``d_model``, ``data``, ...); empty without a probe stage."""
    probe = stages.get("probe")
    meta = probe.json("directions/directions.json") if probe else None
    return meta if isinstance(meta, dict) else {}


def _questions_section(st: _Stage) -> list[Block]:
    summary = st.json("questions.json")
    if not summary:
        return []
    rows = [[r["set"], r["source"], r.get("kind") or "-", r["label"], str(r["n"])]
            for r in summary["rows"]]
    positive, negative = summary.get("classes") or ("reasoning", "memory")
    return [Block("h2", HEADINGS["questions"]),
            Block("p", f"{summary['n']} probed questions in {summary.get('n_groups', '?')} "
                       "groups (paraphrases, duplicates and one fact or computation share a "
                       "group; no group is on two sides of a split). Labels: 1 = "
                       f"{positive}, 0 = {negative}."),
            Block("table", header=["set", "source", "kind", "label", "n"], rows=rows)]


def _probe_section(st: _Stage) -> list[Block]:
    m = st.metrics
    per_layer = st.json("per_layer.json") or []
    best = m.get("best_layer")
    blocks = [Block("h2", HEADINGS["probe"]),
              Block("p", "Every probe is fitted on the training part, where its decision "
                         "threshold is chosen too (the best balanced accuracy); the layer is "
                         "chosen on the validation part; every figure is on the held-out test "
                         "part, with a 95% bootstrap interval. Balanced accuracy is the mean of "
                         "the two classes' accuracies. Controls on the same items: a bag-of-words logistic "
                         "regression on the prompt text (unigrams + bigrams), a probe on the "
                         "mean input embedding and a logistic regression on format covariates "
                         "alone (prompt length in tokens, digit and numeral counts, option "
                         "count, source set and category where the data has several). "
                         "Residualised AUROC: the same probe refitted on the activations with "
                         "the format covariates regressed out (least squares fitted on the "
                         "training part); where the data has sources or categories, the "
                         "surface covariates alone (length, digits, numerals, options) too, "
                         "since a label assigned per category makes the format control "
                         "perfect by construction. Selectivity = probe AUROC - the strongest "
                         "control's AUROC (selectivity vs bag-of-words beside it).")]
    rows = []
    surface = "best/residualised_surface_auroc" in m
    for r in per_layer:
        layer = int(r["layer"])
        pre = f"layer_{layer:02d}/"
        name = f"**{layer}** (chosen)" if layer == best else str(layer)
        rows.append([name, st.ci(pre + "accuracy"), st.ci(pre + "balanced_accuracy"),
                     st.ci(pre + "auroc"), st.ci(pre + "residualised_auroc"),
                     *([st.ci(pre + "residualised_surface_auroc")] if surface else []),
                     st.cell(pre + "val_auroc"), st.cell(pre + "selectivity"),
                     st.cell(pre + "selectivity_bow")])
    blocks.append(Block("table", "held-out test figures per layer",
                        ["layer", "accuracy", "balanced accuracy", "AUROC",
                         "AUROC, format residualised",
                         *(["AUROC, surface residualised"] if surface else []),
                         "validation AUROC",
                         "selectivity (strongest control)", "selectivity (bag-of-words)"],
                        rows))
    controls = [[label, st.ci(f"{pre}accuracy"), st.ci(f"{pre}balanced_accuracy"),
                 st.ci(f"{pre}auroc")]
                for label, pre in (("bag-of-words (prompt text)", "control/bow_"),
                                   ("mean input embedding", "control/embedding_"),
                                   ("format covariates", "control/format_"),
                                   *([("surface covariates (no source, no category)",
                                       "control/surface_")] if surface else []),
                                   (f"probe at the chosen layer {best}", "best/"))]
    controls.append([f"probe at layer {best}, format residualised", "-", "-",
                     st.ci("best/residualised_auroc")])
    if surface:
        controls.append([f"probe at layer {best}, surface residualised", "-", "-",
                         st.ci("best/residualised_surface_auroc")])
    blocks.append(Block("table", "the probe beside its controls (test part)",
                        ["classifier", "accuracy", "balanced accuracy", "AUROC"], controls))
    transfer = sorted({k.split("/")[1] for k in m if k.startswith("transfer/")})
    if transfer:
        rows = [[name, st.ci(f"transfer/{name}/auroc"), st.ci(f"transfer/{name}/control/bow_auroc"),
                 st.ci(f"transfer/{name}/control/embedding_auroc"),
                 st.ci(f"transfer/{name}/control/format_auroc"),
                 st.cell(f"transfer/{name}/selectivity")] for name in transfer]
        blocks.append(Block("h3", HEADINGS["transfer"]))
        blocks.append(Block("table", "transfer: fitted on the probe set, scored on another",
                            ["target", "probe AUROC", "bag-of-words AUROC", "embedding AUROC",
                             "format AUROC", "selectivity"], rows))
    for img in st.images():
        blocks.append(Block("img", _caption(img.name), path=img))
    return blocks


def _sae_section(st: _Stage) -> list[Block]:
    keys = [k for k in ("layer", "d_sae", "l0", "explained_variance", "mse", "dead_fraction",
                        "ce_loss_recovered", "ce_loss_recovered_answer_tokens") if k in st.metrics]
    blocks = [Block("h2", HEADINGS["sae"]),
              Block("p", "Metrics on held-out documents (none of them in the training part), "
                         "under sae-lens's definitions.")]
    blocks.append(Block("table", header=["metric", "value"],
                        rows=[[k, st.cell(k, 4)] for k in keys]))
    for img in st.images():
        blocks.append(Block("img", _caption(img.name), path=img))
    return blocks


#: columns of the matching table, in order, when the latents table has them
MATCH_COLUMNS = ("rank", "latent", "decoder_cosine", "cosine_p", "cosine_q", "reason_score",
                 "gap_share", "auroc", "cohens_d", "density", "injection_d_excess",
                 "injection_d_excess_lo", "injection_d_excess_hi", "injection_class_vs_random",
                 "injection_d", "injection_class")


def _table_from_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
                     ) -> tuple[list[str], list[list[Cell | str]]]:
    cols = [c for c in columns if any(c in r for r in rows)]
    return cols, [[fmt(r.get(c)) for c in cols] for r in rows]


#: the matching metrics the report shows (all of them are in match/metrics.json)
MATCH_HEADLINE = ("top1_latent", "top1_cosine", "top1_p", "top1_p_random", "k_for_0.9_cosine",
                  "n_significant_q05", "n_significant_q05_random", "gap_share_top20",
                  "gap_error_share", "sparse_latents_auroc_k1", "sparse_latents_auroc_k5",
                  "sparse_latents_auroc_k20", "sparse_neurons_auroc_k1",
                  "sparse_neurons_auroc_k5", "dense_auroc", "liref_auroc", "bow_auroc",
                  "frac_token_driven_vs_random_top20",
                  "frac_context_dependent_vs_random_top20", "frac_token_driven_top20",
                  "frac_context_dependent_top20", "liref_injection_d_excess",
                  "liref_injection_d_excess_lo", "liref_injection_d_excess_hi",
                  "liref_injection_token_driven_vs_random", "liref_injection_d",
                  "liref_injection_d_random_matched", "liref_injection_d_random")


def _headline(st: _Stage, keys: Sequence[str] | None = None) -> Block:
    chosen = [k for k in keys if k in st.metrics] if keys else []
    if not chosen:
        chosen = [k for k in sorted(st.metrics) if isinstance(st.metrics[k], (int, float))
                  and not k.endswith(("_ci_low", "_ci_high"))]
    return Block("table", "headline metrics", ["metric", "value"],
                 [[k, st.cell(k)] for k in chosen])


#: the metrics of the SAEBench-protocol sparse probes (``probing.matching.run``)
SAEBENCH_PREFIX = "sparse_probe/saebench/"


def _sparse_protocols(st: _Stage) -> Block | None:
    """SAEBench-protocol sparse probes (mean-pooled) beside liref's last-token ones, per k."""
    found = (re.fullmatch(r"(latents|neurons)_k(\d+)_accuracy", k.removeprefix(SAEBENCH_PREFIX))
             for k in st.metrics if k.startswith(SAEBENCH_PREFIX))
    keys = sorted({(m.group(1), int(m.group(2))) for m in found if m})
    if not keys:
        return None
    rows = []
    for kind, k in keys:
        pre = f"{SAEBENCH_PREFIX}{kind}_k{k}"
        rows.append([kind, str(k), st.ci(f"{pre}_accuracy"), st.cell(f"{pre}_balanced_accuracy"),
                     st.ci(f"{pre}_auroc"), st.cell(f"sparse_{kind}_auroc_k{k}")])
    return Block("table", "k-sparse probes, SAEBench protocol (features mean-pooled over the "
                          "prompt, top-k |mean diff| on the training part, LogisticRegression "
                          "C=1) beside liref's last-token AUROC; held-out part, 95% intervals",
                 ["features", "k", "SAEBench accuracy", "balanced accuracy", "SAEBench AUROC",
                  "last-token AUROC"], rows)


def _match_section(st: _Stage, top: int = 10) -> list[Block]:
    latents = st.json("latents.json") or []
    blocks = [Block("h2", HEADINGS["match"]),
              Block("p", "Decoder cosines are tested against random-direction and label-permuted "
                         "nulls (BH-corrected); the token-injection control says whether a "
                         "latent's response is carried by surface tokens. Its headline class "
                         "(injection_class_vs_random) weighs a latent's own tokens against as "
                         "many random tokens of the same corpus frequency bands at the same "
                         "positions: token-driven only when the bootstrap interval of "
                         "d_excess = d - d_random_matched lies above 0; injection_class is the "
                         "old class, from d alone.")]
    if latents:
        header, rows = _table_from_rows(latents[:top], MATCH_COLUMNS)
        blocks.append(Block("table", f"top {min(top, len(latents))} latents", header, rows))
    blocks.append(_headline(st, MATCH_HEADLINE))
    protocols = _sparse_protocols(st)
    if protocols is not None:
        blocks.append(protocols)
    for img in st.images():
        blocks.append(Block("img", _caption(img.name), path=img))
    return blocks


#: order of the steering conditions in the report's tables
CONDITION_ORDER = ("direction", "negated", "random", "orthogonal", "permuted")
#: interventions shown next to each other (erasure beside ablation), the rest alphabetically after
INTERVENTION_ORDER = ("add", "ablate", "erase")


def _steer_effects(metrics: Mapping[str, Any]) -> dict[tuple[str, str, str, str], set[str]]:
    """``{(set, metric, intervention, condition): {stat names}}`` of ``<set>/<metric>/
    <intervention>/<condition>/<stat>`` keys (the steering job's metrics.json layout)."""
    out: dict[tuple[str, str, str, str], set[str]] = {}
    for key in metrics:
        parts = key.split("/")
        if len(parts) == 5 and parts[0] != "headline" and parts[2] != "unsteered":
            out.setdefault(tuple(parts[:4]), set()).add(parts[4])  # type: ignore[arg-type]
    return out


def _steer_section(st: _Stage) -> list[Block]:
    m = st.metrics
    heads = {k.split("/")[1]: v for k, v in m.items()
             if k.startswith("headline/") and k.endswith("/strength")}
    blocks = [Block("h2", HEADINGS["steer"]),
              Block("p", "Each setting is compared with the unsteered run on the same items "
                         "(difference with a paired bootstrap 95% interval, exact McNemar p). "
                         "Controls: random directions of the same norm (mean over seeds), the "
                         "negated direction, the direction orthogonalised against the matched "
                         "latents, random latents of similar firing density; LEACE erasure of "
                         "the label (erase) beside erasers fitted on permuted labels (mean over "
                         "seeds). Strengths shown: "
                         + (", ".join(f"{k} {v:g}" for k, v in sorted(heads.items()))
                            or "n/a") + _strength_origin(m))]
    blocks += _selection_blocks(st)
    blocks += _ground_truth_blocks(st)
    base = sorted({(k.split("/")[0], k.split("/")[1]) for k in m
                   if k.count("/") == 3 and k.split("/")[2] == "unsteered"})
    if base:
        blocks.append(Block("table", "unsteered runs", ["set", "metric", "accuracy"],
                            [[s_, met, st.cell(f"{s_}/{met}/unsteered/accuracy")]
                             for s_, met in base]))
    blocks += _paired_blocks(st)
    blocks += _steer_images(st)
    return blocks


def _halves(m: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{set: (choice items, report items)}`` from ``selection/<set>/n_choice|n_report``."""
    sets = sorted({k.split("/")[1] for k in m if k.startswith("selection/")
                   and k.endswith("/n_choice")})
    return {s_: (m[f"selection/{s_}/n_choice"], m.get(f"selection/{s_}/n_report")) for s_ in sets}


def _strength_origin(m: Mapping[str, Any]) -> str:
    halves = _halves(m)
    if not halves:  # a run from before the held-out choice
        return " (fixed in the config before the run)."
    a = sum(int(v[0]) for v in halves.values())
    b = sum(int(v[1] or 0) for v in halves.values())
    text = (f": each strength chosen on half A ({a} items) by the objective, every figure below "
            f"measured on half B ({b} items); each set's items split by group, no group on both "
            "halves.")
    if any(k.split("/")[2:3] == ["prompt"] for k in m):
        text += (" The prompting baseline (an instruction added to each question, no steering) "
                 "is a row beside the interventions: 'direction' = the instruction of the set's "
                 "mode, 'negated' = the opposite mode's.")
    return text


def _selection_blocks(st: _Stage) -> list[Block]:
    """The held-out choice: the chosen strengths (objective on half A) and the halves' sizes."""
    m = st.metrics
    halves = _halves(m)
    if not halves:
        return []
    names = sorted(k.split("/")[1] for k in m
                   if k.startswith("headline/") and k.endswith("/strength"))
    rows = [[name, st.cell(f"headline/{name}/strength"),
             "fixed in the config" if m.get(f"headline/{name}/fixed") else "half A",
             st.cell(f"headline/{name}/objective")] for name in names]
    return [Block("table", "strengths chosen on half A, measured on half B",
                  ["intervention", "strength", "chosen on", "objective on half A"], rows),
            Block("table", "held-out halves per set (items)", ["set", "half A (choice)",
                                                               "half B (report)"],
                  [[s_, st.cell(f"selection/{s_}/n_choice", 0),
                    st.cell(f"selection/{s_}/n_report", 0)] for s_ in halves])]


def _paired_blocks(st: _Stage) -> list[Block]:
    """The paired effects at the headline strength, one collapsed table per (set, metric)
    whose summary line gives +LiReF's accuracy difference beside the random directions'."""
    m = st.metrics
    effects = _steer_effects(m)
    blocks: list[Block] = []
    for set_, metric in sorted({k[:2] for k in effects}):
        mine = {k: v for k, v in effects.items() if k[:2] == (set_, metric)}
        extra = sorted({stat for stats in mine.values() for stat in stats
                        if stat.endswith("_diff") and stat.startswith(("rate_", "margin",
                                                                       "logp_gold"))})
        rows = []
        for intervention in sorted({k[2] for k in mine}, key=_intervention_rank):
            conds = sorted({k[3] for k in mine if k[2] == intervention},
                           key=lambda c: (CONDITION_ORDER.index(c) if c in CONDITION_ORDER
                                          else len(CONDITION_ORDER), c))
            for cond in conds:
                pre = f"{set_}/{metric}/{intervention}/{cond}/"
                rows.append([intervention, cond, st.ci(pre + "diff"), st.cell(pre + "p_value"),
                             *[st.cell(pre + stat) for stat in extra]])
        summary = (f"{set_} ({metric.replace('_', '-')}): {len(rows)} settings "
                   f"({', '.join(sorted({k[2] for k in mine}))})")
        head = f"{set_}/{metric}/add/direction/diff"
        if head in m:
            summary += f"; +LiReF accuracy diff {st.ci(head).text}"
            if f"{set_}/{metric}/add/random/diff" in m:
                summary += f" vs random {fmt(m[f'{set_}/{metric}/add/random/diff'])}"
        summary += _removal_summary(st, f"{set_}/{metric}")
        if f"{set_}/{metric}/prompt/direction/diff" in m:
            summary += f"; prompting {st.ci(f'{set_}/{metric}/prompt/direction/diff').text}"
        blocks.append(Block("table", "paired effects at the headline strength (accuracy "
                                     "difference to the unsteered run)",
                            ["intervention", "condition", "accuracy diff [95% CI]", "McNemar p",
                             *extra], rows, summary=summary))
    if blocks:
        blocks.insert(0, Block("h3", HEADINGS["paired"]))
        blocks.insert(1, Block("p", "Every setting beside the unsteered run on the same items, "
                                    "one table per set (click a line to open it)."))
    return blocks


def _intervention_rank(name: str) -> tuple[int, str]:
    return (INTERVENTION_ORDER.index(name) if name in INTERVENTION_ORDER
            else len(INTERVENTION_ORDER), name)


def _removal_summary(st: _Stage, base: str) -> str:
    """``; ablate diff [CI] vs random x; erase (LEACE) diff [CI] vs permuted labels y``: removing
    the direction beside removing all linear information about the label."""
    m = st.metrics
    out = ""
    for name, what, control, text in (("ablate", "ablate", "random", "random"),
                                      ("erase", "erase (LEACE)", "permuted", "permuted labels")):
        if f"{base}/{name}/direction/diff" in m:
            out += f"; {what} {st.ci(f'{base}/{name}/direction/diff').text}"
            if f"{base}/{name}/{control}/diff" in m:
                out += f" vs {text} {fmt(m[f'{base}/{name}/{control}/diff'])}"
    return out


def _steer_images(st: _Stage) -> list[Block]:
    """The sweep figures (the headline ``add`` first), each as wide as the page. A figure drawn
    in an older layout (one column per set: thumbnails at page width) is drawn again from
    ``results.json`` for the HTML page; report.md links the stage's own files."""
    from probing.steering.plots import SWEEP_LAYOUT

    images = sorted(st.images(), key=lambda p: ("_add_L" not in p.name, p.name))
    rows = None
    blocks = []
    for img in images:
        data = None
        if img.name.startswith("steer_") and SWEEP_LAYOUT.encode() not in img.read_bytes():
            rows = st.json("results.json") if rows is None else rows
            data = _redraw_sweep(img.name, rows) if isinstance(rows, list) else None
        blocks.append(Block("img", _caption(img.name), path=img, data=data, wide=True))
    return blocks


def _redraw_sweep(name: str, rows: list[dict[str, Any]]) -> bytes | None:
    """The PNG of the sweep figure ``steer_<metric>_<intervention>_L<layer>[_rank<r>].png``
    drawn from the steering rows, or ``None`` when no panel matches the name."""
    import io

    from probing.steering.plots import plot_sweep, sweep_panels, sweep_values

    for metric, intervention, layer, rank in sweep_panels(rows):
        tag = f"{metric}_{intervention}_L{layer}" + (f"_rank{rank}" if rank is not None else "")
        if name == f"steer_{tag}.png":
            buf = io.BytesIO()
            if plot_sweep(rows, buf, metric, intervention, layer, rank,
                          sweep_values(rows)) is not None:
                return buf.getvalue()
    return None


#: (set, rate) pairs with a known right direction on the organism: steering towards reasoning
#: should raise the rule rate on exceptions and lower the stale rate on near-exceptions
GROUND_TRUTH = (("exceptions", "rate_rule", "rule answer (computed)"),
                ("exceptions", "rate_memory", "memory answer (trained exception)"),
                ("near_exceptions", "rate_stale", "stale answer (the exception's value)"))


def _ground_truth_blocks(st: _Stage) -> list[Block]:
    """The organism's ground-truth check: what +LiReF / -LiReF / random directions did to the
    answer rates of exceptions and near-exceptions (empty when those sets were not steered)."""
    m = st.metrics
    rows = []
    for set_, rate, what in GROUND_TRUTH:
        base = f"{set_}/teacher_forced"
        if f"{base}/unsteered/{rate}" not in m:
            continue
        rows.append([set_, what, st.cell(f"{base}/unsteered/{rate}"),
                     *[st.ci(f"{base}/add/{cond}/{rate}_diff")
                       for cond in ("direction", "negated", "random")]])
    if not rows:
        return []
    return [Block("h3", HEADINGS["ground_truth"]),
            Block("p", "Exceptions are arithmetic problems whose trained answer breaks the rule; "
                       "near-exceptions are one operand away, so the exception's value is a "
                       "stale answer there. Adding the reasoning direction should move "
                       "exceptions from the memory answer to the rule answer and keep "
                       "near-exceptions off the stale answer; -LiReF the reverse; random "
                       "directions of the same norm neither. Change of each answer rate at the "
                       "headline strength, paired 95% bootstrap interval."),
            Block("table", "answer rates under steering (add)",
                  ["set", "answer", "unsteered rate", "+LiReF diff [95% CI]",
                   "-LiReF diff [95% CI]", "random diff"], rows)]


def _caption(name: str) -> str:
    return name.removesuffix(".png").replace("_", " ")


def _reproduce_section(run_dir: Path) -> list[Block]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    job = "analysis.pipeline"
    overrides: list[str] = []
    if overrides_file.is_file():
        import yaml

        overrides = list(yaml.safe_load(overrides_file.read_text()) or [])
        cfg = run_dir / ".hydra" / "hydra.yaml"
        if cfg.is_file():
            name = (yaml.safe_load(cfg.read_text()) or {}).get("hydra", {}).get("job", {}).get(
                "name")
            job = {"pipeline": "analysis.pipeline", "probe": "train.probe", "sae": "train.sae",
                   "match": "analysis.match", "steer": "analysis.steer"}.get(name, job)
    command = " ".join(["python -m", job, *overrides])
    blocks = [Block("h2", HEADINGS["reproduce"]),
              Block("pre", f"{command}\npython -m analysis.report run_dir={run_dir}")]
    env_path = run_dir / ENVIRONMENT_FILE
    env = read_json(env_path) if env_path.is_file() else None
    note = "" if env else " (not recorded by the run; read when the report was built)"
    env = env or environment_info()
    rows = [["python", env.get("python", "?")], ["platform", env.get("platform", "?")],
            ["CPUs", str(env.get("cpu_count", "?"))], ["GPU", str(env.get("cuda", "?"))]]
    rows += [[k, v] for k, v in env.get("packages", {}).items()]
    blocks.append(Block("table", f"software and machine{note}", ["", "version"], rows))
    return blocks


def build_report(run_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir`` from its artifacts alone (no
    model is loaded). Returns their paths."""
    run = Path(run_dir)
    stages = read_stages(run)
    if not stages:
        raise LirefError(f"{run} holds no stage results (metrics.json in {list(STAGE_FOLDERS)} "
                         "sub-folders or in the folder itself)")
    probe = stages.get("probe")
    title = title or f"liref report: {probe_metadata(stages).get('model') or run.name}"
    blocks: list[Block] = [Block("h1", title)]
    lines = findings(stages)
    if lines:
        blocks.append(Block("findings", HEADINGS["findings"], findings=lines))
    blocks.append(Block("p", f"Run folder `{run}`; stages: {', '.join(stages)}."))
    if probe:
        blocks += _questions_section(probe) + _probe_section(probe)
    if "conflict" in stages:
        blocks += conflict_blocks(stages["conflict"], stages.get("steer"), HEADINGS["conflicts"])
    if "sae" in stages:
        blocks += _sae_section(stages["sae"])
    if "match" in stages:
        blocks += _match_section(stages["match"])
    if "steer" in stages:
        blocks += _steer_section(stages["steer"])
    blocks += _reproduce_section(run)
    md, page = run / "report.md", run / "report.html"
    atomic_write_text(md, render_markdown(blocks, run))
    atomic_write_text(page, render_html(blocks, title))
    return md, page
