"""The rollout engine: many code-interpreter trajectories at once, generation batched, execution async.

Called by the distill and evaluate stages and by the grpo stage's TRL ``rollout_func`` (through
:meth:`RolloutEngine.run` or :func:`rollout_batch`). One trajectory loops: generate a turn until a
python block closes (:mod:`.codeblocks`), run the block in the trajectory's own sandbox session,
append the capped ```output block, continue; it stops at the end of the model's turn, the tool-call
budget, or the token budget (model + interpreter tokens).

Overlap: every trajectory is a coroutine. Generation requests from all of them are gathered into one
batched backend call (run in a worker thread), while trajectories whose code is executing wait on the
sandbox over HTTP. The batch launches as soon as every trajectory that is not executing has asked
(or after ``batch_window_s``). :class:`RolloutStats` records how long the generator sat idle while
code ran (``blocked_s``): the interpreter's cost on the critical path.

Infrastructure failures are never shown to the model: on :class:`SandboxInfraError` the session is
dropped, a fresh one is opened, the trajectory's earlier cells are replayed (their output ignored)
and the cell is retried; after ``infra_retries`` failures the sample is dropped with stop reason
``infra_error`` and its message. Both are counted apart from code errors.

Lockstep (``lockstep=True``, the spec's ``deterministic``): the batch waits until every live
trajectory has asked (none executing code, none about to start) and its rows are sorted by (problem,
sample), so which rows share a generate call no longer depends on how fast cells ran: the same seed,
model and hardware give the same trajectories. It costs the overlap of generation with execution.

What it does not guarantee: bit-identical samples across batch compositions (without lockstep) or
across hardware and backends; replayed cells that
depend on randomness or time reproduce the same state; sessions are reused across trajectories
after ``reset`` (set ``reuse_sessions=False`` when the sandbox's reset is not trusted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InfrastructureError
from ..rewards import extract_boxed, is_equivalent
from .backends import GenerationError, Generator, GenRequest, GenResult, trim_to_block
from .codeblocks import first_closed_block, format_output, split_prose_code
from .prompts import build_messages
from .trajectory import Segment, Trajectory

log = logging.getLogger(__name__)


@dataclass
class RolloutStats:
    """Wall-clock accounting of one :meth:`RolloutEngine.arun`."""

    wall_s: float = 0.0
    generation_s: float = 0.0  # time the generator was busy (batched calls; overlaps with execution)
    execution_s: float = 0.0  # summed cell execution time over trajectories (overlapping)
    blocked_s: float = 0.0  # generator idle, nothing to generate, at least one cell running
    batches: int = 0
    generated_tokens: int = 0
    trajectories: int = 0
    cells: int = 0
    infra_retries: int = 0
    infra_drops: int = 0
    generation_errors: int = 0

    @property
    def blocked_share(self) -> float:
        return self.blocked_s / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["blocked_share"] = self.blocked_share
        d["trajectories_per_s"] = self.trajectories / self.wall_s if self.wall_s else 0.0
        return d


class _InfraDrop(Exception):
    pass


@dataclass
class _State:
    traj: Trajectory
    ctx_ids: list[int] | None
    session: str | None = None
    cells: list[str] = field(default_factory=list)
    replay: bool = False


def _infra_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the sandbox (not the code) failed: the client raises InfrastructureError
    subclasses; a raw connection error from a custom client counts too."""
    return (InfrastructureError, ConnectionError)


