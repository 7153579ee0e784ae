"""The grpo stage: curriculum, rollout masks, per-step metrics, checkpoints, kill + resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from codeground.pipeline.cli import main
from codeground.pipeline.stages import curriculum

from .fakes import FakeSandbox, ScriptedGenerator, install

ROOT = Path(__file__).resolve().parents[2]


def test_drop_solved_drops_prompts_solved_in_every_sample():
    problems = [{"id": i} for i in "abcd"]
    record = {"a": [True, True], "b": [True, False], "c": []}
    kept, dropped = curriculum.phase_problems(problems, True, record)
    assert [p["id"] for p in kept] == ["b", "c", "d"] and dropped == ["a"]
    assert curriculum.phase_problems(problems, False, record)[1] == []
    assert curriculum.phase_offsets([3, 2, 5]) == [0, 3, 5]


def test_rollout_func_masks_interpreter_tokens(chatml_tokenizer, monkeypatch):
    from codeground.pipeline.rollout.prompts import build_messages
    from codeground.pipeline.stages.grpo_rollout import RolloutFunc

    box = FakeSandbox()
    monkeypatch.setattr("codeground.pipeline.stages.grpo_rollout.sandbox_client", lambda e: box)
    fn = RolloutFunc(chatml_tokenizer, "http://unused", temperature=1.0, seed=0)
    problems = [{"id": f"q{i}", "problem": f"What is 6 * {7 + i}?", "answer": str(6 * (7 + i))} for i in range(2)]
    for p in problems:
        p["messages"] = build_messages(p["problem"], 1)
    fn.set_phase(problems, max_length=300, max_tool_calls=2)
    monkeypatch.setattr(fn, "_generator", lambda trainer: ScriptedGenerator(chatml_tokenizer))
    prompts = [p["messages"] for p in problems for _ in range(3)]  # TRL repeats each prompt num_generations times
    out = fn(prompts, trainer=None)
    assert len(out["completion_ids"]) == 6 and out["logprobs"] is None
    for ids, mask, p_ids, prompt in zip(out["completion_ids"], out["env_mask"], out["prompt_ids"], prompts, strict=True):
        assert len(ids) == len(mask) <= 300
        interp = chatml_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
        model = chatml_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert interp == "```output\n42\n```\n"
        assert "```output" not in model and model.endswith("\\boxed{42}.<|im_end|>")
        assert chatml_tokenizer.decode(p_ids).endswith(prompt[-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n")
    assert out["correct"] == [True] * 3 + [False] * 3 and out["grounded"] == [True] * 6
    assert fn.record == {"q0": [True] * 3, "q1": [False] * 3}
    stats = fn.pending[-1]
    assert stats["accuracy"] == 0.5 and stats["tool_calls"] == 1.0 and stats["grounded"] == 1.0


def grpo_spec(model: str, phases=None, **grpo) -> dict:
    return {
        "apiVersion": "codeground.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "rl"},
        "spec": {
            "model": {"name": model},
            "datasets": [{"name": "train", "source": "builtin:arith_train", "limit": 16}],
            "seed": 1,
            "stages": [{"name": "grpo", "type": "grpo", "grpo": {
                "dataset": "train", "learningRate": 1e-4, "numGenerations": 2, "promptsPerStep": 2,
                "checkpointEvery": 2, "curriculum": phases or [
                    {"steps": 2, "maxLength": 540, "maxToolCalls": 1},
                    {"steps": 3, "maxLength": 560, "maxToolCalls": 2, "dropSolved": True}], **grpo}}],
        },
    }


def _write(tmp_path, doc) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


@pytest.fixture()
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEGROUND_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("CODEGROUND_SANDBOX_URL", "http://127.0.0.1:9")
    return install()


ROW_KEYS = {"step", "phase", "reward", "accuracy", "tool_calls", "response_tokens", "grounded", "loss",
            "generation_s", "execution_s", "train_s"}


@pytest.mark.slow
def test_grpo_runs_the_curriculum_and_logs_every_step(tmp_path, tiny_model, env):
    out = tmp_path / "store"
    # requireGrounded: the reward function needs the rollout's 'grounded' column, so this run shows TRL hands it over
    assert main(["run", str(_write(tmp_path, grpo_spec(str(tiny_model), requireGrounded=True))), "--out", str(out)]) == 0
    stage = out / "rl" / "grpo"
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and [r["phase"] for r in rows] == [0, 0, 1, 1, 1]
    assert set(rows[0]) >= ROW_KEYS
    per_prompt = json.loads((stage / "per_prompt.json").read_text())
    assert set(per_prompt) == {"phase-0", "phase-1"}
    assert sum(len(v) for v in per_prompt["phase-0"]["record"].values()) == 2 * 2 * 2  # steps × prompts × samples
    status = json.loads((out / "rl" / "status.json").read_text())
    assert "reward" in status["stages"][0]["metrics"] and "reward" in status
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(stage / "model")
    work = tmp_path / "work" / "rl" / "grpo" / "checkpoints" / "grpo"
    assert (work / "phase-0" / "checkpoint-2" / "COMPLETE").exists()  # phase end (and every 2 steps)
    assert (work / "phase-1" / "checkpoint-3" / "COMPLETE").exists()
    mirrored = sorted(p.parent.relative_to(stage / "checkpoints").as_posix() for p in (stage / "checkpoints").rglob("COMPLETE"))
    assert mirrored == ["phase-1/checkpoint-3"]


def test_curriculum_max_length_below_prompt_length_is_rejected(tmp_path, tiny_model, env):
    doc = grpo_spec(str(tiny_model), phases=[{"steps": 1, "maxLength": 64, "maxToolCalls": 1}])
    main(["run", str(_write(tmp_path, doc)), "--out", str(tmp_path / "store")])
    status = json.loads((tmp_path / "store" / "rl" / "status.json").read_text())
    msg = status["stages"][0]["message"]
    assert "curriculum[0].maxLength=64 is below the prompt length" in msg


RUNNER = "import tests.training.fakes as f; f.install(); from codeground.pipeline.cli import main; raise SystemExit(main(sys.argv[1:]))"


@pytest.mark.slow
def test_kill_mid_grpo_then_resume_continues(tmp_path, tiny_model):
    doc = grpo_spec(str(tiny_model), phases=[{"steps": 6, "maxLength": 540, "maxToolCalls": 1}], checkpointEvery=2)
    spec_file, out = _write(tmp_path, doc), tmp_path / "store"
    env = dict(os.environ, CODEGROUND_WORKDIR=str(tmp_path / "work"), CODEGROUND_SANDBOX_URL="http://127.0.0.1:9",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "import sys; " + RUNNER, "run", str(spec_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "work" / "rl" / "grpo" / "checkpoints" / "grpo" / "phase-0" / "checkpoint-2" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-phase: 2 of 6 steps done
    proc.wait()
    assert not (out / "rl" / "grpo" / "manifest.json").exists()  # the stage never committed
    resumed = subprocess.run([*cmd, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = [json.loads(x) for x in (out / "rl" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5, 6]  # steps 1-2 kept, 3-6 after the resume
    assert "resuming phase 0 from" in resumed.stderr
