r"""Problem sets with reference answers: loading, answer normalisation, decontamination.

Called by the distill, grpo and evaluate stages with a :class:`~codeground.pipeline.spec.DatasetRef`.
Sources (``DatasetRef.source``):

- ``builtin:NAME`` — ``arith_*`` are generated (:mod:`.arith`); the small benchmarks (aime24, aime25,
  amc23, math500, gsm8k_test) ship inside the package (``pipeline/data/``); the large training sets
  (math_train_numeric_3k, dapo_math_17k) are read from ``$CODEGROUND_DATA_DIR`` or, in a checkout,
  ``../shared/datasets`` beside the repo. Lookup order: the env folder, the package, the checkout.
- ``s3://bucket/key.jsonl`` — read through the artifact store (MinIO/AWS credentials from the env).
- ``hf:org/name`` — ``datasets.load_dataset(name, split=ref.split)`` (needs the hub or its cache).
- anything else — a local JSONL file.

Every row becomes ``{"id", "problem", "answer", "source"}`` with the answer normalised
(:func:`~codeground.pipeline.rewards.normalize_answer`). Rows without a problem, without an answer
or with an answer nothing can parse are **skipped and reported by id** (``LoadedDataset.skipped``),
never silently scored.

Decontamination (:func:`decontaminate`) drops a training problem that is a copy of an evaluation
problem: the same text, or a rewording of it — word-sequence similarity (difflib's ratio over the
problem's words, LaTeX punctuation ignored) at or above ``DatasetRef.decontaminateSimilarity`` *and*
the same set of numbers. The second condition keeps templated variants ("the same problem with other
numbers", usual between MATH's train and test splits, and what ``builtin:arith_*`` generates) while
catching reformatted copies (``\[...\]`` for ``$$...$$``, "On how many ..." for "Find the number
of ..."). On ``dapo_math_17k`` against the packaged benchmarks it drops all 29 rows the data folder's
README lists by hand plus 24 more, most of them further AMC 2023 problems in DAPO's rewording.

What it does not do: catch a problem translated into another language or with renamed variables
and numbers, or download anything unless asked for an ``hf:`` or ``s3://`` source.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from . import arith
from .errors import StageError
from .rewards import normalize_answer, parseable

log = logging.getLogger(__name__)

PACKAGED = ("aime24", "aime25", "amc23", "math500", "gsm8k_test")
SHARED = ("math_train_numeric_3k", "dapo_math_17k")
REPO_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


@dataclass
class LoadedDataset:
    name: str
    problems: list[dict[str, str]]
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"id", "reason"}]

    def __len__(self) -> int:
        return len(self.problems)


def normalize_problem_text(text: str) -> str:
    """Key for decontamination: NFKC, lower case, whitespace runs collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def _builtin_rows(name: str) -> list[dict[str, Any]]:
    base, _, query = name.partition("?")
    if base.startswith("arith"):
        overrides: dict[str, Any] = {}
        for k, v in parse_qsl(query):
            overrides[k] = tuple(v.split(",")) if k == "levels" else int(v)
        if base not in arith.BUILTIN and base != "arith":
            raise StageError(f"unknown builtin dataset {name!r}; arith sets: {', '.join(arith.BUILTIN)} or arith?levels=1,2&n=N&seed=S")
        return list(arith.builtin(base, **overrides))
    for folder in _data_dirs():
        path = folder / f"{base}.jsonl"
        if path.is_file():
            return _read_jsonl_bytes(path.read_bytes(), str(path))
    if base in PACKAGED:
        try:
            data = resources.files("codeground.pipeline").joinpath("data", f"{base}.jsonl").read_bytes()
            return _read_jsonl_bytes(data, f"builtin:{base}")
        except (FileNotFoundError, OSError):
            pass
    known = ", ".join([*PACKAGED, *SHARED, *arith.BUILTIN])
    hint = " (large sets are read from $CODEGROUND_DATA_DIR)" if base in SHARED else ""
    raise StageError(f"builtin dataset {name!r} not found{hint}; known: {known}")


