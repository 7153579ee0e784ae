"""Test doubles for the grpo stage: an in-process "sandbox" and a scripted generator.

``FakeSandbox`` runs cells with ``exec`` in this process — only for code the tests control or the
random tiny model's (which never closes a python block); never use it for real model output.
``install()`` makes the grpo stage use it instead of the sandbox service (also in a subprocess that
imports this module first, for the kill/resume test).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from dataclasses import dataclass

from codeground.pipeline.rollout.backends import Generator, GenResult


@dataclass
class Result:
    output: str
    status: str = "ok"
    error_type: str | None = None


class FakeSandbox:
    def __init__(self):
        self.sessions: dict[str, dict] = {}
        self.ids = itertools.count()
        self.cells = 0

    async def create_session(self) -> str:
        sid = f"s{next(self.ids)}"
        self.sessions[sid] = {}
        return sid

    async def execute(self, sid: str, code: str, timeout: float | None = None) -> Result:
        self.cells += 1
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec(code, self.sessions[sid])
        except Exception as exc:  # the model's error, shown to it
            return Result(buf.getvalue() + f"{type(exc).__name__}: {exc}\n", "error", type(exc).__name__)
        return Result(buf.getvalue())

    async def reset(self, sid: str) -> None:
        self.sessions[sid] = {}

    async def close_session(self, sid: str) -> None:
        self.sessions.pop(sid, None)


class ScriptedGenerator(Generator):
    """Answers every problem with one code block, then ``\\boxed{}`` of what the code printed."""

    name = "scripted"

    def __init__(self, tokenizer, code: str = "print(6 * 7)", answer: str = "42"):
        self.tokenizer, self.code, self.answer = tokenizer, code, answer

    def generate(self, requests):
        out = []
        for r in requests:
            if "```output" not in r.completion_text:
                text, finish = f"Let me compute.\n```python\n{self.code}\n```\n", "code"
            else:
                text, finish = f"So the answer is \\boxed{{{self.answer}}}.", "eos"
            ids = self.encode(text)
            out.append(GenResult(text, ids, finish, len(ids)))
        return out


def install() -> FakeSandbox:
    """Route the grpo stage's rollouts to a FakeSandbox (returns it)."""
    from codeground.pipeline.stages import grpo_rollout

    box = FakeSandbox()
    grpo_rollout.sandbox_client = lambda endpoint: box
    return box
