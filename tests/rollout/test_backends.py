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


def _tiny_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg)


def _peaked_model(tokenizer):
    """The tiny model with peaked logits: greedy decoding has no near-ties to flip."""
    import torch

    model = _tiny_model(tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return model


def _prefixed_requests(tokenizer, budgets):
    """Greedy requests that share a long prefix (as few-shot prompts do) and differ after it."""
    shared = tokenizer("You are a helpful assistant that solves problems. " * 6, add_special_tokens=False)["input_ids"]
    return shared, [GenRequest([], "", shared + tokenizer(f" question {i}" * (i + 1), add_special_tokens=False)["input_ids"],
                               budget, 0.0) for i, budget in enumerate(budgets)]


def test_stop_criteria_stops_right_after_the_closing_fence(smol_tokenizer):
    import torch

    from codeground.pipeline.rollout.backends import _StopOnBlock

    tok = smol_tokenizer
    ids = tok("Plan.\n```python\nprint(1)\n```\n```output\n", add_special_tokens=False)["input_ids"]
    stop = _StopOnBlock(tok, start=0, budgets=[1000], eos_ids={tok.eos_token_id})
    fired_at = None
    for k in range(1, len(ids) + 1):
        if bool(stop(torch.tensor([ids[:k]]), None)[0]):
            fired_at = k
            break
    assert stop.reason == ["code"]
    assert tok.decode(ids[:fired_at]) == "Plan.\n```python\nprint(1)\n```\n"


def test_transformers_generator_budgets_mode_and_rng(smol_tokenizer):
    import torch

    from codeground.pipeline.rollout.backends import TransformersGenerator

    model = _tiny_model(smol_tokenizer)
    model.train()
    gen = TransformersGenerator(model, smol_tokenizer, batch_size=2)
    ctx = smol_tokenizer("hello there", add_special_tokens=False)["input_ids"]
    reqs = [GenRequest([], "", ctx, 5, 1.0, seed=7), GenRequest([], "", ctx[:1], 9, 1.0, seed=7),
            GenRequest([], "", ctx, 3, 0.0)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    out = gen.generate(reqs)
    assert torch.equal(before, torch.get_rng_state())  # the trainer's RNG is untouched
    assert model.training  # train mode restored
    assert len(out) == 3
    for r, res in zip(reqs, out, strict=True):
        assert res.num_tokens <= r.max_new_tokens
        assert res.finish in ("length", "eos", "code")
        assert smol_tokenizer.decode(res.token_ids, skip_special_tokens=False) == res.text
    again = gen.generate(reqs[:2])
    assert [r.token_ids for r in again] == [r.token_ids for r in out[:2]]  # same seed, same batch: same sample


def test_shared_prefix_cache_gives_the_same_tokens(smol_tokenizer):
    from codeground.pipeline.rollout.backends import TransformersGenerator

    model = _peaked_model(smol_tokenizer)
    shared, reqs = _prefixed_requests(smol_tokenizer, (12, 12, 12))
    cached = TransformersGenerator(model, smol_tokenizer, min_prefix=8)
    assert len(cached._shared_prefix([r.context_ids for r in reqs])) >= len(shared) - 1
    plain = TransformersGenerator(model, smol_tokenizer, prefix_cache=False)
    assert [r.token_ids for r in cached.generate(reqs)] == [r.token_ids for r in plain.generate(reqs)]


def test_the_prefix_forward_is_reused_until_the_weights_change(smol_tokenizer):
    import torch

    from codeground.pipeline.rollout.backends import TransformersGenerator

    model = _peaked_model(smol_tokenizer)
    _, reqs = _prefixed_requests(smol_tokenizer, (5, 13, 21))
    gen = TransformersGenerator(model, smol_tokenizer, min_prefix=8, chunk_tokens=4)
    first = gen.generate(reqs)
    assert gen.prefix_forwards == 1  # six chunk calls, one prefix forward
    assert [r.token_ids for r in gen.generate(reqs)] == [r.token_ids for r in first]
    assert gen.prefix_forwards == 1
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(input_ids=torch.tensor([reqs[0].context_ids])).logits.sum().backward()
    opt.step()  # an optimizer step writes the weights in place: the memo is stale
    changed = gen.generate(reqs)
    assert gen.prefix_forwards == 2
    fresh = TransformersGenerator(model, smol_tokenizer, min_prefix=8, chunk_tokens=4).generate(reqs)
    assert [r.token_ids for r in changed] == [r.token_ids for r in fresh]


def test_chunked_generation_gives_the_same_tokens_as_one_call(smol_tokenizer):
    from codeground.pipeline.rollout.backends import TransformersGenerator

    model = _peaked_model(smol_tokenizer)
    _, reqs = _prefixed_requests(smol_tokenizer, (5, 13, 21))
    one_call = TransformersGenerator(model, smol_tokenizer, min_prefix=8, chunk_tokens=0).generate(reqs)
    chunked = TransformersGenerator(model, smol_tokenizer, min_prefix=8, chunk_tokens=4).generate(reqs)
    assert [r.token_ids for r in chunked] == [r.token_ids for r in one_call]
    assert [(r.finish, r.num_tokens) for r in chunked] == [(r.finish, r.num_tokens) for r in one_call]
    assert [r.num_tokens for r in chunked] == [5, 13, 21]


def test_a_block_that_closes_in_a_later_chunk_stops_the_turn(smol_tokenizer):
    import torch

    from codeground.pipeline.rollout.backends import _StopOnBlock

    tok = smol_tokenizer
    ids = tok("Plan.\n```python\nprint(1)\n```\n```output\n", add_special_tokens=False)["input_ids"]
    carry, rest = ids[:4], ids[4:]  # the fence opened in the previous chunk
    stop = _StopOnBlock(tok, start=0, budgets=[1000], eos_ids={tok.eos_token_id}, carry=[carry])
    fired_at = next(k for k in range(1, len(rest) + 1) if bool(stop(torch.tensor([rest[:k]]), None)[0]))
    assert stop.reason == ["code"]
    assert tok.decode(carry + rest[:fired_at]) == "Plan.\n```python\nprint(1)\n```\n"
