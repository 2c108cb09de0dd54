"""Text corpora for token-level activation streams (SAE training data).

A ``TextCorpus`` is a list of documents plus a fingerprint (a hash of the texts and of where
they came from) that keys activation caches. Sources:

- ``organism``: the model organism's training text (``probing.organism``).
- ``file``: a local ``.txt`` (one document per non-empty line) or ``.jsonl`` (field ``text_field``).
- ``hf``: a HuggingFace data set by name (``datasets.load_dataset``; needs the hub or its cache).
- ``questions``: question sets' prompts, ``"Q: {question}\\nA: "``.
- ``benchmarks``: question sets as whole documents (question, options, solution or answer),
  de-duplicated by question and shuffled with ``seed`` (a real-text corpus available offline).
- ``texts``: an explicit list of strings (notebooks, tests).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probing.errors import LirefError

log = logging.getLogger(__name__)

__all__ = [
    "CORPUS_SOURCES",
    "PROMPT_TEMPLATE",
    "TextCorpus",
    "TextCorpusConfig",
    "benchmark_documents",
    "fingerprint_texts",
    "load_corpus",
    "question_prompts",
]

#: The paper's prompt: no few-shot, ``"Q: " + question + "\nA: "``.
PROMPT_TEMPLATE = "Q: {question}\nA: "

CORPUS_SOURCES = ("organism", "file", "hf", "questions", "benchmarks", "texts")


def fingerprint_texts(texts: Iterable[str], salt: str = "") -> str:
    """sha256 over the texts (length-prefixed, so boundaries count) and a salt; 16 hex chars."""
    h = hashlib.sha256(salt.encode("utf-8"))
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


@dataclass
class TextCorpus:
    """Documents plus provenance, de-duplicated (whitespace-normalised; the first copy is
    kept). ``fingerprint`` changes whenever any text changes."""

    texts: list[str]
    source: str
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        texts = [t for t in self.texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise LirefError(f"corpus from source {self.source!r} ({self.description}) is empty")
        # one copy of each document (whitespace-normalised), so a held-out document never
        # also sits in the training part
        unique: dict[str, str] = {}
        for t in texts:
            unique.setdefault(" ".join(t.split()), t)
        self.texts = list(unique.values())
        self.n_duplicates = len(texts) - len(self.texts)
        if self.n_duplicates:
            log.info("corpus %s: dropped %d duplicate document(s), %d left", self.source,
                     self.n_duplicates, len(self.texts))
        self.fingerprint = fingerprint_texts(self.texts, salt=self.source)

    def __len__(self) -> int:
        return len(self.texts)

    def split(self, n_heldout: int, seed: int = 0) -> tuple[TextCorpus, TextCorpus]:
        """``(train, heldout)``: ``n_heldout`` documents drawn with ``seed`` are held out (at
        least one document on each side); each side keeps the corpus order. The corpus holds
        no duplicates, so no held-out document occurs in the training part."""
        import random

        if len(self.texts) < 2:
            raise LirefError(f"corpus {self.source!r} has {len(self.texts)} document(s); need >= 2 "
                             "to hold some out for evaluation")
        n = min(max(int(n_heldout), 1), len(self.texts) - 1)
        held_idx = set(random.Random(f"liref-heldout-{seed}").sample(range(len(self.texts)), n))
        train = [t for i, t in enumerate(self.texts) if i not in held_idx]
        held = [t for i, t in enumerate(self.texts) if i in held_idx]
        return (TextCorpus(train, self.source, {**self.description, "part": "train"}),
                TextCorpus(held, self.source, {**self.description, "part": "heldout"}))


def question_prompts(question_sets: Sequence[Mapping[str, Any]],
                     template: str = PROMPT_TEMPLATE) -> list[str]:
    """Prompts of question sets: each entry ``{name, path?, split?, n?, seed?, ...options}``."""
    return [template.format(question=q.question) for q in _load_sets(question_sets)]


def _load_sets(question_sets: Sequence[Mapping[str, Any]], **defaults: Any) -> list[Any]:
    """The questions of every entry ``{name, ...load_question_set options}`` in order
    (``defaults`` fill options an entry does not set)."""
    from probing.questions import load_question_set

    questions: list[Any] = []
    for spec in question_sets:
        spec = dict(spec)
        if "name" not in spec:
            raise LirefError(f"question set entry {spec} has no 'name'")
        questions.extend(load_question_set(spec.pop("name"), **{**defaults, **spec}))
    return questions


def _document(q: Any) -> str:
    """One question as a document: ``Q: question``, lettered options, ``A: solution``."""
    lines = [f"Q: {q.question}"]
    choices = q.meta.get("choices") or []
    lines += [f"{chr(65 + i)}. {c}" for i, c in enumerate(choices)]
    solution = q.meta.get("solution") or q.meta.get("cot_content")
    if solution:
        answer = str(solution).strip()
    elif choices and "answer_index" in q.meta:
        answer = f"The answer is ({q.answers[0]}) {choices[int(q.meta['answer_index'])]}"
    else:
        answer = q.answers[0] if q.answers else ""
    return "\n".join(lines) + f"\nA: {answer}".rstrip() + "\n"


def benchmark_documents(question_sets: Sequence[Mapping[str, Any]], seed: int = 0) -> list[str]:
    """Question sets as documents (question, options, solution or gold answer), one per
    question, de-duplicated by normalised question text (first kept: MGSM's English items are
    GSM8K's), then shuffled with ``seed`` so ``max_texts`` keeps a mix of every set."""
    import random

    from probing.questions.sampling import dedupe_questions

    docs = [_document(q) for q in dedupe_questions(_load_sets(question_sets, seed=seed))]
    random.Random(f"liref-benchmark-corpus-{seed}").shuffle(docs)
    return docs


def _read_file(path: Path, text_field: str) -> list[str]:
    if not path.is_file():
        raise LirefError(f"corpus file not found: {path}")
    if path.suffix == ".jsonl":
        from probing.questions._io import read_rows

        texts = []
        for row in read_rows(path, "jsonl", what="corpus file"):
            if text_field not in row.data:
                raise LirefError(f"corpus file {row.where} has no field {text_field!r} "
                                 f"(fields: {sorted(row.data)}); set corpus.text_field")
            texts.append(str(row.data[text_field]))
        return texts
    if path.suffix in (".txt", ".text", ""):
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise LirefError(f"corpus file {path}: unsupported suffix {path.suffix!r}; use .txt or .jsonl")


def _load_hf(name: str, config_name: str | None, split: str, text_field: str,
             max_texts: int | None) -> list[str]:
    try:
        import datasets

        ds = datasets.load_dataset(name, config_name, split=split, streaming=max_texts is not None)
    except Exception as exc:  # noqa: BLE001 - network, missing data set, bad split all land here
        raise LirefError(
            f"cannot load HF data set {name!r} (config={config_name!r}, split={split!r}): the hub "
            f"may be unreachable (no network) or the name wrong; use corpus.source=file with a local "
            f".txt/.jsonl instead ({type(exc).__name__}: {exc})") from exc
    texts: list[str] = []
    for row in ds:
        if text_field not in row:
            raise LirefError(f"HF data set {name!r} has no field {text_field!r} (fields: "
                             f"{sorted(row)}); set corpus.text_field")
        texts.append(str(row[text_field]))
        if max_texts is not None and len(texts) >= max_texts:
            break
    return texts


def _organism_config(checkpoint: Path) -> Any:
    """The ``OrganismConfig`` a checkpoint was trained with (defaults when it has none)."""
    from probing.organism.config import OrganismConfig

    if (checkpoint / "organism.json").is_file():
        from probing.organism.store import load_organism_config

        return load_organism_config(checkpoint)
    return OrganismConfig()


def _organism_texts(n_texts: int | None, seed: int, checkpoint: str | Path | None = None
                    ) -> list[str]:
    """``n_texts`` training sequences of the organism (``"Q: ...\nA: answer\n"``, one item
    each, as it was trained), drawn with replacement from its training streams with the
    checkpoint's mix (``TextCorpus`` then drops the repeats: ~12k distinct documents of 20k
    draws for the default organism); ``seed`` seeds the draw only (the language is the
    checkpoint's)."""
    import random

    try:
        from probing.organism import DEFAULT_CHECKPOINT
        from probing.organism import corpus as oc
    except ImportError as exc:
        raise LirefError("the model organism's corpus generator (probing.organism.corpus) is not "
                         "available; use corpus.source=file|hf|questions") from exc
    ocfg = _organism_config(Path(checkpoint or DEFAULT_CHECKPOINT))
    corpus = oc.Corpus(ocfg.corpus, seed=ocfg.seed)
    mix = {k: float(v) for k, v in ocfg.train.mix.items() if float(v) > 0}
    streams, weights = list(mix), list(mix.values())
    rng = random.Random(f"liref-sae-corpus-{seed}")
    n = 20000 if n_texts is None else int(n_texts)
    texts = []
    for _ in range(n):
        item = corpus.sample_train(rng, rng.choices(streams, weights)[0])
        texts.append(oc.format_text(item.question, item.answer) + "\n")
    return texts


@dataclass
class TextCorpusConfig:
    """The texts an SAE is trained on (``conf/corpus/*.yaml``): ``load_corpus``'s arguments.

    ``source``: one of ``CORPUS_SOURCES``; ``path``: a .txt (one document per line) or .jsonl
    (``file``); ``name`` / ``config_name`` / ``split``: a hub data set (``hf``);
    ``max_texts``: documents kept (null = all); ``question_sets``: prompts ``"Q: ...\nA: "`` of
    question sets added to any source (``[{name: gsm8k, n: 500}]``).
    """

    source: str = "organism"
    path: str | None = None
    name: str | None = None
    config_name: str | None = None
    split: str = "train"
    text_field: str = "text"
    max_texts: int | None = None
    question_sets: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.source not in CORPUS_SOURCES:
            raise LirefError(f"corpus source {self.source!r}; allowed: {list(CORPUS_SOURCES)}")
        if self.source == "file" and not self.path:
            raise LirefError("corpus source 'file' needs corpus.path: a .txt (one document per "
                             "line) or .jsonl file")
        if self.source == "hf" and not self.name:
            raise LirefError("corpus source 'hf' needs corpus.name: a data set on the hub")


def load_corpus(
    source: str = "organism",
    *,
    path: str | None = None,
    name: str | None = None,
    config_name: str | None = None,
    split: str = "train",
    text_field: str = "text",
    max_texts: int | None = None,
    question_sets: Sequence[Mapping[str, Any]] = (),
    texts: Sequence[str] | None = None,
    seed: int = 0,
    organism_checkpoint: str | Path | None = None,
) -> TextCorpus:
    """Load a text corpus; ``question_sets`` prompts are appended to any source.

    Args:
        source: one of ``CORPUS_SOURCES``.
        path: local file for ``file``.
        name, config_name, split: HF data set for ``hf``.
        text_field: the text column (``jsonl`` / ``hf``).
        max_texts: keep at most this many documents of the source (prompts not counted).
        question_sets: ``[{name, path?, split?, n?}]`` whose prompts are added.
        texts: the documents for ``texts``.
        seed: for generated corpora (the organism).
        organism_checkpoint: the organism whose corpus is drawn (default: the committed one).
    """
    if source not in CORPUS_SOURCES:
        raise LirefError(f"unknown corpus source {source!r}; allowed: {list(CORPUS_SOURCES)}")
    desc: dict[str, Any] = {"source": source}
    if source == "organism":
        docs = _organism_texts(max_texts, seed, organism_checkpoint)
        desc["seed"] = seed
    elif source == "file":
        if not path:
            raise LirefError("corpus.source=file needs corpus.path (a .txt or .jsonl file)")
        docs = _read_file(Path(path).expanduser(), text_field)
        desc["path"] = str(path)
    elif source == "hf":
        if not name:
            raise LirefError("corpus.source=hf needs corpus.name (a HF data set name)")
        docs = _load_hf(name, config_name, split, text_field, max_texts)
        desc.update(name=name, config_name=config_name, split=split)
    elif source == "questions":
        docs = []
        if not question_sets:
            raise LirefError("corpus.source=questions needs corpus.question_sets")
    elif source == "benchmarks":
        if not question_sets:
            raise LirefError("corpus.source=benchmarks needs corpus.question_sets")
        docs = benchmark_documents(question_sets, seed)
        desc.update(question_sets=[dict(q) for q in question_sets], seed=seed)
        question_sets = ()  # they are the documents, not extra prompts
    else:
        if texts is None:
            raise LirefError("corpus.source=texts needs a list of texts")
        docs = list(texts)
    if max_texts is not None:
        docs = docs[: int(max_texts)]
    if question_sets:
        docs = docs + question_prompts(question_sets)
        desc["question_sets"] = [dict(q) for q in question_sets]
    return TextCorpus(docs, source, desc)
