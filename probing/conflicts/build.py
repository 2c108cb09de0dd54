"""Knowledge-conflict sets, built for one model: which facts it knows closed-book, and what it
answers when a statement before the question contradicts them.

``build_conflict_set`` (cached by ``ensure_conflict_set``):

1. a closed-book pass: every fact's question, greedy; a fact is known when the completion gives a
   gold alias (normalised, whole words); ``memory_answer`` = that alias. Cached per model
   fingerprint, facts and prompt.
2. per known fact three items, one ``group`` (the fact): ``counterfactual`` (the statement with
   the substitute object, then the question), ``consistent`` (the statement with the memory
   answer) and ``closed_book`` (the question alone).
3. behaviour on counterfactual items (greedy): ``context`` when the completion gives the
   substitute and not the gold, ``memory`` when the gold and not the substitute, ``other``
   otherwise (label: ``reasoning`` for context, ``memory`` for the rest); and the teacher-forced
   ``margin`` = log P(context answer) - log P(memory answer) after the same prompt, the number the
   steering stage reads with ``contrast: [context_answer, memory_answer]``. The consistent and
   closed-book items are not asked here: the steering stage scores them.

The built set is one JSON file naming the model fingerprint it was built for; loading it for
another model is refused (``load_conflict_set``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probing.conflicts.facts import (
    POPQA_RELATIONS,
    Fact,
    draw_substitutes,
    facts_from_rows,
    relation_templates,
)
from probing.errors import LirefError
from probing.evaluation.scorers import gives_answer, normalize_text
from probing.fingerprint import fingerprint, model_fingerprint
from probing.io import file_lock, read_json, write_json
from probing.questions.prompts import PromptTemplate, format_prompts
from probing.questions.record import Question

log = logging.getLogger(__name__)

__all__ = [
    "BEHAVIOURS",
    "CONFLICT_SETS",
    "KINDS",
    "ConflictConfig",
    "build_conflict_set",
    "ensure_conflict_set",
    "conflict_counts",
    "conflict_template",
    "fact_group",
    "known_answer",
    "load_conflict_set",
    "prepare_sets",
]

#: the question sets built here: name -> where its facts come from
CONFLICT_SETS: tuple[str, ...] = ("popqa_conflict", "organism_conflict")
KINDS: tuple[str, ...] = ("counterfactual", "consistent", "closed_book")
BEHAVIOURS: tuple[str, ...] = ("context", "memory", "other")
FORMAT = 3  # raised whenever the way a set is built changes (old files are rebuilt)


def _default_relations() -> dict[str, Any]:
    return {k: dict(v) for k, v in POPQA_RELATIONS.items()}


@dataclass
class ConflictConfig:
    """How a knowledge-conflict set is built (``conflict:`` in the configs).

    ``relations``: PopQA relation -> ``{question, statement}`` templates (the organism has its
    own, ``ORGANISM_STATEMENTS``); ``seed``: the substitute draw; ``strip_trailing_space``:
    conflict prompts are the job's prompt without the template's trailing spaces (``"...A:"``),
    so that a BPE answer begins with its own space (``" Paris"``; after the paper's ``"A: "``
    SmolLM2 answers dates); ``max_new_tokens`` / ``batch_size``: the greedy passes."""

    relations: dict[str, Any] = field(default_factory=_default_relations)
    seed: int = 0
    strip_trailing_space: bool = True
    max_new_tokens: int = 8
    batch_size: int = 64

    def __post_init__(self) -> None:
        relation_templates(self.relations)
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise LirefError(f"conflict.max_new_tokens={self.max_new_tokens}, batch_size="
                             f"{self.batch_size}; allowed: >= 1")


def _facts(name: str, path: str | None, split: str | None, cfg: ConflictConfig) -> tuple[
        list[Fact], dict[str, int]]:
    if name == "organism_conflict":
        from probing.conflicts.organism import organism_facts

        facts, skipped = organism_facts(path), {}
    elif name == "popqa_conflict":
        from probing.questions._io import hub_or_file_rows, parse_answers, require_columns
        from probing.questions.popqa import DEFAULT_SPLIT, HUB_NAME

        rows = hub_or_file_rows(HUB_NAME, None, path, split or DEFAULT_SPLIT)
        require_columns(rows, ["question", "prop", "possible_answers"])
        data = [{**r.data, "possible_answers": parse_answers(r.data["possible_answers"], r.where)}
                for r in rows]
        facts, skipped = facts_from_rows(data, relation_templates(cfg.relations))
    else:
        raise LirefError(f"unknown conflict set {name!r}; allowed: {list(CONFLICT_SETS)}")
    drawn = draw_substitutes(facts, cfg.seed)
    if not drawn:
        raise LirefError(f"conflict set {name!r} (path={path!r}): no fact has a relation among "
                         f"{sorted(cfg.relations)} with a substitute object")
    return drawn, {**skipped, "no_substitute": len(facts) - len(drawn)}


def known_answer(completion: str, aliases: Sequence[str]) -> str | None:
    """The gold alias ``completion`` gives (normalised, whole words; the earliest in the text,
    the longest on a tie), ``None`` when it gives none."""
    text = f" {normalize_text(completion)} "
    hits = []
    for alias in aliases:
        norm = normalize_text(alias)
        if norm and gives_answer(completion, alias, "any_alias"):
            hits.append((max(text.find(f" {norm} "), 0), -len(norm), alias))
    return min(hits)[2] if hits else None


def _generate(model: Any, tokenizer: Any, prompts: list[str], template: PromptTemplate,
              cfg: ConflictConfig) -> list[str]:
    from probing.evaluation.generation import greedy_generate

    return greedy_generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, "\n",
                           add_special_tokens=not template.chat)


def _closed_book(model: Any, tokenizer: Any, facts: list[Fact], template: PromptTemplate,
                 cfg: ConflictConfig, cache_dir: Path, model_fp: str) -> dict[str, str]:
    """``{fact id: greedy completion}`` of every fact's question, cached per model and facts."""
    key = fingerprint({"model": model_fp, "questions": [(f.id, f.question) for f in facts],
                       "template": asdict(template), "max_new_tokens": cfg.max_new_tokens})
    path = cache_dir / f"closed_book-{key}.json"
    with file_lock(path.with_suffix(".lock"), "the closed-book pass"):
        if path.is_file():
            try:
                return dict(read_json(path)["completions"])
            except (LirefError, KeyError, TypeError):
                log.warning("closed-book cache %s is unreadable; running the pass again", path)
        log.info("closed-book pass: %d questions (cached in %s)", len(facts), path)
        qs = [f.question for f in facts]
        texts = _generate(model, tokenizer, format_prompts(qs, template, tokenizer), template, cfg)
        completions = {f.id: t for f, t in zip(facts, texts, strict=True)}
        write_json(path, {"model_fingerprint": model_fp, "completions": completions})
    return completions


