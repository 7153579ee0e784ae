"""Hand-written trajectories with known metrics."""

from codeground.pipeline.rollout.trajectory import Segment, Trajectory


def cell(code: str, output: str, status: str = "ok", prose: str = "") -> list[Segment]:
    return [Segment("model", f"{prose}```python\n{code}\n```\n"),
            Segment("interpreter", f"```output\n{output}\n```\n", status=status)]


def traj(pid: str, cells: list[tuple[str, str, str]], answer: str | None, reference: str = "10", *,
         k: int = 0, prose: str = "Plan.\n", stop: str | None = None, tokens: tuple[int, int, int] | None = None
         ) -> Trajectory:
    """A trajectory: ``cells`` = [(code, output, status)], then "\\boxed{answer}" (or no answer)."""
    segs: list[Segment] = []
    for i, (code, out, status) in enumerate(cells):
        segs += cell(code, out, status, prose if i == 0 else "")
    final = f"The answer is \\boxed{{{answer}}}." if answer is not None else "I give up."
    segs.append(Segment("model", final))
    from codeground.pipeline.rewards import is_equivalent

    t = Trajectory(problem_id=pid, prompt=[{"role": "user", "content": pid}], segments=segs, final_answer=answer,
                   reference=reference, correct=answer is not None and is_equivalent(answer, reference),
                   stop_reason=stop or ("answer" if answer is not None else "no_answer"), sample_index=k,
                   tool_calls=len(cells), code_errors=sum(s != "ok" for _, _, s in cells))
    if tokens is not None:
        t.model_tokens, t.code_tokens, t.interpreter_tokens = tokens
        t.nl_tokens = t.model_tokens - t.code_tokens
    return t
