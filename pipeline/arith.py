"""A procedural arithmetic word-problem task: the quickstart's task, where code is the way to the answer.

Called by :mod:`.datasets` for ``builtin:arith_train``, ``builtin:arith_test``, ``builtin:arith_levelN``
and ``builtin:arith?levels=1,2&n=500&seed=7``. Problems are generated, not shipped: the same name
always gives the same rows (a seeded ``random.Random``; no global state).

The difficulty ladder (how many operations a problem needs; numbers are 2–4 digits, so mental
arithmetic is unreliable for a small model and a one-line ``print`` solves it):

- level 0: a bare expression, "Compute 734 * 56."
- level 1: one operation in words (add, subtract or multiply two numbers)
- level 2: two operations (a + b × c, a × b − c, (a − b) × c, ...)
- level 3: three operations (a × b + c × d, ...)

``arith_train`` mixes levels 1 and 2 (2,000 problems); ``arith_test`` the same levels (200 problems,
another seed, none of whose texts occur in ``arith_train``). Measured on SmolLM2-135M-Instruct with the
3-shot code prompt, greedy, 16 problems per level: level 0 81%, level 1 31%, level 2 6%, level 3 6%;
``arith_test`` (first 32) 25%. Room to learn, and enough right answers to distill from.

What it does not guarantee: natural-sounding English, or that levels are equally hard for every model.
"""

from __future__ import annotations

import random
from collections.abc import Callable

ITEMS = ["apples", "books", "bottles", "boxes", "bricks", "cards", "chairs", "coins", "cookies", "cups",
         "eggs", "flowers", "jars", "keys", "lamps", "marbles", "nails", "pencils", "plates", "shirts",
         "stamps", "tickets", "toys", "tiles", "bags"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mia",
         "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vik", "Wen", "Yusuf", "Zoe"]
PLACES = ["shop", "warehouse", "school", "factory", "library", "market", "farm", "bakery", "museum", "club"]

Gen = Callable[[random.Random], tuple[str, int]]


def _n(r: random.Random, lo: int, hi: int) -> int:
    return r.randint(lo, hi)


def _level0(r: random.Random) -> tuple[str, int]:
    a, b = _n(r, 100, 9999), _n(r, 11, 999)
    op = r.choice("+-*")
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"Compute {a} {op} {b}.", value


def _level1(r: random.Random) -> tuple[str, int]:
    item, name, place = r.choice(ITEMS), r.choice(NAMES), r.choice(PLACES)
    kind = r.randrange(3)
    if kind == 0:
        a, b = _n(r, 1000, 9999), _n(r, 100, 9999)
        return f"A {place} has {a} {item}. It receives {b} more {item}. How many {item} does the {place} have now?", a + b
    if kind == 1:
        a = _n(r, 2000, 9999)
        b = _n(r, 100, a - 1)
        return f"{name} had {a} {item} and gave away {b} of them. How many {item} does {name} have left?", a - b
    a, b = _n(r, 12, 999), _n(r, 12, 99)
    return f"Each box holds {a} {item}. How many {item} are in {b} boxes?", a * b


def _level2(r: random.Random) -> tuple[str, int]:
    item, name, place = r.choice(ITEMS), r.choice(NAMES), r.choice(PLACES)
    kind = r.randrange(4)
    if kind == 0:
        a, b, c = _n(r, 1000, 9999), _n(r, 12, 99), _n(r, 12, 999)
        return (f"A {place} has {a} {item}. It buys {b} crates with {c} {item} in each crate. "
                f"How many {item} does the {place} have now?"), a + b * c
    if kind == 1:
        a, b = _n(r, 12, 999), _n(r, 12, 99)
        c = _n(r, 100, a * b - 1)
        return (f"{name} packs {b} bags with {a} {item} in each bag, then sells {c} {item}. "
                f"How many {item} are left?"), a * b - c
    if kind == 2:
        a = _n(r, 200, 999)
        b = _n(r, 10, a - 10)
        c = _n(r, 12, 99)
        return (f"A {place} makes {a} {item} a day and uses {b} of them the same day. "
                f"How many {item} does it keep after {c} days?"), (a - b) * c
    a, b, c = _n(r, 1000, 9999), _n(r, 1000, 9999), _n(r, 3, 19)
    total = (a + b) * c
    return (f"{name} counts {a} {item} in the morning and {b} {item} in the afternoon, "
            f"every day for {c} days. How many {item} does {name} count in total?"), total


def _level3(r: random.Random) -> tuple[str, int]:
    item, name = r.choice(ITEMS), r.choice(NAMES)
    a, b, c, d = _n(r, 12, 999), _n(r, 12, 99), _n(r, 12, 999), _n(r, 12, 99)
    if r.random() < 0.5:
        return (f"{name} buys {b} packs of {a} {item} and {d} packs of {c} {item}. "
                f"How many {item} does {name} buy in all?"), a * b + c * d
    e = _n(r, 100, a * b + c * d - 1)
    return (f"{name} buys {b} packs of {a} {item} and {d} packs of {c} {item}, then gives away {e} {item}. "
            f"How many {item} does {name} keep?"), a * b + c * d - e


LEVELS: dict[int, Gen] = {0: _level0, 1: _level1, 2: _level2, 3: _level3}


def generate(n: int, levels: tuple[int, ...] = (1, 2), seed: int = 0, name: str = "arith",
             exclude: set[str] | None = None) -> list[dict[str, str]]:
    """``n`` problems cycling through ``levels``; texts in ``exclude`` (and duplicates) are skipped."""
    r = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict[str, str]] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"arith: cannot make {n} distinct problems for levels {levels}")
        level = levels[len(rows) % len(levels)]
        text, value = LEVELS[level](r)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"{name}-{len(rows)}", "problem": text, "answer": str(value), "source": name,
                     "level": str(level)})
    return rows


TRAIN_SEED, TEST_SEED = 20250601, 20250602
BUILTIN = {
    "arith_train": {"n": 2000, "levels": (1, 2), "seed": TRAIN_SEED},
    "arith_test": {"n": 200, "levels": (1, 2), "seed": TEST_SEED},
    **{f"arith_level{lv}": {"n": 200, "levels": (lv,), "seed": TEST_SEED + 10 + lv} for lv in LEVELS},
}


def builtin(name: str, **overrides: object) -> list[dict[str, str]]:
    """A named arith set (see :data:`BUILTIN`); test-like sets never repeat an ``arith_train`` text."""
    cfg = {**BUILTIN.get(name, {"n": 500, "levels": (1, 2), "seed": 0}), **overrides}
    levels = tuple(int(x) for x in cfg["levels"])  # type: ignore[attr-defined]
    exclude = None
    if name != "arith_train":
        exclude = {row["problem"] for row in builtin("arith_train")}
    return generate(int(cfg["n"]), levels, int(cfg["seed"]), name=name, exclude=exclude)  # type: ignore[call-overload]
