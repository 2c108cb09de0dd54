"""The organism's procedurally generated language and its question corpus.

Every item is one line in the paper's prompt format ``"Q: {question}\\nA: {answer}"`` with a
one-word answer. Kinds:

- ``memory``: facts about invented people (favourite colour, home town, number). The answer
  exists only in the training data. Each (person, attribute) pair is asked in 4 phrasings; one
  phrasing per pair, drawn with the seed, is held out: the test split asks about facts seen in
  training, in a phrasing never used for that pair (every phrasing is seen with other people).
- ``reasoning``: answers computed from the prompt: 1..max_steps step addition/subtraction
  (``arithmetic``), the larger/smaller of two numbers or the largest/smallest of a list
  (``compare``), and key/value lookups in the prompt (``lookup``: ``"zo is red , ba is blue .
  what is zo ?"``, keys never seen elsewhere); ``CorpusConfig.reasoning_tasks`` picks them.
- ``mixed``: arithmetic over a memorized fact (``the number of X plus 3``); held-out
  (person, operation, operand) combinations.
- ``perturbed``: a fixed set of 3-step arithmetic problems repeated in training (the
  ``memorized`` stream; split ``train``), and at test time variants with one operand changed,
  whose stale memorized answer (``stale_answer``) is now wrong (the GSM-Symbolic situation).

Held-out test items are drawn first; the training stream rejects any of their texts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from probing.organism.config import CorpusConfig

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "Corpus",
    "Item",
    "arithmetic_value",
    "format_prompt",
    "format_text",
]

COLOURS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "pink", "brown", "grey", "orange",
)  # fmt: skip

#: attribute -> its 4 phrasings (``{e}`` = the person).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": (
        "what colour does {e} like ?",
        "which colour is the favourite of {e} ?",
        "{e} likes which colour ?",
        "name the colour that {e} likes ?",
    ),
    "town": (
        "where does {e} live ?",
        "in which town does {e} live ?",
        "{e} lives in which town ?",
        "name the town where {e} lives ?",
    ),
    "number": (
        "what is the number of {e} ?",
        "which number belongs to {e} ?",
        "{e} has which number ?",
        "name the number of {e} ?",
    ),
}
ARITH_TEMPLATES: tuple[str, ...] = ("what is {x} ?", "how much is {x} ?")
MIXED_TEMPLATE = "what is the number of {e} {op} {k} ?"
LOOKUP_SUFFIX = "what is {k} ?"
FUNCTION_WORDS = (
    "Q: ##A: ## plus minus which is larger smaller or , . what the largest smallest of "
    "how much"
)
N_FACT_NUMBERS = 10  # the ``number`` attribute takes values 0..9

_ONSETS = "b d f g k l m n p r s t v z sh th ch br dr gr kr tr".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "", "n", "r", "l", "s", "m"]


def format_prompt(question: str) -> str:
    """The paper's prompt: ``"Q: {question}\\nA: "``."""
    return f"Q: {question}\nA: "


def format_text(question: str, answer: str) -> str:
    """One training line: ``"Q: {question}\\nA: {answer}"``."""
    return f"Q: {question}\nA: {answer}"


@dataclass(frozen=True)
class Item:
    """One question with a one-word answer. ``task`` refines ``kind``; ``meta`` is free-form."""

    question: str
    answer: str
    kind: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return "memory" if self.kind == "memory" else "reasoning"


def arithmetic_value(operands: list[int], ops: list[str]) -> list[int]:
    """Running values of ``operands[0] ops[0] operands[1] ...`` (left to right)."""
    values = [operands[0]]
    for op, x in zip(ops, operands[1:], strict=True):
        values.append(values[-1] + x if op == "plus" else values[-1] - x)
    return values


def _words(rng: random.Random, n: int, taken: set[str], syllables: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables - 1))
        w += rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


