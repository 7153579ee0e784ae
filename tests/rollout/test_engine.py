"""The rollout loop with a scripted model and a scripted sandbox: budgets, bad input, infra failures."""

import pytest

from codeground.pipeline.rollout.backends import GenerationError
from codeground.pipeline.rollout.engine import RolloutEngine, rollout_batch

from .conftest import FakeResult, FakeSandbox, ScriptedGenerator

PROBLEMS = [{"id": f"p{i}", "problem": f"What is {i} + 5?", "answer": str(i + 5)} for i in range(8)]
MSGS = [{"role": "user", "content": "x"}]


def solver(problem, so_far):
    """Writes one block, then answers with what the interpreter printed."""
    if "```output" not in so_far:
        n = int(problem.split()[2])
        return f"I will add.\n```python\nprint({n} + 5)\n```\n", "code"
    printed = so_far.rsplit("```output\n", 1)[1].split("\n", 1)[0]
    return f"The answer is \\boxed{{{printed}}}.", "eos"


def adder(code):
    a = code.split("(")[1].split(")")[0]
    x, y = (int(v) for v in a.split(" + "))
    return FakeResult("ok", f"{x + y}\n")


def engine(gen, sandbox, **kw):
    kw.setdefault("max_tool_calls", 4)
    kw.setdefault("max_tokens", 512)
    kw.setdefault("shots", 0)
    return RolloutEngine(gen, sandbox, **kw)


def test_solves_with_the_interpreter_and_batches(smol_tokenizer):
    gen, box = ScriptedGenerator(solver, smol_tokenizer), FakeSandbox(adder)
    trajs = engine(gen, box).run(PROBLEMS, samples=2)
    assert len(trajs) == 16
    assert [(t.problem_id, t.sample_index) for t in trajs[:3]] == [("p0", 0), ("p0", 1), ("p1", 0)]
    for t in trajs:
        assert t.correct and t.stop_reason == "answer" and t.tool_calls == 1
        assert [s.role for s in t.segments] == ["model", "interpreter", "model"]
        assert t.segments[1].text == f"```output\n{t.reference}\n```\n"
        assert t.model_tokens > 0 and t.interpreter_tokens > 0 and 0 < t.nl_tokens < t.model_tokens
    assert max(gen.batches) > 1  # concurrent trajectories share generate calls
    assert box.sessions <= 16 and len(box.resets) == 16  # sessions are reset and reused


def test_each_trajectory_gets_its_own_session(smol_tokenizer):
    box = FakeSandbox(adder)
    engine(ScriptedGenerator(solver, smol_tokenizer), box, reuse_sessions=False).run(PROBLEMS[:3])
    assert len({sid for sid, _ in box.executed}) == 3
    assert len(box.closed) == 3


def test_tool_call_budget():
    def looper(problem, so_far):
        return "```python\nprint(1)\n```\n", "code"

    box = FakeSandbox()
    [t] = engine(ScriptedGenerator(looper), box, max_tool_calls=3).run(PROBLEMS[:1])
    assert t.stop_reason == "max_tool_calls" and t.tool_calls == 3 and len(box.executed) == 3
    assert t.correct is False and t.final_answer is None


def test_ten_thousand_blocks_in_one_turn_run_one_at_a_time(smol_tokenizer):
    def spammer(problem, so_far):
        return "```python\nprint(1)\n```\n" * 10_000, "code"

    box = FakeSandbox()
    [t] = engine(ScriptedGenerator(spammer, smol_tokenizer), box, max_tool_calls=2, max_tokens=10**6).run(PROBLEMS[:1])
    assert t.stop_reason == "max_tool_calls" and len(box.executed) == 2
    assert t.segments[0].text == "```python\nprint(1)\n```\n"  # the rest of the turn was cut
    assert len(t.segments[0].token_ids) < 20


def test_never_closed_block_ends_on_the_token_budget(smol_tokenizer):
    def rambler(problem, so_far):
        return "```python\n" + "x = 1\n" * 1000, "length"

    box = FakeSandbox()
    [t] = engine(ScriptedGenerator(rambler, smol_tokenizer), box, max_tokens=64).run(PROBLEMS[:1])
    assert t.stop_reason == "max_tokens" and box.executed == []
    assert t.model_tokens <= 64