def _data_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("CODEGROUND_DATA_DIR"):
        dirs.append(Path(os.environ["CODEGROUND_DATA_DIR"]))
    pkg = Path(__file__).resolve().parent / "data"
    dirs += [pkg, REPO_DATA]
    return dirs


def _read_jsonl_bytes(data: bytes, source: str) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise StageError(f"{source}:{i}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise StageError(f"{source}:{i}: expected a JSON object per line")
        rows.append(row)
    return rows


def read_rows(source: str, *, split: str = "train", s3_endpoint: str | None = None) -> list[dict[str, Any]]:
    """Raw rows of a source (see the module docstring)."""
    if source.startswith("builtin:"):
        return _builtin_rows(source[len("builtin:"):])
    if source.startswith("s3://"):
        from .store import open_store

        bucket, _, key = source[len("s3://"):].partition("/")
        store = open_store(f"s3://{bucket}", endpoint=s3_endpoint)
        return _read_jsonl_bytes(store.get_bytes(key), source)
    if source.startswith("hf:"):
        import datasets

        try:
            ds = datasets.load_dataset(source[3:], split=split)
        except Exception as exc:  # noqa: BLE001 - hub errors are many; the message says which dataset
            raise StageError(f"cannot load hub dataset {source[3:]!r} split {split!r}: {exc}") from exc
        return [dict(r) for r in ds]
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise StageError(f"dataset {source!r}: no such file (expected builtin:NAME, s3://, hf:org/name or a JSONL path)")
    return _read_jsonl_bytes(path.read_bytes(), str(path))


def rows_to_problems(rows: list[dict[str, Any]], name: str, *, problem_field: str = "problem",
                     answer_field: str = "answer", limit: int | None = None) -> LoadedDataset:
    """Normalise rows into problems; rows without a usable problem or answer are skipped by id."""
    out = LoadedDataset(name=name, problems=[])
    for i, row in enumerate(rows):
        if limit is not None and len(out.problems) >= limit:
            break
        rid = str(row.get("id") if row.get("id") is not None else f"{name}-{i}")
        problem = row.get(problem_field)
        raw_answer = row.get(answer_field)
        if not isinstance(problem, str) or not problem.strip():
            out.skipped.append({"id": rid, "reason": f"no problem text in field {problem_field!r}"})
            continue
        answer = normalize_answer(raw_answer) if isinstance(raw_answer, (str, int, float)) else None
        if answer is None:
            out.skipped.append({"id": rid, "reason": f"no answer in field {answer_field!r}"})
            continue
        if not parseable(answer):
            out.skipped.append({"id": rid, "reason": f"unparseable answer {str(raw_answer)[:80]!r}"})
            continue
        problem_row = {"id": rid, "problem": problem.strip(), "answer": answer,
                       "source": str(row.get("source") or name)}
        if "level" in row:
            problem_row["level"] = str(row["level"])
        out.problems.append(problem_row)
    for s in out.skipped[:20]:
        log.warning("dataset %s: skipped %s: %s", name, s["id"], s["reason"])
    if len(out.skipped) > 20:
        log.warning("dataset %s: %d more rows skipped", name, len(out.skipped) - 20)
    return out


def load_dataset_ref(ref: Any, *, s3_endpoint: str | None = None) -> LoadedDataset:
    """Load a :class:`DatasetRef` (or anything with its fields) into problems."""
    rows = read_rows(ref.source, split=getattr(ref, "split", "train"), s3_endpoint=s3_endpoint)
    return rows_to_problems(rows, ref.name, problem_field=getattr(ref, "problem_field", "problem"),
                            answer_field=getattr(ref, "answer_field", "answer"), limit=getattr(ref, "limit", None))


def load_source(source: str, name: str | None = None, limit: int | None = None) -> LoadedDataset:
    """Shorthand for scripts and tests: ``load_source("builtin:arith_test", limit=20)``."""
    return rows_to_problems(read_rows(source), name or source.split(":")[-1].split("?")[0], limit=limit)


_WORD = re.compile(r"[^\W_]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_GRAM = 6  # candidate pairs share at least one run of this many words


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _grams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + _GRAM]) for i in range(max(1, len(words) - _GRAM + 1))}