def _item(name: str, kind: str, fact: Fact, question: str, memory: str, label: str,
          **meta: Any) -> Question:
    return Question(id=f"{name}/{kind}/{fact.id}", question=question,
                    answers=(memory, *[a for a in fact.aliases if a != memory]),
                    label=label, source=name, group=f"fact:{fact.id}",  # type: ignore[arg-type]
                    meta={"kind": kind, "relation": fact.relation, "subject": fact.subject,
                          "memory_answer": memory, "answer_type": "text", **meta})


def _behaviour(completion: str, fact: Fact) -> str:
    context = any(gives_answer(completion, a, "any_alias") for a in fact.substitute_aliases)
    memory = any(gives_answer(completion, a, "any_alias") for a in fact.aliases)
    if context and not memory:
        return "context"
    if memory and not context:
        return "memory"
    return "other"


def build_conflict_set(model: Any, tokenizer: Any, name: str, path: str | None,
                       split: str | None, cfg: ConflictConfig, template: PromptTemplate,
                       cache_dir: str | Path) -> dict[str, Any]:
    """The conflict set ``name`` for ``model``: ``{"format", "name", "model_fingerprint",
    "counts": {relation: {...}}, "skipped", "items": [Question dicts]}`` (see the module
    docstring); the closed-book pass is cached in ``cache_dir``."""
    from probing.evaluation.margins import score_candidates

    cache = Path(cache_dir)
    facts, skipped = _facts(name, path, split, cfg)
    model_fp = model_fingerprint(model)
    completions = _closed_book(model, tokenizer, facts, template, cfg, cache, model_fp)
    known = [(f, a) for f in facts if (a := known_answer(completions[f.id], f.aliases))]
    if not known:
        raise LirefError(f"conflict set {name!r}: the model answers none of {len(facts)} "
                         f"questions closed-book; nothing to put in conflict")
    cf_text = [f"{f.state(f.substitute)} {f.question}" for f, _ in known]
    cf_prompts = format_prompts(cf_text, template, tokenizer)
    cons_text = [f"{f.state(a)} {f.question}" for f, a in known]
    log.info("conflict set %s: %d facts known closed-book; generating after a counterfactual "
             "statement", name, len(known))
    cf_out = _generate(model, tokenizer, cf_prompts, template, cfg)
    margins = score_candidates(model, tokenizer, cf_prompts,
                               [[f.substitute, a] for f, a in known], cfg.batch_size,
                               not template.chat).margin()
    items: list[Question] = []
    counts: dict[str, Counter] = {}
    for f, _ in known:
        counts.setdefault(f.relation, Counter())
    for f in facts:
        counts.setdefault(f.relation, Counter())["questions"] += 1
    for i, (f, memory) in enumerate(known):
        behaviour = _behaviour(cf_out[i], f)
        counts[f.relation].update({"known": 1, behaviour: 1})
        items.append(_item(name, "counterfactual", f, cf_text[i], memory,
                           "reasoning" if behaviour == "context" else "memory",
                           context_answer=f.substitute, context_aliases=list(f.substitute_aliases),
                           behaviour=behaviour, margin=float(margins[i]),
                           completion=cf_out[i]))
        items.append(_item(name, "consistent", f, cons_text[i], memory, "reasoning",
                           context_answer=memory))
        items.append(_item(name, "closed_book", f, f.question, memory, "memory",
                           completion=completions[f.id]))
    by_relation = {r: {k: int(c.get(k, 0)) for k in ("questions", "known", *BEHAVIOURS)}
                   for r, c in sorted(counts.items())}
    total = {k: sum(v[k] for v in by_relation.values()) for k in next(iter(by_relation.values()))}
    log.info("conflict set %s: %d facts, %d known closed-book; counterfactual answers: %d "
             "context, %d memory, %d other", name, total["questions"], total["known"],
             total["context"], total["memory"], total["other"])
    return {"format": FORMAT, "name": name, "model_fingerprint": model_fp,
            "config": asdict(cfg), "template": asdict(template), "counts": by_relation,
            "total": total, "skipped": skipped, "items": [q.to_dict() for q in items]}