class Corpus:
    """The whole corpus of one organism, a pure function of ``(config, seed)``."""

    def __init__(self, config: CorpusConfig | None = None, seed: int = 0) -> None:
        self.config = config or CorpusConfig()
        self.seed = seed
        c = self.config
        rng = self._rng("language")
        taken = set(FUNCTION_WORDS.split()) | set(COLOURS)
        for phrasings in ATTRIBUTES.values():
            for p in phrasings:
                taken |= set(p.split())
        self.entities = _words(rng, c.n_entities, taken, syllables=2)
        self.towns = _words(rng, c.n_towns, taken, syllables=3)
        self.keys = _words(rng, c.n_keys, taken, syllables=1)
        self.facts: dict[str, dict[str, str]] = {
            e: {
                "colour": rng.choice(COLOURS),
                "town": rng.choice(self.towns),
                "number": str(rng.randrange(N_FACT_NUMBERS)),
            }
            for e in self.entities
        }
        self.max_number = max(
            c.max_operand * (c.max_steps + 1), c.max_compare, N_FACT_NUMBERS - 1 + c.max_operand
        )
        self._build_memory()
        self._build_memorized()
        self._build_tests()

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"liref-organism-{self.seed}-{name}")

    # ----------------------------------------------------------------- vocabulary
    @cached_property
    def vocabulary(self) -> list[str]:
        """Every word of the language (special tokens excluded), in a fixed order."""
        words: list[str] = ["##\n", *FUNCTION_WORDS.split()]
        for phrasings in ATTRIBUTES.values():
            for p in phrasings:
                words += [w for w in p.split() if w != "{e}"]
        words += [w for t in ARITH_TEMPLATES for w in t.split() if w != "{x}"]
        words += [w for w in LOOKUP_SUFFIX.split() if w != "{k}"]
        words += [str(i) for i in range(self.max_number + 1)]
        words += list(COLOURS) + self.entities + self.towns + self.keys
        return list(dict.fromkeys(words))

    # ----------------------------------------------------------------- memory
    def _build_memory(self) -> None:
        rng = self._rng("memory-split")
        self.memory_train: list[Item] = []
        self.memory_test: list[Item] = []
        for e in self.entities:
            for attr, phrasings in ATTRIBUTES.items():
                held = rng.randrange(len(phrasings))
                for i, p in enumerate(phrasings):
                    item = Item(
                        p.format(e=e),
                        self.facts[e][attr],
                        "memory",
                        attr,
                        {"entity": e, "attribute": attr, "phrasing": i},
                    )
                    (self.memory_test if i == held else self.memory_train).append(item)

    # ----------------------------------------------------------------- reasoning
    def arithmetic(self, rng: random.Random, steps: int, template: int | None = None) -> Item:
        """``steps`` additions/subtractions of operands in ``0..max_operand``; every running
        value stays >= 0."""
        c = self.config
        while True:
            operands = [rng.randint(0, c.max_operand) for _ in range(steps + 1)]
            ops = [rng.choice(("plus", "minus")) for _ in range(steps)]
            values = arithmetic_value(operands, ops)
            if min(values) >= 0:
                break
        return self._arith_item(operands, ops, rng.randrange(2) if template is None else template)

    def _arith_item(self, operands: list[int], ops: list[str], template: int) -> Item:
        expr = " ".join(
            [str(operands[0])] + [f"{op} {x}" for op, x in zip(ops, operands[1:], strict=True)]
        )
        answer = arithmetic_value(operands, ops)[-1]
        meta = {"steps": len(ops), "operands": operands, "ops": ops, "template": template}
        return Item(ARITH_TEMPLATES[template].format(x=expr), str(answer), "reasoning",
                    "arithmetic", meta)

    def compare(self, rng: random.Random, n: int) -> Item:
        """The larger/smaller of 2 numbers, or the largest/smallest of a list of ``n``."""
        nums = rng.sample(range(self.config.max_compare + 1), n)
        big = rng.random() < 0.5
        answer = str(max(nums) if big else min(nums))
        if n == 2:
            q = f"which is {'larger' if big else 'smaller'} , {nums[0]} or {nums[1]} ?"
        else:
            q = f"what is the {'largest' if big else 'smallest'} of {' '.join(map(str, nums))} ?"
        return Item(q, answer, "reasoning", "compare", {"steps": n - 1, "numbers": nums})

    def lookup(self, rng: random.Random, n: int) -> Item:
        """``n`` key/value pairs in the prompt, then a question about one key."""
        keys = rng.sample(self.keys, n)
        values = rng.sample(COLOURS, n)
        k = rng.randrange(n)
        pairs = " , ".join(f"{a} is {b}" for a, b in zip(keys, values, strict=True))
        q = f"{pairs} . {LOOKUP_SUFFIX.format(k=keys[k])}"
        return Item(q, values[k], "reasoning", "lookup", {"steps": n - 1, "pairs": n})

    def mixed(self, rng: random.Random) -> Item:
        """Arithmetic over a memorized fact: ``the number of X plus k``."""
        while True:
            e = rng.choice(self.entities)
            op = rng.choice(("plus", "minus"))
            k = rng.randint(0, self.config.max_operand)
            value = arithmetic_value([int(self.facts[e]["number"]), k], [op])[-1]
            if value >= 0:
                break
        q = MIXED_TEMPLATE.format(e=e, op=op, k=k)
        return Item(q, str(value), "mixed", "mixed", {"entity": e, "op": op, "operand": k})

    # ----------------------------------------------------------------- memorized / perturbed
    def _build_memorized(self) -> None:
        rng = self._rng("memorized")
        steps = self.config.max_steps
        seen: set[str] = set()
        self.memorized: list[Item] = []
        while len(self.memorized) < self.config.n_memorized:
            item = self.arithmetic(rng, steps, template=0)
            if item.question not in seen:
                seen.add(item.question)
                self.memorized.append(
                    Item(item.question, item.answer, "perturbed", "memorized",
                         {**item.meta, "perturbed": False})
                )
        self.perturbed: list[Item] = []
        for j, orig in enumerate(self.memorized):
            made: set[str] = set()
            tries = 0
            while len(made) < self.config.n_perturbed and tries < 1000:
                tries += 1
                operands = list(orig.meta["operands"])
                pos = rng.randrange(len(operands))
                operands[pos] = rng.randint(0, self.config.max_operand)
                values = arithmetic_value(operands, orig.meta["ops"])
                if min(values) < 0 or str(values[-1]) == orig.answer:
                    continue
                v = self._arith_item(operands, orig.meta["ops"], template=0)
                if v.question in seen or v.question in made:
                    continue
                made.add(v.question)
                meta = {**v.meta, "perturbed": True, "stale_answer": orig.answer,
                        "original": j, "changed_operand": pos}
                self.perturbed.append(Item(v.question, v.answer, "perturbed", "arithmetic", meta))

    # ----------------------------------------------------------------- splits
    def reasoning_item(self, rng: random.Random, task: str, hardness: float = 1.0) -> Item:
        """One reasoning item of ``task``; ``hardness`` in [0, 1] caps its number of steps
        (curriculum); at 1 steps are drawn with weight proportional to their count."""
        c = self.config
        lo, hi = {"arithmetic": (1, c.max_steps), "compare": (2, c.max_list),
                  "lookup": (2, c.max_pairs)}[task]
        top = lo + round(hardness * (hi - lo))
        choices = list(range(lo, top + 1))
        n = rng.choices(choices, weights=[k - lo + 1 for k in choices])[0]
        if task == "arithmetic":
            return self.arithmetic(rng, n)
        return self.compare(rng, n) if task == "compare" else self.lookup(rng, n)

    def _uniform_reasoning(self, rng: random.Random, n: int, exclude: set[str]) -> list[Item]:
        c = self.config
        ranges = {"arithmetic": (1, c.max_steps), "compare": (2, c.max_list),
                  "lookup": (2, c.max_pairs)}
        # arithmetic (1..max_steps) gets two slots, every other enabled task one
        plan = [(t, ranges[t]) for t in c.reasoning_tasks
                for _ in range(2 if t == "arithmetic" else 1)]
        out: list[Item] = []
        seen = set(exclude)
        i = 0
        while len(out) < n:
            task, (lo, hi) = plan[i % len(plan)]
            k = lo + (i // len(plan)) % (hi - lo + 1)
            i += 1
            if task == "arithmetic":
                item = self.arithmetic(rng, k)
            elif task == "compare":
                item = self.compare(rng, k)
            else:
                item = self.lookup(rng, k)
            if item.question not in seen:
                seen.add(item.question)
                out.append(item)
        return out

    def _unique(self, make: Any, n: int, exclude: set[str]) -> list[Item]:
        out: list[Item] = []
        seen = set(exclude)
        for _ in range(100 * n):
            if len(out) == n:
                break
            item = make()
            if item.question not in seen:
                seen.add(item.question)
                out.append(item)
        return out

    def _build_tests(self) -> None:
        c = self.config
        memorized = {it.question for it in self.memorized}
        rng = self._rng("test")
        self.reasoning_test = self._uniform_reasoning(rng, c.n_test_reasoning, memorized)
        self.mixed_test = self._unique(lambda: self.mixed(rng), c.n_test_mixed, set())
        #: texts the training stream must never produce
        self.held_out: set[str] = {
            it.question
            for group in (self.memory_test, self.reasoning_test, self.mixed_test, self.perturbed)
            for it in group
        }
        rng = self._rng("train-split")
        self.reasoning_train = self._uniform_reasoning(
            rng, c.n_test_reasoning, self.held_out | memorized
        )
        self.mixed_train = self._unique(lambda: self.mixed(rng), c.n_test_mixed, self.held_out)

    def split(self, split: str, kind: str) -> list[Item]:
        """Items of ``kind`` in ``split`` (``train``: a sample of what training sees)."""
        table = {
            ("test", "memory"): self.memory_test,
            ("test", "reasoning"): self.reasoning_test,
            ("test", "mixed"): self.mixed_test,
            ("test", "perturbed"): self.perturbed,
            ("train", "memory"): self.memory_train,
            ("train", "reasoning"): self.reasoning_train,
            ("train", "mixed"): self.mixed_train,
            ("train", "perturbed"): self.memorized,
        }
        return list(table[(split, kind)])

    # ----------------------------------------------------------------- training stream
    def sample_train(self, rng: random.Random, stream: str, hardness: float = 1.0) -> Item:
        """One training item of ``stream`` (memory, arithmetic, compare, lookup, mixed,
        memorized); never a held-out test text."""
        while True:
            if stream == "memory":
                return rng.choice(self.memory_train)
            if stream == "memorized":
                return rng.choice(self.memorized)
            item = self.mixed(rng) if stream == "mixed" else self.reasoning_item(
                rng, stream, hardness)
            if item.question not in self.held_out:
                return item
