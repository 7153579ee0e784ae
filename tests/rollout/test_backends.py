"""The OpenAI-compatible backend against a scripted server (httpx mock transport), and vLLM's lazy import."""

import json

import httpx
import pytest

from codeground.pipeline.rollout.backends import FENCE_STOP, GenerationError, GenRequest, OpenAIGenerator
from codeground.pipeline.rollout.engine import RolloutEngine

from .conftest import FakeResult, FakeSandbox


def server(replies, seen):
    """A fake /v1 server answering chat or completions requests with scripted (text, finish, stop_reason)."""
    it = iter(replies)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        reply = next(it)
        if isinstance(reply, int):
            return httpx.Response(reply, text="overloaded")
        text, finish, stop = reply
        choice = {"finish_reason": finish, "stop_reason": stop}
        if request.url.path.endswith("/chat/completions"):
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return httpx.Response(200, json={"choices": [choice], "usage": {"completion_tokens": 7}})

    return httpx.MockTransport(handler)


def test_chat_mode_continues_the_assistant_message():
    seen = []
    replies = [("Plan.\n```python\nprint(6*7)\n", "stop", FENCE_STOP),  # server dropped the stop string
               ("The answer is \\boxed{42}.", "stop", None)]
    gen = OpenAIGenerator("http://teacher/v1", "m", transport=server(replies, seen))
    box = FakeSandbox(lambda code: FakeResult("ok", "42\n"))
    [t] = RolloutEngine(gen, box, shots=0, max_tokens=100).run([{"id": "a", "problem": "6*7?", "answer": "42"}])
    assert t.correct and t.tool_calls == 1
    assert t.segments[0].text == "Plan.\n```python\nprint(6*7)\n```\n"
    first, second = seen[0][1], seen[1][1]
    assert first["stop"] == [FENCE_STOP] and first["messages"][-1]["role"] == "user"
    assert second["continue_final_message"] is True and second["add_generation_prompt"] is False
    assert second["messages"][-1] == {"role": "assistant", "content": t.segments[0].text + t.segments[1].text}


def test_completions_mode_with_a_local_tokenizer(smol_tokenizer):
    seen = []
    replies = [("```python\nprint(1)\n```\n```output\nmade up\n```\n", "stop", FENCE_STOP), ("\\boxed{1}", "stop", None)]
    gen = OpenAIGenerator("http://teacher/v1", "m", tokenizer=smol_tokenizer, transport=server(replies, seen))
    [t] = RolloutEngine(gen, FakeSandbox(lambda c: FakeResult("ok", "1\n")), shots=0).run(
        [{"id": "a", "problem": "1?", "answer": "1"}])
    assert seen[0][0] == "/v1/completions" and seen[0][1]["prompt"].endswith("<|im_start|>assistant\n")
    assert "made up" not in t.completion_text()  # text after the closing fence is never kept
    assert seen[1][1]["prompt"].endswith("```output\n1\n```\n")
    assert t.correct


@pytest.mark.asyncio
async def test_retries_then_gives_up():
    seen = []
    gen = OpenAIGenerator("http://teacher/v1", "m", transport=server([503, 429, 500], seen), retries=2, retry_delay=0)
    with pytest.raises(GenerationError, match="3 attempts"):
        await gen.agenerate([GenRequest([{"role": "user", "content": "q"}], "", None, 10, 0.0)])
    gen2 = OpenAIGenerator("http://teacher/v1", "m", transport=server([400], seen), retries=2, retry_delay=0)
    with pytest.raises(GenerationError, match="HTTP 400"):
        await gen2.agenerate([GenRequest([{"role": "user", "content": "q"}], "", None, 10, 0.0)])


def test_vllm_is_imported_lazily():
    import importlib.util

    from codeground.pipeline.errors import CodegroundError
    from codeground.pipeline.rollout.backends import VllmGenerator

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(CodegroundError, match="pip install"):
            VllmGenerator("some/model")