def ensure_conflict_set(model: Any, tokenizer: Any, name: str, path: str | None,
                        split: str | None, cfg: ConflictConfig, template: PromptTemplate,
                        cache_dir: str | Path) -> Path:
    """The built file of conflict set ``name`` for ``model`` in ``cache_dir/conflicts/``
    (built once per model fingerprint, data file, config and prompt; locked, atomic)."""
    folder = Path(cache_dir) / "conflicts"
    source = None if path is None else str(Path(path).expanduser().resolve())
    data_key = None
    if source is not None and Path(source).is_file():
        from probing.fingerprint import file_sha256

        data_key = file_sha256(source)
    key = fingerprint({"name": name, "model": model_fingerprint(model), "path": source,
                       "data": data_key, "split": split, "config": asdict(cfg),
                       "template": asdict(template), "format": FORMAT})
    out = folder / f"{name}-{key}.json"
    with file_lock(out.with_suffix(".lock"), f"conflict set {name}"):
        if out.is_file():
            try:
                if read_json(out).get("format") == FORMAT:
                    return out
            except LirefError:
                log.warning("conflict set %s is unreadable; building it again", out)
        write_json(out, build_conflict_set(model, tokenizer, name, path, split, cfg, template,
                                           folder))
    return out


def load_conflict_set(path: str | None = None, split: str | None = None,
                      built: str | None = None, model_fingerprint: str | None = None,
                      kinds: Sequence[str] | None = None,
                      behaviours: Sequence[str] | None = None,
                      relations: Sequence[str] | None = None, **options: Any) -> list[Question]:
    """The items of a built conflict set (``built``: its file, from ``ensure_conflict_set``),
    filtered by ``kinds``, ``behaviours`` (of the counterfactual items; the consistent and
    closed-book ones are answered in the steering stage) and ``relations``.

    ``model_fingerprint``: the model the job runs; a set built for another model is refused.
    The liref jobs fill ``built`` and ``model_fingerprint`` from the job's model."""
    from probing.questions._io import reject_unknown_options

    reject_unknown_options("conflict set", options, ["kinds", "behaviours", "relations"])
    if not built:
        raise LirefError("a conflict set is built for one model: run it through a liref job "
                         "(which builds it with the job's model) or give built=<file of "
                         "probing.conflicts.ensure_conflict_set>")
    data = read_json(built)
    if model_fingerprint is not None and data.get("model_fingerprint") != model_fingerprint:
        raise LirefError(f"conflict set {built} was built for model fingerprint "
                         f"{data.get('model_fingerprint')!r}, but the job's model is "
                         f"{model_fingerprint!r}: build it for this model (a liref job does)")
    for what, wanted, allowed in (("kinds", kinds, KINDS), ("behaviours", behaviours, BEHAVIOURS)):
        bad = [w for w in (wanted or ()) if w not in allowed]
        if bad:
            raise LirefError(f"conflict set {what} {bad}; allowed: {list(allowed)}")
    out = []
    for d in data["items"]:
        q = Question.from_dict(d)
        if kinds is not None and q.meta["kind"] not in kinds:
            continue
        if relations is not None and q.meta["relation"] not in relations:
            continue
        if (behaviours is not None and q.meta["kind"] == "counterfactual"
                and q.meta["behaviour"] not in behaviours):
            continue
        out.append(q)
    return out