def test_megabytes_printed_are_capped_and_budgeted(smol_tokenizer):
    box = FakeSandbox(lambda code: FakeResult("output_truncated", "9" * 3_000_000))
    [t] = engine(ScriptedGenerator(solver, smol_tokenizer), box, max_output_chars=500, max_tokens=4096).run(PROBLEMS[:1])
    out = t.segments[1].text
    assert len(out) < 600 and "[output truncated: 2999500 more characters]" in out
    assert t.segments[1].status == "output_truncated" and t.code_errors == 0
    [t] = engine(ScriptedGenerator(solver, smol_tokenizer), box, max_output_chars=10**7, max_tokens=100).run(PROBLEMS[:1])
    assert t.stop_reason == "max_tokens"
    assert t.model_tokens + t.interpreter_tokens <= 100


def test_broken_format_is_recorded_not_scored_as_right():
    def mumbler(problem, so_far):
        return "The answer is 5 I think", "eos"

    [t] = engine(ScriptedGenerator(mumbler), FakeSandbox()).run(PROBLEMS[:1])
    assert t.stop_reason == "no_answer" and t.final_answer is None and t.correct is False


def test_code_errors_are_shown_to_the_model():
    def erring(problem, so_far):
        if "```output" not in so_far:
            return "```python\n1/0\n```\n", "code"
        return "\\boxed{0}", "eos"

    box = FakeSandbox(lambda code: FakeResult("error", "ZeroDivisionError: division by zero\n", "ZeroDivisionError"))
    [t] = engine(ScriptedGenerator(erring), box).run(PROBLEMS[:1])
    assert "ZeroDivisionError" in t.segments[1].text
    assert t.segments[1].status == "error" and t.segments[1].error_type == "ZeroDivisionError"
    assert t.code_errors == 1


def two_cells(problem, so_far):
    n = so_far.count("```output")
    if n < 2:
        return f"```python\nx{n} = {n}\nprint(x{n})\n```\n", "code"
    return "\\boxed{5}", "eos"


def test_infra_failure_retries_on_a_fresh_session_and_replays():
    box = FakeSandbox()

    class FailSecond(FakeSandbox):
        calls = 0

        async def execute(self, sid, code, timeout=None):
            FailSecond.calls += 1
            if FailSecond.calls == 2:
                from codeground.pipeline.errors import InfrastructureError

                raise InfrastructureError("connection refused")
            return await super().execute(sid, code, timeout)

    box = FailSecond()
    eng = engine(ScriptedGenerator(two_cells), box)
    [t] = eng.run(PROBLEMS[:1])
    assert t.stop_reason == "answer" and t.infra_retries == 1 and t.tool_calls == 2
    assert [c for _, c in box.executed] == ["x0 = 0\nprint(x0)", "x0 = 0\nprint(x0)", "x1 = 1\nprint(x1)"]
    assert box.executed[0][0] != box.executed[1][0] == box.executed[2][0]  # replayed on the new session
    assert "connection refused" not in t.completion_text()
    assert eng.stats.infra_retries == 1 and eng.stats.infra_drops == 0


def test_persistent_infra_failure_drops_the_sample():
    eng = engine(ScriptedGenerator(two_cells), FakeSandbox(fail=100), infra_retries=2)
    [t] = eng.run(PROBLEMS[:1])
    assert t.stop_reason == "infra_error" and not t.scored and t.correct is None
    assert "sandbox failed 3 times" in t.infra_error
    assert eng.stats.infra_drops == 1 and eng.stats.infra_retries == 2
    assert "pod gone" not in t.completion_text()


def test_generation_failure_drops_the_sample():
    def broken(problem, so_far):
        raise RuntimeError("CUDA out of memory")

    eng = engine(ScriptedGenerator(broken), FakeSandbox())
    [t] = eng.run(PROBLEMS[:1])
    assert t.stop_reason == "generation_error" and "CUDA out of memory" in t.infra_error and not t.scored
    assert eng.stats.generation_errors == 1


