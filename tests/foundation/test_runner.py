"""`codeground run` with stages the test registers: order, artifacts, lineage, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from codeground.pipeline import stagekit
from codeground.pipeline.cli import main
from codeground.pipeline.lineage import trace
from codeground.pipeline.stagekit import StageContext, StageResult

SPEC = {
    "apiVersion": "codeground.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "toy"},
    "spec": {
        "model": {"name": "tiny"},
        "datasets": [{"name": "train", "source": "builtin:arith_train"}],
        "stages": [
            {"name": "first", "type": "sft"},
            {"name": "second", "type": "sft", "sft": {"epochs": 1}},
        ],
    },
}


@pytest.fixture()
def calls(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEGROUND_WORKDIR", str(tmp_path / "work"))
    log: list[str] = []

    def fake_sft(ctx: StageContext) -> StageResult:
        log.append(ctx.stage.name)
        if ctx.stage.name == "second" and (tmp_path / "fail-second").exists():
            raise RuntimeError("boom")
        source, ref = ctx.model_source()
        (ctx.out_dir / "model").mkdir(exist_ok=True)
        (ctx.out_dir / "model" / "weights.txt").write_text(f"{ctx.stage.name} from {source}:{Path(ref.name).name}")
        ctx.progress.update(1, 1, loss=0.25)
        return StageResult(metrics={"loss": 0.25, "epochs": ctx.params.epochs}, outputs={"model": "model"})

    with stagekit.override("sft", fake_sft):
        yield log


def write_spec(tmp_path, doc=SPEC) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


def test_run_orders_stages_and_chains_artifacts(tmp_path, calls, capsys):
    out = tmp_path / "store"
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out)]) == 0
    assert calls == ["first", "second"]
    status = json.loads((out / "toy" / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert [s["phase"] for s in status["stages"]] == ["Succeeded", "Succeeded"]
    assert status["stages"][1]["metrics"] == {"loss": 0.25, "epochs": 1.0}
    assert status["stages"][0]["artifactURI"] == str(out / "toy" / "first" / "manifest.json")
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in status["conditions"])
    # the second stage started from the first stage's model, fetched through the store
    assert (out / "toy" / "second" / "model" / "weights.txt").read_text() == "second from artifact:model"
    chain = trace(str(out / "toy" / "second" / "manifest.json"))
    assert [e.manifest.stage for e in chain] == ["second", "first"]
    assert chain[1].verified
    assert main(["lineage", str(out / "toy" / "second")]) == 0
    assert "first (sft)" in capsys.readouterr().out


def test_resume_skips_complete_stages(tmp_path, calls):
    out = tmp_path / "store"
    (tmp_path / "fail-second").touch()
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out)]) == 1
    status = json.loads((out / "toy" / "status.json").read_text())
    assert status["phase"] == "Failed" and status["stages"][1]["phase"] == "Failed"
    assert "boom" in status["stages"][1]["message"]
    (tmp_path / "fail-second").unlink()
    calls.clear()
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out), "--resume"]) == 0
    assert calls == ["second"]
    status = json.loads((out / "toy" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["stages"][1]["attempts"] == 2


def test_single_stage_needs_its_upstream(tmp_path, calls, capsys):
    out = tmp_path / "store"
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out), "--stage", "second"]) == 1
    assert calls == []
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out), "--stage", "nope"]) == 2
    assert "--stage: no stage named 'nope'" in capsys.readouterr().err


def test_tampered_upstream_manifest_breaks_lineage(tmp_path, calls):
    out = tmp_path / "store"
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out)]) == 0
    first = out / "toy" / "first" / "manifest.json"
    first.write_text(first.read_text().replace('"loss": 0.25', '"loss": 0.01'))
    with pytest.raises(Exception, match="sha256"):
        trace(str(out / "toy" / "second" / "manifest.json"))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"spec: [", "invalid YAML"),
        (b"\xff\xfe", "not UTF-8"),
        (yaml.safe_dump({**SPEC, "spec": {**SPEC["spec"], "stages": [{"name": "a", "type": "sft"}, {"name": "a", "type": "sft"}]}}).encode(),
         "spec.stages: stage names must be unique"),
        (yaml.safe_dump({**SPEC, "spec": {**SPEC["spec"], "stages": [{"name": "a", "type": "sft", "sft": {"epochs": 0}}]}}).encode(),
         "spec.stages[0].sft.epochs"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, calls, capsys, content, words):
    f = tmp_path / "bad.yaml"
    f.write_bytes(content)
    out = tmp_path / "store"
    assert main(["run", str(f), "--out", str(out)]) == 2
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(f) in err and "Traceback" not in err
    assert not out.exists() and calls == []


def test_validate_accepts_examples(capsys):
    root = Path(__file__).resolve().parents[2]
    files = sorted(str(p) for p in (root / "examples").glob("*.yaml"))
    assert main(["validate", *files]) == 0
    assert "is valid" in capsys.readouterr().out


def test_crds_check_passes_on_committed_files():
    assert main(["crds", "--check"]) == 0
