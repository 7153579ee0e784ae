"""End to end on CPU: `codeground run` of distill + evaluate with SmolLM2-135M and the real gVisor sandbox.

Also: the engine against the real sandbox with a real model, and against a dead sandbox (every sample
dropped with a recorded reason, the run goes on). Marked ``sandbox`` and ``slow``: ~1-3 minutes on 2 idle cores.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from codeground.pipeline import specio
from codeground.pipeline.rollout.trajectory import read_jsonl
from codeground.pipeline.runner import open_run_store, run_pipeline

from .conftest import ScriptedGenerator

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def require_runsc() -> None:
    if shutil.which("runsc") is None:
        if os.environ.get("CODEGROUND_REQUIRE_RUNSC") == "1":
            pytest.fail("runsc is not installed (hack/install-runsc.sh)")
        pytest.skip("runsc is not installed (hack/install-runsc.sh)")


def spec_doc(gguf: Path) -> dict:
    model = {"name": str(gguf.parent), "ggufFile": gguf.name}
    return {
        "apiVersion": "codeground.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "rollout-e2e"},
        "spec": {
            "model": model,
            "teacher": {"model": model},
            "datasets": [{"name": "train", "source": "builtin:arith_level1", "limit": 2},
                         {"name": "test", "source": "builtin:arith_test", "limit": 2}],
            "sandbox": {"limits": {"timeoutSeconds": 5, "maxSessions": 8}},
            "stages": [
                {"name": "distill", "type": "distill", "distill": {
                    "dataset": "train", "samplesPerProblem": 2, "maxToolCalls": 2, "maxTokens": 80, "temperature": 0.7,
                    "filters": {"minCodeBlocks": 1, "maxNaturalLanguageFraction": 0.95, "requireCorrect": False}}},
                {"name": "eval", "type": "evaluate", "evaluate": {
                    "benchmarks": ["test"], "samples": 2, "temperature": 0.6, "maxToolCalls": 2, "maxTokens": 80}},
            ],
            "seed": 3,
        },
    }


def test_distill_and_evaluate_through_the_runner(tmp_path, monkeypatch):
    require_runsc()
    from codeground.pipeline.rollout.models import smollm2_path

    monkeypatch.delenv("CODEGROUND_SANDBOX_URL", raising=False)
    monkeypatch.setenv("CODEGROUND_NO_PROGRESS", "1")
    run = specio.parse_object(spec_doc(smollm2_path()))
    store = open_run_store(run, out=tmp_path / "runs")
    status = run_pipeline(run, store, work_root=tmp_path / "work")
    assert status.phase == "Succeeded", [s.message for s in status.stages]

    root = tmp_path / "runs" / "rollout-e2e"
    distill = json.loads((root / "distill" / "manifest.json").read_text())
    assert distill["outputs"] == {"trajectories": "trajectories.jsonl", "drops": "drops.json", "rejected": "rejected.jsonl"}
    drops = json.loads((root / "distill" / "drops.json").read_text())
    assert drops["total"] == 4 and drops["kept"] + drops["dropped"] == 4
    kept = read_jsonl(root / "distill" / "trajectories.jsonl")
    assert len(kept) == drops["kept"] == distill["metrics"]["kept"]
    for t in kept:  # what the filters promise
        assert t.stop_reason == "answer" and t.tool_calls >= 1
        assert all(s.status in ("ok", "output_truncated") for s in t.segments if s.role == "interpreter")

    ev = json.loads((root / "eval" / "manifest.json").read_text())
    assert {"metrics", "report", "trajectories"} <= set(ev["outputs"])
    assert 0.0 <= ev["metrics"]["accuracy"] <= 1.0 and "test.pass@2" in ev["metrics"]
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    assert doc["benchmarks"]["test"]["problems"] == 2 and doc["benchmarks"]["test"]["samples"] == 4
    report = (root / "eval" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3
    trajs = read_jsonl(root / "eval" / "trajectories.jsonl")
    assert len(trajs) == 4 and all(t.source == "test" for t in trajs)
    # the model writes code in this format and the real interpreter answers
    assert any(s.role == "interpreter" and s.status == "ok" for t in trajs for s in t.segments)


def test_deterministic_runs_repeat_exactly(tmp_path, monkeypatch):
    """spec.deterministic: the same spec and seed give the same samples (here sampled at T=0.8 with
    code running in the real sandbox), however the cells' timings fell in each run."""
    require_runsc()
    from codeground.pipeline.rollout.models import smollm2_path

    monkeypatch.delenv("CODEGROUND_SANDBOX_URL", raising=False)
    monkeypatch.setenv("CODEGROUND_NO_PROGRESS", "1")
    doc = spec_doc(smollm2_path())
    doc["spec"]["deterministic"] = True
    doc["spec"]["datasets"][1]["limit"] = 6
    doc["spec"]["stages"] = [{"name": "eval", "type": "evaluate", "evaluate": {
        "benchmarks": ["test"], "samples": 2, "temperature": 0.8, "maxToolCalls": 2, "maxTokens": 80}}]
    texts = []
    for attempt in range(2):
        run = specio.parse_object(doc)
        status = run_pipeline(run, open_run_store(run, out=tmp_path / f"runs{attempt}"), work_root=tmp_path / f"w{attempt}")
        assert status.phase == "Succeeded", [s.message for s in status.stages]
        trajs = read_jsonl(tmp_path / f"runs{attempt}" / "rollout-e2e" / "eval" / "trajectories.jsonl")
        texts.append([[(s.role, s.text) for s in t.segments] for t in trajs])
    assert len(texts[0]) == 12 and texts[0] == texts[1]
    assert any(role == "interpreter" for t in texts[0] for role, _ in t)  # code ran, so timings varied
    assert len({repr(t) for t in texts[0]}) > 6  # sampled: the two samples of a problem differ somewhere


def test_dead_sandbox_drops_samples_with_a_reason():
    from codeground.pipeline.rollout.engine import RolloutEngine
    from codeground.pipeline.sandbox.local import free_port

    def coder(problem, so_far):
        return "```python\nprint(1)\n```\n", "code"

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    eng = RolloutEngine(ScriptedGenerator(coder), url, max_tool_calls=2, max_tokens=64, shots=0, infra_retries=1)
    trajs = eng.run([{"id": "a", "problem": "q", "answer": "1"}], samples=2)
    assert [t.stop_reason for t in trajs] == ["infra_error", "infra_error"]
    assert all(t.infra_error and "sandbox failed 2 times" in t.infra_error for t in trajs)
    assert eng.stats.infra_drops == 2