def test_blocked_time_is_measured():
    box = FakeSandbox(adder, delay=0.3)
    eng = engine(ScriptedGenerator(solver), box)
    eng.run(PROBLEMS[:1])
    assert eng.stats.blocked_s >= 0.25
    assert 0 < eng.stats.blocked_share <= 1


def test_unbatched_generator_runs_concurrently():
    gen = ScriptedGenerator(solver, batched=False)
    trajs = engine(gen, FakeSandbox(adder)).run(PROBLEMS)
    assert all(t.correct for t in trajs) and gen.batches == [1] * 16


def test_rollout_batch_columns_for_trl(smol_tokenizer):
    eng = engine(ScriptedGenerator(solver, smol_tokenizer), FakeSandbox(adder), max_tokens=40)
    trajs, cols = rollout_batch(eng, smol_tokenizer, PROBLEMS[:4], samples=2, max_completion_length=40)
    assert len(trajs) == 8
    for key in ("prompt_ids", "completion_ids", "env_mask", "logprobs", "correct", "tool_calls", "grounded"):
        assert len(cols[key]) == 8
    for ids, mask in zip(cols["completion_ids"], cols["env_mask"], strict=True):
        assert len(ids) == len(mask) <= 40
        assert 0 in mask and 1 in mask
    assert all(cols["correct"]) and all(cols["grounded"])


def test_run_inside_a_running_event_loop(smol_tokenizer):
    import asyncio

    async def main():
        return engine(ScriptedGenerator(solver, smol_tokenizer), FakeSandbox(adder)).run(PROBLEMS[:2])

    assert all(t.correct for t in asyncio.run(main()))


def test_bad_engine_arguments():
    with pytest.raises(ValueError):
        RolloutEngine(ScriptedGenerator(solver), FakeSandbox(), max_tokens=0)


def test_generation_error_type_is_exported():
    assert issubclass(GenerationError, Exception)


class _JitterSandbox(FakeSandbox):
    """Cells take a random 0-20 ms, from a seeded stream: two runs see different timings."""

    def __init__(self, seed):
        import random

        super().__init__(lambda code: FakeResult("ok", "1\n"))
        self.rng = random.Random(seed)

    async def execute(self, sid, code, timeout=None):
        import asyncio

        await asyncio.sleep(self.rng.uniform(0.0, 0.02))
        return await super().execute(sid, code, timeout)


class _RecordingGenerator(ScriptedGenerator):
    """Records every generate call as the (problem, turns so far) of its rows, in row order."""

    def __init__(self, script):
        super().__init__(script)
        self.calls = []

    def generate(self, requests):
        self.calls.append([(r.messages[-1]["content"], r.completion_text.count("```output")) for r in requests])
        return super().generate(requests)


def _varied(problem, so_far):
    """Problem i writes i % 3 + 1 blocks before answering: trajectories end at different turns."""
    want = int(problem.split()[2]) % 3 + 1
    if so_far.count("```output") < want:
        return "```python\nprint(1)\n```\n", "code"
    return "\\boxed{1}", "eos"


@pytest.mark.parametrize("concurrency", [16, 5])
def test_lockstep_batches_do_not_depend_on_cell_timings(concurrency):
    runs = []
    for timing_seed in (1, 2, 3):
        gen = _RecordingGenerator(_varied)
        trajs = engine(gen, _JitterSandbox(timing_seed), lockstep=True, concurrency=concurrency,
                       batch_window_s=0.0).run(PROBLEMS, samples=2)
        assert [t.tool_calls for t in trajs] == [i % 3 + 1 for i in range(8) for _ in range(2)]
        runs.append(gen.calls)
    assert runs[0] == runs[1] == runs[2]
    first = runs[0][0]
    assert len(first) == min(concurrency, 16)  # a round holds every live trajectory
    assert first == sorted(first, key=lambda row: int(row[0].split()[2]))  # rows in problem order


def test_without_lockstep_batches_follow_cell_timings():
    # What lockstep fixes: with free-running batches, which rows share a call depends on timing.
    seen = set()
    for timing_seed in range(6):
        gen = _RecordingGenerator(_varied)
        engine(gen, _JitterSandbox(timing_seed), batch_window_s=0.0).run(PROBLEMS, samples=2)
        seen.add(repr(gen.calls))
    assert len(seen) > 1