class RolloutEngine:
    """Runs trajectories for problems ``{"id", "problem", "answer", ["messages"], ["source"]}``."""

    def __init__(self, generator: Generator, sandbox: Any, *, max_tool_calls: int = 20, max_tokens: int = 4096,
                 max_output_chars: int = 2048, temperature: float = 0.7, concurrency: int = 32, seed: int = 0,
                 shots: int = 3, template: str | None = None, cell_timeout: float | None = None,
                 infra_retries: int = 2, batch_window_s: float = 0.05, reuse_sessions: bool = True,
                 lockstep: bool = False,
                 on_trajectory: Callable[[int, int, Trajectory], None] | None = None):
        if max_tokens < 1 or max_tool_calls < 0 or concurrency < 1:
            raise ValueError("max_tokens >= 1, max_tool_calls >= 0 and concurrency >= 1 are required")
        self.generator, self.sandbox = generator, sandbox
        self.max_tool_calls, self.max_tokens, self.max_output_chars = max_tool_calls, max_tokens, max_output_chars
        self.temperature, self.concurrency, self.seed = temperature, concurrency, seed
        self.shots, self.template, self.cell_timeout = shots, template, cell_timeout
        self.infra_retries, self.batch_window_s, self.reuse_sessions = infra_retries, batch_window_s, reuse_sessions
        self.lockstep = lockstep
        self.on_trajectory = on_trajectory
        self.stats = RolloutStats()

    # ------------------------------------------------------------------ public
    def run(self, problems: list[dict[str, Any]], samples: int = 1) -> list[Trajectory]:
        """Blocking wrapper of :meth:`arun` (works inside a running event loop too, via a thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(problems, samples))
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["out"] = asyncio.run(self.arun(problems, samples))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["err"] = exc

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    async def arun(self, problems: list[dict[str, Any]], samples: int = 1) -> list[Trajectory]:
        """Trajectories in order: problem 0 samples 0..k-1, problem 1 ..."""
        self.stats = RolloutStats()
        self._pending: list[tuple[tuple[int, int], GenRequest, asyncio.Future[GenResult]]] = []
        self._wake = asyncio.Event()
        self._active = self._executing = 0
        self._unstarted = len(problems) * samples  # trajectories not yet admitted by the semaphore
        self._gen_running = False
        self._last_tick = time.perf_counter()
        self._blocked_now = False
        self._pool: list[str] = []
        self._batch_no = 0
        client, owned = await self._client()
        self._client_obj = client
        worker = asyncio.create_task(self._batch_worker()) if self.generator.batched or self.lockstep else None
        sem = asyncio.Semaphore(self.concurrency)
        total = len(problems) * samples
        done = 0
        prompt_cache: dict[int, tuple[list[dict[str, str]], list[int] | None]] = {}
        t0 = time.perf_counter()

        async def one(i: int, k: int) -> Trajectory:
            nonlocal done
            async with sem:
                if i not in prompt_cache:
                    msgs = problems[i].get("messages") or build_messages(problems[i]["problem"], self.shots, self.template)
                    prompt_cache[i] = (msgs, self.generator.prompt_ids(msgs))
                msgs, p_ids = prompt_cache[i]
                self._tick()
                self._active += 1
                self._unstarted -= 1
                try:
                    traj = await self._rollout(problems[i], i, k, msgs, p_ids)
                finally:
                    self._tick()
                    self._active -= 1
                    self._wake.set()
            done += 1
            if self.on_trajectory is not None:
                self.on_trajectory(done, total, traj)
            return traj

        try:
            out = await asyncio.gather(*(one(i, k) for i in range(len(problems)) for k in range(samples)))
        finally:
            self._tick()
            if worker is not None:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            for sid in self._pool:
                await self._close_session(sid)
            if owned:
                await client.aclose()
        self.stats.wall_s = time.perf_counter() - t0
        self.stats.trajectories = len(out)
        return list(out)

    # ------------------------------------------------------------------ sandbox
    async def _client(self) -> tuple[Any, bool]:
        if isinstance(self.sandbox, str):
            from ..sandbox.client import AsyncSandboxClient

            return AsyncSandboxClient([self.sandbox]), True
        if isinstance(self.sandbox, (list, tuple)):
            from ..sandbox.client import AsyncSandboxClient

            return AsyncSandboxClient(list(self.sandbox)), True
        return self.sandbox, False

    async def _acquire(self) -> str:
        if self._pool:
            return self._pool.pop()
        return await self._client_obj.create_session()

    async def _release(self, sid: str | None, healthy: bool) -> None:
        if sid is None:
            return
        if healthy and self.reuse_sessions:
            try:
                await self._client_obj.reset(sid)
                self._pool.append(sid)
                return
            except Exception:  # noqa: BLE001 - a session that cannot be reset is closed instead
                pass
        await self._close_session(sid)

    async def _close_session(self, sid: str) -> None:
        # Best effort: the sandbox reaps idle sessions anyway.
        with contextlib.suppress(Exception):
            await self._client_obj.close_session(sid)

    async def _execute(self, st: _State, code: str) -> Any:
        infra = _infra_errors()
        last: BaseException | None = None
        for attempt in range(self.infra_retries + 1):
            try:
                if st.session is None:
                    st.session = await self._acquire()
                if st.replay:
                    for cell in st.cells:
                        await self._client_obj.execute(st.session, cell, timeout=self.cell_timeout)
                    st.replay = False
                t0 = time.perf_counter()
                result = await self._client_obj.execute(st.session, code, timeout=self.cell_timeout)
                dt = time.perf_counter() - t0
                st.traj.execution_seconds += dt
                self.stats.execution_s += dt
                st.cells.append(code)
                return result
            except infra as exc:
                last = exc
                log.warning("sandbox failure on %s (attempt %d): %s", st.traj.problem_id, attempt + 1, exc)
                if st.session is not None:
                    await self._close_session(st.session)
                st.session, st.replay = None, bool(st.cells)
                if attempt < self.infra_retries:
                    st.traj.infra_retries += 1
                    self.stats.infra_retries += 1
                    await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
        raise _InfraDrop(f"sandbox failed {self.infra_retries + 1} times: {type(last).__name__}: {last}")

    # ------------------------------------------------------------------ generation
    def _tick(self) -> None:
        """Account blocked time up to now, then recompute whether we are blocked (call before changes)."""
        now = time.perf_counter()
        if self._blocked_now:
            self.stats.blocked_s += now - self._last_tick
        self._last_tick = now

    def _retick(self) -> None:
        self._blocked_now = (not self._gen_running) and not self._pending and self._executing > 0

    async def _generate(self, req: GenRequest, key: tuple[int, int]) -> GenResult:
        if not self.generator.batched and not self.lockstep:
            return (await self.generator.agenerate([req]))[0]
        fut: asyncio.Future[GenResult] = asyncio.get_running_loop().create_future()
        self._tick()
        self._pending.append((key, req, fut))
        self._retick()
        self._wake.set()
        return await fut

    def _everyone_asked(self) -> bool:
        """Lockstep: every live trajectory waits for generation and none is about to be admitted."""
        return len(self._pending) >= self._active and (self._unstarted == 0 or self._active >= self.concurrency)

    async def _batch_worker(self) -> None:
        max_batch = getattr(self.generator, "batch_size", 64)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            if self.lockstep:
                while not self._everyone_asked():
                    await asyncio.sleep(0.002)
                # One call for the whole round, rows in (problem, sample) order (the generator splits
                # it into its own batches): the composition depends only on the trajectories' states.
                self._pending.sort(key=lambda p: p[0])
                batch, self._pending = self._pending, []
            else:
                deadline = time.perf_counter() + self.batch_window_s
                while len(self._pending) < min(max_batch, self._active - self._executing) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.002)
                batch, self._pending = self._pending[:max_batch], self._pending[max_batch:]
            self._tick()
            self._gen_running = True
            self._retick()
            self._batch_no += 1
            for _, req, _ in batch:
                req.seed = None if req.seed is None else self.seed + self._batch_no
            t0 = time.perf_counter()
            try:
                if self.generator.batched:
                    results = await asyncio.to_thread(self.generator.generate, [r for _, r, _ in batch])
                else:
                    results = await self.generator.agenerate([r for _, r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each waiting trajectory gets the error
                results = None
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(GenerationError(f"{type(exc).__name__}: {exc}"))
            finally:
                self.stats.generation_s += time.perf_counter() - t0
                self.stats.batches += 1
                self._tick()
                self._gen_running = False
                self._retick()
            if results is not None:
                for (_, _, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
            if self._pending:
                self._wake.set()

    # ------------------------------------------------------------------ one trajectory
    async def _rollout(self, problem: dict[str, Any], i: int, k: int, msgs: list[dict[str, str]],
                       p_ids: list[int] | None) -> Trajectory:
        """Sample ``k`` of problem ``i`` (the pair orders a lockstep batch)."""
        traj = Trajectory(
            problem_id=str(problem.get("id", "")), prompt=msgs, reference=problem.get("answer"),
            problem=problem.get("problem", ""), source=problem.get("source"), sample_index=k,
        )
        st = _State(traj=traj, ctx_ids=list(p_ids) if p_ids is not None else None)
        gen, used = self.generator, 0
        healthy = True
        max_turns = 2 * self.max_tool_calls + 16
        try:
            for _turn in range(max_turns):
                remaining = self.max_tokens - used
                if remaining <= 0:
                    traj.stop_reason = "max_tokens"
                    break
                req = GenRequest(msgs, traj.completion_text(), st.ctx_ids, remaining, self.temperature,
                                 seed=self.seed * 1_000_003 + k if self.seed is not None else None)
                t0 = time.perf_counter()
                res = await self._generate(req, (i, k))
                traj.generation_seconds += time.perf_counter() - t0
                n = len(res.token_ids) if res.token_ids is not None else res.num_tokens
                used += n
                self.stats.generated_tokens += n
                self._append_model(st, res)
                if res.finish == "eos":
                    traj.stop_reason = "answer" if extract_boxed(traj.model_text()) is not None else "no_answer"
                    break
                if res.finish == "length":
                    traj.stop_reason = "max_tokens"
                    break
                if res.finish != "code":
                    continue  # a stop string that closed no python block: ask for more
                self._cut_after_first_block(st)
                if traj.tool_calls >= self.max_tool_calls:
                    traj.stop_reason = "max_tool_calls"
                    break
                first = first_closed_block(traj.segments[-1].text)
                assert first is not None  # finish == "code" means a block closed
                code = first.code
                self._tick()
                self._executing += 1
                self._retick()
                try:
                    result = await self._execute(st, code)
                finally:
                    self._tick()
                    self._executing -= 1
                    self._retick()
                self.stats.cells += 1
                out_text = format_output(result.output, self.max_output_chars)
                out_ids = gen.encode(out_text)
                m = len(out_ids) if out_ids is not None else gen.count_tokens(out_text)
                traj.tool_calls += 1
                status = result.status
                traj.code_errors += status != "ok" and status != "output_truncated"
                if used + m > self.max_tokens:  # keep model + interpreter tokens within the budget
                    keep = self.max_tokens - used
                    if out_ids is not None:
                        out_ids = out_ids[:keep]
                        out_text = gen.tokenizer.decode(out_ids, skip_special_tokens=False)
                    else:
                        out_text = out_text[: keep * 4]
                    m = keep
                traj.segments.append(Segment("interpreter", out_text, status=status,
                                             error_type=getattr(result, "error_type", None), token_ids=out_ids))
                if st.ctx_ids is not None and out_ids is not None:
                    st.ctx_ids.extend(out_ids)
                used += m
                if used >= self.max_tokens:
                    traj.stop_reason = "max_tokens"
                    break
            else:
                traj.stop_reason = "max_turns"
        except GenerationError as exc:
            traj.stop_reason, traj.infra_error = "generation_error", str(exc)
            self.stats.generation_errors += 1
        except _InfraDrop as exc:
            traj.stop_reason, traj.infra_error = "infra_error", str(exc)
            self.stats.infra_drops += 1
            healthy = False
        finally:
            await self._release(st.session, healthy)
        self._finish(traj)
        return traj

    def _append_model(self, st: _State, res: GenResult) -> None:
        segs = st.traj.segments
        if segs and segs[-1].role == "model":  # continuation of the same turn
            segs[-1].text += res.text
            if segs[-1].token_ids is not None and res.token_ids is not None:
                segs[-1].token_ids.extend(res.token_ids)
        else:
            segs.append(Segment("model", res.text, token_ids=list(res.token_ids) if res.token_ids is not None else None))
        if st.ctx_ids is not None and res.token_ids is not None:
            st.ctx_ids.extend(res.token_ids)

    def _cut_after_first_block(self, st: _State) -> None:
        """Keep the turn only up to its first closed block: text after it (more blocks, a made-up
        ```output) is never shown to the model nor executed. Backends already stop there; this guards
        against endpoints that ignore stop strings."""
        seg = st.traj.segments[-1]
        block = first_closed_block(seg.text)
        if block is None or block.end >= len(seg.text):
            return
        tok = self.generator.tokenizer
        if seg.token_ids is not None and tok is not None:
            n_before = len(seg.token_ids)
            seg.token_ids = trim_to_block(tok, seg.token_ids)
            seg.text = tok.decode(seg.token_ids, skip_special_tokens=False)
            if st.ctx_ids is not None:
                del st.ctx_ids[len(st.ctx_ids) - (n_before - len(seg.token_ids)):]
        else:
            seg.text = seg.text[: block.end]

    def _finish(self, traj: Trajectory) -> None:
        gen = self.generator
        traj.final_answer = extract_boxed(traj.model_text())
        if traj.scored and traj.reference is not None:
            traj.correct = traj.final_answer is not None and is_equivalent(traj.final_answer, str(traj.reference))
        model_tokens = code_tokens = interp_tokens = 0
        for seg in traj.segments:
            n = len(seg.token_ids) if seg.token_ids is not None else gen.count_tokens(seg.text)
            if seg.role == "model":
                model_tokens += n
                _, codes = split_prose_code(seg.text)
                code_tokens += sum(gen.count_tokens(f"```python\n{c}\n```\n") for c in codes)
            else:
                interp_tokens += n
        traj.model_tokens, traj.interpreter_tokens = model_tokens, interp_tokens
        traj.code_tokens = min(code_tokens, model_tokens)
        traj.nl_tokens = model_tokens - traj.code_tokens


def rollout_batch(engine: RolloutEngine, tokenizer: Any, problems: list[dict[str, Any]], samples: int = 1,
                  max_completion_length: int | None = None) -> tuple[list[Trajectory], dict[str, Any]]:
    """Run rollouts and return them with TRL ``rollout_func`` columns.

    Columns: ``prompt_ids``, ``completion_ids``, ``env_mask`` (1 model / 0 interpreter), ``logprobs``
    (None: TRL recomputes them) plus per-sample ``correct``, ``tool_calls`` and ``grounded`` extras.
    """
    from .metrics import is_grounded
    from .tokenize import encode_trajectory

    trajs = engine.run(problems, samples)
    cols: dict[str, list[Any]] = {k: [] for k in ("prompt_ids", "completion_ids", "env_mask", "logprobs",
                                                  "correct", "tool_calls", "grounded", "stop_reason")}
    for t in trajs:
        enc = encode_trajectory(tokenizer, t, max_length=max_completion_length)
        cols["prompt_ids"].append(enc["prompt_ids"])
        cols["completion_ids"].append(enc["completion_ids"])
        cols["env_mask"].append(enc["completion_mask"])
        cols["logprobs"].append(None)
        cols["correct"].append(bool(t.correct))
        cols["tool_calls"].append(t.tool_calls)
        cols["grounded"].append(is_grounded(t))
        cols["stop_reason"].append(t.stop_reason)
    return trajs, cols