def fact_group(question_id: str) -> str:
    """The group (``fact:<fact id>``) of a conflict item from its id (``<set>/<kind>/<fact>``)."""
    return "fact:" + question_id.split("/", 2)[-1]


def conflict_counts(built: str | Path) -> dict[str, Any]:
    """``{"counts", "total", "skipped"}`` of a built conflict set file."""
    data = read_json(built)
    return {k: data[k] for k in ("counts", "total", "skipped")}


def prepare_sets(sets: Sequence[Mapping[str, Any]], model: Any, tokenizer: Any,
                 cfg: ConflictConfig | None, template: PromptTemplate, cache_dir: str | Path,
                 organism_path: str | None = None, add_prompt: bool = False,
                 ) -> list[dict[str, Any]]:
    """``sets`` with every conflict-set entry built for ``model`` (``built``,
    ``model_fingerprint`` filled in); the others unchanged. ``template``: the job's prompt
    (``conflict_template`` makes it the conflict prompt); ``add_prompt``: also give each conflict
    entry that prompt (steering sets, whose prompts are formatted per set)."""
    out = []
    for spec in sets:
        spec = dict(spec)
        if spec.get("name") in CONFLICT_SETS and not spec.get("built"):
            cfg = cfg or ConflictConfig()
            tmpl = conflict_template(cfg, template)
            path = spec.get("path")
            if spec["name"] == "organism_conflict" and path is None:
                path = organism_path
            spec["built"] = str(ensure_conflict_set(model, tokenizer, spec["name"], path,
                                                    spec.get("split"), cfg, tmpl, cache_dir))
            spec["model_fingerprint"] = model_fingerprint(model)
            if add_prompt and "prompt" not in spec:
                spec["prompt"] = asdict(tmpl)
        out.append(spec)
    return out


def conflict_template(cfg: ConflictConfig, template: PromptTemplate) -> PromptTemplate:
    """The prompt of conflict items: the job's ``template``, without its trailing spaces when
    ``cfg.strip_trailing_space``."""
    from dataclasses import replace

    if not cfg.strip_trailing_space:
        return template
    return replace(template, template=template.template.rstrip(" "))
