"""A shortened examples/quickstart.yaml end to end: stage order, artifacts, masks, the run report.

The spec is the real file with the model swapped for the tiny random one and every size cut down.
A random model solves nothing, so the distill stage is replaced by one that writes hand-made
trajectories (the real distill stage has its own tests); evaluate, sft and grpo are the real stages,
with code running in the real sandbox service (gVisor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from codeground.pipeline import stagekit
from codeground.pipeline.cli import main
from codeground.pipeline.stagekit import StageContext, StageResult

from .conftest import MARK, hand_trajectories, write_trajectories

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def shortened(model: str) -> dict:
    doc = yaml.safe_load(QUICKSTART.read_text())
    spec = doc["spec"]
    spec["model"]["name"] = spec["teacher"]["model"]["name"] = model
    for d in spec["datasets"]:
        d["limit"] = 4
    for st in spec["stages"]:
        if st["type"] == "evaluate":
            st["evaluate"].update(maxTokens=24, maxToolCalls=1)
        if st["type"] == "sft":
            st["sft"].update(batchSize=4, microBatchSize=2, epochs=1)
        if st["type"] == "grpo":
            st["grpo"].update(numGenerations=2, promptsPerStep=2, checkpointEvery=1)
            for ph in st["grpo"]["curriculum"]:
                ph["steps"] = 1
    return doc


@pytest.mark.slow
@pytest.mark.sandbox
def test_shortened_quickstart(tmp_path, tiny_model, monkeypatch, chatml_tokenizer):
    monkeypatch.setenv("CODEGROUND_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("CODEGROUND_SANDBOX_URL", raising=False)

    def distill(ctx: StageContext) -> StageResult:
        write_trajectories(ctx.out_dir / "trajectories.jsonl", hand_trajectories(8))
        return StageResult(metrics={"kept": 8}, outputs={"trajectories": "trajectories.jsonl"})

    doc = shortened(str(tiny_model))
    f = tmp_path / "quickstart.yaml"
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "runs"
    with stagekit.override("distill", distill):
        assert main(["run", str(f), "--out", str(out)]) == 0
    status = json.loads((out / "quickstart" / "status.json").read_text())
    names = [s["name"] for s in doc["spec"]["stages"]]
    assert names[0] == "evaluate-base" and names[-1] == "evaluate"
    assert [s["name"] for s in status["stages"]] == names and {s["phase"] for s in status["stages"]} == {"Succeeded"}
    run = out / "quickstart"
    for st in doc["spec"]["stages"]:
        manifest = json.loads((run / st["name"] / "manifest.json").read_text())
        assert [i["stage"] for i in manifest["inputs"]] == names[: names.index(st["name"])]  # lineage in order
        if st["type"] in ("sft", "grpo"):
            assert (run / st["name"] / "model" / "config.json").exists()
            assert (run / st["name"] / "metrics.jsonl").read_text().strip()
        if st["type"] == "evaluate":
            assert (run / st["name"] / "report.html").exists()
    # evaluate-sft scored the sft model, evaluate the grpo model
    sft_eval = json.loads((run / "evaluate-sft" / "metrics.json").read_text())
    assert sft_eval["model_origin"] == "artifact" and "sft" in sft_eval["model"]
    # masks: what sft trained on contains no interpreter text
    from codeground.pipeline.rollout.trajectory import read_jsonl
    from codeground.pipeline.stages.sft import build_dataset

    ds, _ = build_dataset(chatml_tokenizer, read_jsonl(run / "distill" / "trajectories.jsonl"), 1024)
    for row in ds:
        trained = chatml_tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
        assert MARK not in trained
    rows = [json.loads(x) for x in (run / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0 < r["model_tokens"] <= r["response_tokens"] for r in rows)
    from codeground.pipeline.stages.runreport import build
    from codeground.pipeline.store import open_store

    build(open_store(str(out)), "quickstart")
    report = (run / "report.html").read_text()
    assert "Reward per step" in report and "Tool calls per problem" in report and "evaluate-base" in report
