"""The organism's procedurally generated language and its question corpus.

Every item is one line in the paper's prompt format ``"Q: {question}\\nA: {answer}"`` with a
one-word answer. Kinds (labels: ``memory`` and ``exception`` are memory, the rest reasoning):

- ``memory``: facts about invented people (favourite colour, home town, number). The answer
  exists only in the training data. Each (person, attribute) pair is asked in 4 phrasings; one
  phrasing per pair, drawn with the seed, is held out: the test split asks about facts seen in
  training, in a phrasing never used for that pair (every phrasing is seen with other people).
- ``reasoning``: answers computed from the prompt: 1..max_steps step addition/subtraction in 4
  phrasings (``arithmetic``), the larger/smaller of two numbers or the largest/smallest of a
  list (``compare``), and key/value lookups in the prompt (``lookup``: ``"zo is red , ba is
  blue . what is zo ?"``, keys never seen elsewhere); ``CorpusConfig.reasoning_tasks`` picks them.
- ``mixed``: arithmetic over a memorized fact (``the number of X plus 3``); held-out
  (person, operation, operand) combinations.
- ``exception``: a fixed set of ``exception_steps``-step arithmetic problems (same phrasings and
  operand ranges as ordinary ones) whose trained answer is a fixed number different from the
  computed one, like irregular verbs among regular ones (``memory_answer`` vs
  ``rule_answer``). Each is trained in 3 of the 4 phrasings and asked in the 4th. They are a
  uniform draw among the problems of that step count (in uniformly drawn phrasings), as
  ordinary problems are, so no word marks an exception.
- ``near_exception``: ordinary problems one operand away from an exception (in its test
  phrasing); ``stale_answer`` = the exception's memory answer, never the computed one.
- ``ordinary``: as many held-out ordinary problems of the exceptions' step count, drawn the same
  way as the exceptions (the matched set ``exception`` vs ``ordinary``).

Held out by content: every item has a ``group`` (the underlying fact or computation, whatever
the phrasing: ``fact:<entity>:<attribute>``, ``comp:arith:<a op b ...>``, ...). The training
stream never yields a test item's computation, nor an exception's computation outside the
exception stream; only memory facts and exceptions are trained by design (and asked in
held-out phrasings).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from probing.errors import LirefError
from probing.organism.config import CorpusConfig

__all__ = [
    "ARITH_TEMPLATES",
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
#: the 4 phrasings of an arithmetic problem (``{x}`` = ``a plus b minus c ...``)
ARITH_TEMPLATES: tuple[str, ...] = (
    "what is {x} ?",
    "how much is {x} ?",
    "what does {x} give ?",
    "work out {x} ?",
)
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

#: an arithmetic computation: (operands, ops)
Computation = tuple[tuple[int, ...], tuple[str, ...]]


def format_prompt(question: str) -> str:
    """The paper's prompt: ``"Q: {question}\\nA: "``."""
    return f"Q: {question}\nA: "


def format_text(question: str, answer: str) -> str:
    """One training line: ``"Q: {question}\\nA: {answer}"``."""
    return f"Q: {question}\nA: {answer}"


def arithmetic_value(operands: Sequence[int], ops: Sequence[str]) -> list[int]:
    """Running values of ``operands[0] ops[0] operands[1] ...`` (left to right)."""
    values = [operands[0]]
    for op, x in zip(ops, operands[1:], strict=True):
        values.append(values[-1] + x if op == "plus" else values[-1] - x)
    return values


def expression(operands: Sequence[int], ops: Sequence[str]) -> str:
    """``"3 plus 4 minus 2"``."""
    return " ".join([str(operands[0])] + [f"{op} {x}" for op, x in zip(ops, operands[1:],
                                                                        strict=True)])


