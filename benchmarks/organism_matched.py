"""The LiReF on the organism's matched set, beside its controls (README "What it finds").

``python -m benchmarks.organism_matched`` (committed organism, 1 thread, ~1 min): per layer,
the diff-in-means probe's out-of-fold AUROC on ``organism_matched`` (exceptions vs ordinary
problems, one surface) and on ``organism`` (memory facts vs reasoning, lexically separable),
beside the bag-of-words and mean-input-embedding controls; then transfer: the direction fitted
on one set, AUROC on the other. Splits are grouped (``Question.group``) 5-fold; every item is
scored once by a probe not fitted on its group; 95% stratified bootstrap intervals
(``probing.stats.auroc_with_ci``) over the pooled out-of-fold scores. Writes
``benchmarks/results/organism_matched.json`` and prints README-ready markdown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from probing import load_model
from probing.activations.extract import extract_activations
from probing.probes.controls import bow_scores, embedding_scores, mean_input_embeddings
from probing.probes.estimators import make_probe
from probing.probes.evaluation import grouped_folds
from probing.questions import Question, load_question_set
from probing.questions.prompts import format_prompt
from probing.stats import auroc_with_ci

log = logging.getLogger("benchmarks.organism_matched")
REPO = Path(__file__).resolve().parents[1]
K_FOLDS = 5


def questions(data: str) -> list[Question]:
    conf = yaml.safe_load((REPO / "conf" / "data" / f"{data}.yaml").read_text())
    return [q for kw in conf["sets"] for q in load_question_set(**kw)]


def folds(qs: Sequence[Question], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``K_FOLDS`` grouped, stratified ``(train_idx, test_idx)`` folds of the questions."""
    return grouped_folds([q.target for q in qs], [q.group for q in qs], K_FOLDS, seed)


def out_of_fold(qs: Sequence[Question],
                score: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Scores ``[N]``: each item scored by ``score(train_idx, y_train, test_idx)``."""
    y = np.array([q.target for q in qs])
    out = np.zeros(len(qs))
    for tr, te in folds(qs):
        out[te] = score(tr, y[tr], te)
    return out


def ci(y: np.ndarray, s: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in auroc_with_ci(y, s))  # type: ignore[return-value]


def fmt(v: Sequence[float]) -> str:
    return f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"


def within_set(qs: Sequence[Question], prompts: Sequence[str], acts: np.ndarray,
               emb: np.ndarray) -> dict:
    """Out-of-fold AUROC (with intervals) of the controls and of each layer's probes."""
    y = np.array([q.target for q in qs])

    def bow(tr: np.ndarray, yt: np.ndarray, te: np.ndarray) -> np.ndarray:
        return bow_scores([prompts[i] for i in tr], yt, [prompts[i] for i in te])

    def embedding(tr: np.ndarray, yt: np.ndarray, te: np.ndarray) -> np.ndarray:
        return embedding_scores(emb[tr], yt, emb[te])

    row: dict = {"bow": ci(y, out_of_fold(qs, bow)),
                 "embedding": ci(y, out_of_fold(qs, embedding))}
    for kind in ("diffmean", "logistic"):
        row[kind] = []
        for j in range(acts.shape[1]):
            def probe(tr: np.ndarray, yt: np.ndarray, te: np.ndarray, j: int = j,
                      kind: str = kind) -> np.ndarray:
                return make_probe(kind).fit(acts[tr, j], yt).decision_function(acts[te, j])

            row[kind].append(ci(y, out_of_fold(qs, probe)))
    return row


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    model, tok = load_model("organism")
    sets = {name: questions(name) for name in ("organism_matched", "organism")}
    prompts = {n: [format_prompt(q.question) for q in qs] for n, qs in sets.items()}
    y = {n: np.array([q.target for q in qs]) for n, qs in sets.items()}
    acts = {n: extract_activations(model, tok, p, position="last", progress=False).double()
            .numpy() for n, p in prompts.items()}
    emb = {n: mean_input_embeddings(model, tok, p).numpy() for n, p in prompts.items()}
    n_layers = next(iter(acts.values())).shape[1]
    result: dict = {"k_folds": K_FOLDS, "n": {n: len(qs) for n, qs in sets.items()}}
    for name, qs in sets.items():
        result[name] = within_set(qs, prompts[name], acts[name], emb[name])
    # transfer: fit on all of one set, score the other
    transfer: dict = {}
    for src, dst in (("organism", "organism_matched"), ("organism_matched", "organism")):
        t: dict = {"diffmean": [], "cos": []}
        for j in range(n_layers):
            probe = make_probe("diffmean").fit(acts[src][:, j], y[src])
            t["diffmean"].append(ci(y[dst], probe.decision_function(acts[dst][:, j])))
            other = make_probe("diffmean").fit(acts[dst][:, j], y[dst])
            t["cos"].append(float(probe.direction @ other.direction))
        t["bow"] = ci(y[dst], bow_scores(prompts[src], y[src], prompts[dst]))
        t["embedding"] = ci(y[dst], embedding_scores(emb[src], y[src], emb[dst]))
        transfer[f"{src}->{dst}"] = t
    result["transfer"] = transfer
    out = REPO / "benchmarks" / "results" / "organism_matched.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    m, lex = result["organism_matched"], result["organism"]
    fw, bw = transfer["organism->organism_matched"], transfer["organism_matched->organism"]
    lines = [
        "| layer | matched: diff-in-means | matched: logistic | lexical: diff-in-means "
        "| lexical dir. -> matched | matched dir. -> lexical | cos(lexical, matched dir.) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for j in range(n_layers):
        lines.append(f"| {j} | {fmt(m['diffmean'][j])} | {fmt(m['logistic'][j])} | "
                     f"{fmt(lex['diffmean'][j])} | {fmt(fw['diffmean'][j])} | "
                     f"{fmt(bw['diffmean'][j])} | {fw['cos'][j]:.2f} |")
    lines.append(f"| bag-of-words control | {fmt(m['bow'])} | | {fmt(lex['bow'])} | "
                 f"{fmt(fw['bow'])} | {fmt(bw['bow'])} | |")
    lines.append(f"| embedding control | {fmt(m['embedding'])} | | {fmt(lex['embedding'])} | "
                 f"{fmt(fw['embedding'])} | {fmt(bw['embedding'])} | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