class ContaminationIndex:
    """Evaluation problems indexed for :meth:`match` (exact text, or a near-duplicate: see the module)."""

    def __init__(self, evals: list[LoadedDataset], similarity: float = 0.8):
        if not 0 < similarity <= 1:
            raise ValueError(f"similarity must be in (0, 1], got {similarity}")
        self.similarity = similarity
        self.exact: dict[str, str] = {}
        self.rows: list[tuple[str, list[str], frozenset[str]]] = []
        self.by_gram: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for ds in evals:
            for p in ds.problems:
                self.exact.setdefault(normalize_problem_text(p["problem"]), p["id"])
                words = _words(p["problem"])
                for g in _grams(words):
                    self.by_gram[g].append(len(self.rows))
                self.rows.append((p["id"], words, frozenset(_NUMBER.findall(p["problem"]))))

    def match(self, problem: str) -> str | None:
        """The id of the evaluation problem ``problem`` copies, or None."""
        hit = self.exact.get(normalize_problem_text(problem))
        if hit is not None or self.similarity >= 1:
            return hit
        words = _words(problem)
        numbers = frozenset(_NUMBER.findall(problem))
        shared: dict[int, int] = defaultdict(int)
        for g in _grams(words):
            for j in self.by_gram.get(g, ()):
                shared[j] += 1
        for j in sorted(shared, key=shared.__getitem__, reverse=True):
            eval_id, eval_words, eval_numbers = self.rows[j]
            if eval_numbers != numbers:
                continue
            sm = SequenceMatcher(None, words, eval_words, autojunk=False)
            if sm.real_quick_ratio() >= self.similarity and sm.quick_ratio() >= self.similarity \
                    and sm.ratio() >= self.similarity:
                return eval_id
        return None


def decontaminate(train: LoadedDataset, evals: list[LoadedDataset], similarity: float = 0.8,
                  ) -> tuple[LoadedDataset, list[str]]:
    """Drop training problems that copy an evaluation problem (``similarity`` 1: exact text only).

    Returns the kept set and the dropped ids; the log names each dropped id and what it copies.
    """
    index = ContaminationIndex(evals, similarity)
    kept, dropped = [], []
    for p in train.problems:
        copied = index.match(p["problem"])
        if copied is None:
            kept.append(p)
        else:
            dropped.append(p["id"])
            log.debug("dataset %s: %s copies %s", train.name, p["id"], copied)
    if dropped:
        log.info("dataset %s: %d problems dropped as copies of evaluation problems (similarity >= %s): %s",
                 train.name, len(dropped), similarity, ", ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
    return LoadedDataset(train.name, kept, list(train.skipped)), dropped


def evaluation_sets(run: Any, *, s3_endpoint: str | None = None) -> list[LoadedDataset]:
    """Every dataset any evaluate stage of ``run`` (a TrainingRun) benchmarks on."""
    names: list[str] = []
    for st in run.spec.stages:
        if st.evaluate is not None:
            names += [b for b in st.evaluate.benchmarks if b not in names]
    return [load_dataset_ref(run.spec.dataset(n), s3_endpoint=s3_endpoint) for n in names]


def load_training_set(run: Any, name: str, *, s3_endpoint: str | None = None) -> tuple[LoadedDataset, list[str]]:
    """A training dataset of ``run``, decontaminated against its evaluation sets when the ref asks for it."""
    ref = run.spec.dataset(name)
    ds = load_dataset_ref(ref, s3_endpoint=s3_endpoint)
    if not ref.decontaminate:
        return ds, []
    evals = [e for e in evaluation_sets(run, s3_endpoint=s3_endpoint) if e.name != name]
    return decontaminate(ds, evals, ref.decontaminate_similarity)