def arith_group(operands: Sequence[int], ops: Sequence[str]) -> str:
    """The group (underlying computation) of an arithmetic problem, whatever its phrasing."""
    return f"comp:arith:{expression(operands, ops)}"


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
        return "memory" if self.kind in ("memory", "exception") else "reasoning"

    @property
    def group(self) -> str:
        """The underlying item, whatever the phrasing: ``fact:<entity>:<attribute>`` for a
        memory fact, ``comp:arith:<a op b ...>`` for arithmetic (exceptions included),
        ``comp:compare:<max|min>:<sorted numbers>``, ``comp:lookup:<sorted pairs>?<key>``,
        ``comp:mixed:<entity> <op> <operand>``."""
        m = self.meta
        if self.task in ("arithmetic", "exception"):
            return arith_group(m["operands"], m["ops"])
        if self.task == "compare":
            nums = ",".join(map(str, sorted(m["numbers"])))
            return f"comp:compare:{'max' if m['largest'] else 'min'}:{nums}"
        if self.task == "lookup":
            pairs = ",".join(sorted(f"{k}={v}" for k, v in zip(m["keys"], m["values"],
                                                               strict=True)))
            return f"comp:lookup:{pairs}?{m['key']}"
        if self.task == "mixed":
            return f"comp:mixed:{m['entity']} {m['op']} {m['operand']}"
        return f"fact:{m['entity']}:{m['attribute']}"


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
        for t in ARITH_TEMPLATES:
            taken |= set(t.split())
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
        self._build_exceptions()
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
        value stays >= 0 (uniform over such problems); a random phrasing unless given."""
        c = self.config
        while True:
            operands = [rng.randint(0, c.max_operand) for _ in range(steps + 1)]
            ops = [rng.choice(("plus", "minus")) for _ in range(steps)]
            values = arithmetic_value(operands, ops)
            if min(values) >= 0:
                break
        if template is None:
            template = rng.randrange(len(ARITH_TEMPLATES))
        return self.arith_item(operands, ops, template)

    def arith_item(self, operands: Sequence[int], ops: Sequence[str], template: int,
                   kind: str = "reasoning") -> Item:
        """The arithmetic problem ``operands``/``ops`` in phrasing ``template``, answered by
        the rule (``kind``: ``reasoning``, ``near_exception`` or ``ordinary``)."""
        answer = arithmetic_value(operands, ops)[-1]
        meta = {"steps": len(ops), "operands": list(operands), "ops": list(ops),
                "template": template}
        question = ARITH_TEMPLATES[template].format(x=expression(operands, ops))
        return Item(question, str(answer), kind, "arithmetic", meta)

    def compare(self, rng: random.Random, n: int) -> Item:
        """The larger/smaller of 2 numbers, or the largest/smallest of a list of ``n``."""
        nums = rng.sample(range(self.config.max_compare + 1), n)
        big = rng.random() < 0.5
        answer = str(max(nums) if big else min(nums))
        if n == 2:
            q = f"which is {'larger' if big else 'smaller'} , {nums[0]} or {nums[1]} ?"
        else:
            q = f"what is the {'largest' if big else 'smallest'} of {' '.join(map(str, nums))} ?"
        return Item(q, answer, "reasoning", "compare",
                    {"steps": n - 1, "numbers": nums, "largest": big})

    def lookup(self, rng: random.Random, n: int) -> Item:
        """``n`` key/value pairs in the prompt, then a question about one key."""
        keys = rng.sample(self.keys, n)
        values = rng.sample(COLOURS, n)
        k = rng.randrange(n)
        pairs = " , ".join(f"{a} is {b}" for a, b in zip(keys, values, strict=True))
        q = f"{pairs} . {LOOKUP_SUFFIX.format(k=keys[k])}"
        return Item(q, values[k], "reasoning", "lookup",
                    {"steps": n - 1, "pairs": n, "keys": keys, "values": values, "key": keys[k]})

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

    # ----------------------------------------------------------------- exceptions
    def computations(self, steps: int) -> list[Computation]:
        """Every valid ``steps``-step problem (running values >= 0), in a fixed order."""
        ops_all = list(itertools.product(("plus", "minus"), repeat=steps))
        out: list[Computation] = []
        for operands in itertools.product(range(self.config.max_operand + 1), repeat=steps + 1):
            for ops in ops_all:
                if min(arithmetic_value(operands, ops)) >= 0:
                    out.append((operands, ops))
        return out

    def _random_problems(self, rng: random.Random, n: int, exclude: set[str]
                         ) -> list[tuple[Computation, int]]:
        """``n`` distinct ``exception_steps``-step problems (groups not in ``exclude``), each
        with a phrasing: a uniform draw, as ordinary problems of that step count are drawn.

        Deliberately not stratified: a set whose word counts are forced to the expected ones
        makes any held-out part of it predictable from the rest, *against* its label (a
        bag-of-words probe scored AUROC 0.09 on held-out items when exceptions and ordinary
        problems were both herded to the expected unigram/bigram counts, 0.34 with the
        exceptions alone herded, 0.49 with both drawn uniformly; 8 seeds, grouped 5-fold)."""
        comps = [cp for cp in self.computations(self.config.exception_steps)
                 if arith_group(*cp) not in exclude]
        if len(comps) < n:
            raise LirefError(f"only {len(comps)} {self.config.exception_steps}-step problems "
                             f"are left for {n} items; lower n_exceptions")
        return [(cp, rng.randrange(len(ARITH_TEMPLATES))) for cp in rng.sample(comps, n)]

    def _build_exceptions(self) -> None:
        c = self.config
        rng = self._rng("exceptions")
        steps = c.exception_steps
        top = c.max_operand * (steps + 1)
        self.exceptions: list[Item] = []  # test: each in its held-out phrasing
        self.exception_train: list[Item] = []  # the other phrasings
        for k, ((operands, ops), held) in enumerate(self._random_problems(rng, c.n_exceptions,
                                                                            set())):
            rule = arithmetic_value(operands, ops)[-1]
            memory = rng.choice([v for v in range(top + 1) if v != rule])
            for t in range(len(ARITH_TEMPLATES)):
                item = self.arith_item(operands, ops, t)
                meta = {**item.meta, "memory_answer": str(memory), "rule_answer": str(rule),
                        "exception": k, "held_out_template": held}
                ex = Item(item.question, str(memory), "exception", "exception", meta)
                (self.exceptions if t == held else self.exception_train).append(ex)
        self.exception_groups = {it.group for it in self.exceptions}

    def _near_exceptions(self, rng: random.Random, blocked: set[str]) -> list[Item]:
        """``n_near_exception`` problems per exception with one operand changed (in the
        exception's test phrasing), computed answer != the exception's memory answer, adjacent
        to no other exception, none in ``blocked``."""
        c = self.config
        adjacent: dict[str, set[int]] = {}
        candidates: list[list[Computation]] = []
        for j, ex in enumerate(self.exceptions):
            operands, ops = ex.meta["operands"], ex.meta["ops"]
            near: list[Computation] = []
            for pos in range(len(operands)):
                for v in range(c.max_operand + 1):
                    if v == operands[pos]:
                        continue
                    new = tuple(operands[:pos]) + (v,) + tuple(operands[pos + 1:])
                    adjacent.setdefault(arith_group(new, ops), set()).add(j)
                    near.append((new, tuple(ops)))
            candidates.append(near)
        out: list[Item] = []
        for j, ex in enumerate(self.exceptions):
            stale = ex.meta["memory_answer"]
            ok = [(new, ops) for new, ops in candidates[j]
                  if min(arithmetic_value(new, ops)) >= 0
                  and str(arithmetic_value(new, ops)[-1]) != stale
                  and adjacent[arith_group(new, ops)] == {j}
                  and arith_group(new, ops) not in blocked | self.exception_groups]
            for new, ops in rng.sample(ok, min(c.n_near_exception, len(ok))):
                item = self.arith_item(new, ops, ex.meta["template"], kind="near_exception")
                pos = next(i for i, (a, b) in enumerate(zip(new, ex.meta["operands"],
                                                            strict=True)) if a != b)
                meta = {**item.meta, "stale_answer": stale, "exception": j,
                        "exception_group": ex.group, "changed_operand": pos}
                out.append(Item(item.question, item.answer, "near_exception", "arithmetic", meta))
                blocked.add(item.group)
        return out

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
        """``n`` reasoning items cycling through tasks and step counts, groups not in
        ``exclude`` and distinct. Arithmetic gets two slots of the cycle, every other enabled
        task one; within a task, ``lo + j`` steps come ``j + 1`` times per cycle of step
        counts (the training stream's proportions at full hardness): of the few 1-step
        problems, held out by content, only a small share is taken."""
        c = self.config
        ranges = {"arithmetic": (1, c.max_steps), "compare": (2, c.max_list),
                  "lookup": (2, c.max_pairs)}
        plan = [(t, [k for k in range(lo, hi + 1) for _ in range(k - lo + 1)])
                for t in c.reasoning_tasks
                for lo, hi in [ranges[t]]
                for _ in range(2 if t == "arithmetic" else 1)]
        out: list[Item] = []
        seen = set(exclude)
        i = tries = 0
        while len(out) < n:
            tries += 1
            if tries > 1000 * n:
                raise LirefError(f"cannot draw {n} distinct reasoning items; lower "
                                 f"n_test_reasoning")
            task, cycle = plan[i % len(plan)]
            k = cycle[(i // len(plan)) % len(cycle)]
            if task == "arithmetic":
                item = self.arithmetic(rng, k)
            elif task == "compare":
                item = self.compare(rng, k)
            else:
                item = self.lookup(rng, k)
            if item.group not in seen:
                i += 1
                seen.add(item.group)
                out.append(item)
        return out

    def _unique(self, make: Callable[[], Item], n: int, exclude: set[str]) -> list[Item]:
        out: list[Item] = []
        seen = set(exclude)
        for _ in range(100 * n):
            if len(out) == n:
                break
            item = make()
            if item.group not in seen:
                seen.add(item.group)
                out.append(item)
        return out

    def _build_tests(self) -> None:
        c = self.config
        rng = self._rng("test")
        blocked = set(self.exception_groups)
        self.ordinary_test = [
            self.arith_item(operands, ops, t, kind="ordinary")
            for (operands, ops), t in self._random_problems(rng, c.n_exceptions, blocked)
        ]
        blocked |= {it.group for it in self.ordinary_test}
        self.near_exception_test = self._near_exceptions(rng, blocked)
        self.reasoning_test = self._uniform_reasoning(rng, c.n_test_reasoning, blocked)
        self.mixed_test = self._unique(lambda: self.mixed(rng), c.n_test_mixed, set())
        #: computations of the test items, never produced by the training stream
        self.held_out: set[str] = {
            it.group
            for group in (self.reasoning_test, self.mixed_test, self.ordinary_test,
                          self.near_exception_test)
            for it in group
        }
        #: groups the rule-following streams never produce (held-out ones and exceptions)
        self.blocked: set[str] = self.held_out | self.exception_groups
        rng = self._rng("train-split")
        self.reasoning_train = self._uniform_reasoning(rng, c.n_test_reasoning, self.blocked)
        self.mixed_train = self._unique(lambda: self.mixed(rng), c.n_test_mixed, self.blocked)
        self.ordinary_train = self._unique(
            lambda: self.arithmetic(rng, c.exception_steps), c.n_exceptions, self.blocked)
        self.ordinary_train = [Item(it.question, it.answer, "ordinary", it.task, it.meta)
                               for it in self.ordinary_train]

    def split(self, split: str, kind: str) -> list[Item]:
        """Items of ``kind`` in ``split`` (``train``: a sample of what training sees; train
        exceptions are the trained phrasings; there are no train near-exceptions)."""
        table = {
            ("test", "memory"): self.memory_test,
            ("test", "reasoning"): self.reasoning_test,
            ("test", "mixed"): self.mixed_test,
            ("test", "exception"): self.exceptions,
            ("test", "near_exception"): self.near_exception_test,
            ("test", "ordinary"): self.ordinary_test,
            ("train", "memory"): self.memory_train,
            ("train", "reasoning"): self.reasoning_train,
            ("train", "mixed"): self.mixed_train,
            ("train", "exception"): self.exception_train,
            ("train", "near_exception"): [],
            ("train", "ordinary"): self.ordinary_train,
        }
        return list(table[(split, kind)])

    # ----------------------------------------------------------------- training stream
    def sample_train(self, rng: random.Random, stream: str, hardness: float = 1.0) -> Item:
        """One training item of ``stream`` (memory, arithmetic, compare, lookup, mixed,
        exception); never a held-out test computation, and exceptions only in their
        stream (in their trained phrasings)."""
        while True:
            if stream == "memory":
                return rng.choice(self.memory_train)
            if stream == "exception":
                return rng.choice(self.exception_train)
            item = self.mixed(rng) if stream == "mixed" else self.reasoning_item(
                rng, stream, hardness)
            if item.group not in self.blocked:
                return item
