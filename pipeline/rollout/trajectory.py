"""The trajectory: one sampled solution as alternating model and interpreter segments, and its JSONL form.

Produced by :mod:`.engine`; written by the distill and evaluate stages (``trajectories.jsonl``), read by
the sft stage, scored by :mod:`.metrics`, tokenised by :mod:`.tokenize`. The schema is documented in
``docs/rollouts.md``; :data:`SCHEMA` names its version and readers refuse other versions.

A model segment is text the model generated (a turn ends just after a closed python block, or at the
end of the answer); an interpreter segment is the ```output block the engine appended after running
that block, with the cell's status. Concatenating every segment's text gives the completion exactly
as the model saw it.

What it does not guarantee: that ``token_ids`` survive JSONL (they are kept in memory for GRPO, where
they are the exact sampled ids, and dropped on write since another tokenizer reads the file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .codeblocks import iter_blocks, split_prose_code

SCHEMA = "codeground.trajectory/v1"

# Why a trajectory ended. "answer": the model ended its turn after a \boxed{} answer.
STOP_REASONS = (
    "answer",  # end of turn with a \boxed{} answer
    "no_answer",  # end of turn without a \boxed{} answer (broken format)
    "max_tokens",  # model + interpreter tokens reached the budget (includes never-closed blocks)
    "max_tool_calls",  # the model closed a block after the tool-call budget was spent
    "max_turns",  # too many generation turns without progress (a guard; should not happen)
    "infra_error",  # the sandbox failed after retries; the sample is dropped, never scored
    "generation_error",  # the backend failed (endpoint down); dropped, never scored
)


@dataclass
class Segment:
    """A piece of the completion. ``status`` is set on interpreter segments: ok/error/timeout/killed/output_truncated."""

    role: Literal["model", "interpreter"]
    text: str
    status: str | None = None
    error_type: str | None = None
    token_ids: list[int] | None = None  # exact ids (model: sampled; interpreter: as fed back); not serialised

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "text": self.text}
        if self.role == "interpreter":
            d["status"] = self.status
            d["error_type"] = self.error_type
        return d


@dataclass
class Trajectory:
    """One sampled solution to one problem."""

    problem_id: str
    prompt: list[dict[str, str]]  # chat messages up to the assistant turn (few-shot turns included)
    segments: list[Segment] = field(default_factory=list)
    final_answer: str | None = None
    reference: str | None = None
    correct: bool | None = None
    stop_reason: str = "no_answer"
    problem: str = ""
    source: str | None = None  # benchmark / dataset name
    sample_index: int = 0
    # Counts filled by the engine (tokens counted with the generating model's tokenizer).
    tool_calls: int = 0  # code blocks executed
    code_errors: int = 0  # executed blocks whose status is not ok
    model_tokens: int = 0
    interpreter_tokens: int = 0
    code_tokens: int = 0  # model tokens inside python blocks (fences included)
    nl_tokens: int = 0  # model tokens outside python blocks
    infra_retries: int = 0  # sandbox failures survived by replaying on a fresh session
    infra_error: str | None = None  # why the sample was dropped, when stop_reason is infra_error
    generation_seconds: float = 0.0
    execution_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    def completion_text(self) -> str:
        """Everything after the prompt: model text and ```output blocks, exactly as the model saw it."""
        return "".join(s.text for s in self.segments)

    def model_text(self) -> str:
        return "".join(s.text for s in self.segments if s.role == "model")

    def code_blocks(self) -> list[tuple[str, str | None]]:
        """``(code, status)`` of every closed python block the model wrote; status None = not executed."""
        out: list[tuple[str, str | None]] = []
        for i, seg in enumerate(self.segments):
            if seg.role != "model":
                continue
            blocks = iter_blocks(seg.text)
            for j, b in enumerate(blocks):
                status = None
                nxt = self.segments[i + 1] if i + 1 < len(self.segments) else None
                if j == len(blocks) - 1 and nxt is not None and nxt.role == "interpreter":
                    status = nxt.status
                out.append((b.code, status))
        return out

    def executed_statuses(self) -> list[str]:
        return [s.status or "ok" for s in self.segments if s.role == "interpreter"]

    def interpreter_outputs(self) -> list[str]:
        return [s.text for s in self.segments if s.role == "interpreter"]

    def lines_of_code(self) -> int:
        """Non-blank lines inside the model's closed python blocks."""
        return sum(1 for code, _ in self.code_blocks() for line in code.splitlines() if line.strip())

    def nl_fraction(self) -> float:
        """Share of model tokens outside python blocks (characters when tokens were not counted)."""
        if self.model_tokens:
            return self.nl_tokens / self.model_tokens
        text = self.model_text()
        if not text:
            return 0.0
        prose, _ = split_prose_code(text)
        return len(prose.strip()) / len(text)

    @property
    def scored(self) -> bool:
        """Whether the sample counts in accuracy (infra and backend failures never do)."""
        return self.stop_reason not in ("infra_error", "generation_error")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "segments"}
        d["segments"] = [s.to_dict() for s in self.segments]
        return {"schema": SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise ValueError(f"trajectory schema {schema!r} is not {SCHEMA!r}")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k != "segments"}
        segs = [Segment(role=s["role"], text=s["text"], status=s.get("status"), error_type=s.get("error_type"))
                for s in d.get("segments", [])]
        return cls(segments=segs, **kw)


def write_jsonl(path: str | Path, trajectories: Iterable[Trajectory]) -> int:
    """Write one trajectory per line (UTF-8, no ASCII escaping); returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[Trajectory]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(Trajectory.from_dict(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{i}: not a trajectory ({exc})") from None
    return out


def to_dataset(trajectories: Iterable[Trajectory] | str | Path) -> Any:
    """A :class:`datasets.Dataset` with one row per trajectory (the JSONL schema's columns).

    Adds ``completion`` (the completion text) for convenience. Accepts trajectories or a JSONL path.
    """
    from datasets import Dataset

    if isinstance(trajectories, (str, Path)):
        trajectories = read_jsonl(trajectories)
    rows = []
    for t in trajectories:
        d = t.to_dict()
        d["completion"] = t.completion_text()
        d["meta"] = json.dumps(d["meta"])  # free-form: kept as a JSON string so columns stay typed
        rows.append(d)
    return Dataset.from_list(rows)


__all__ = ["SCHEMA", "STOP_REASONS", "Segment", "Trajectory", "read_jsonl", "to_dataset", "write_jsonl"]
