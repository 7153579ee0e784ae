"""The sft stage: loss only on model tokens (golden per chat template), training, checkpoints, resume, bad input."""

from __future__ import annotations

import copy
import json
import os

import pytest
import yaml

from codeground.pipeline import stagekit
from codeground.pipeline.cli import main
from codeground.pipeline.errors import StageError
from codeground.pipeline.stagekit import StageContext, StageResult

from .conftest import LLAMA3_TEMPLATE, MARK, hand_trajectories, write_trajectories

TEMPLATES = ["chatml", "llama3"]


def _tokenizer(base, name):
    tok = copy.deepcopy(base)
    if name == "llama3":
        tok.chat_template = LLAMA3_TEMPLATE
        tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    return tok


@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_loss_mask_covers_only_model_tokens(chatml_tokenizer, template):
    from codeground.pipeline.stages.sft import build_dataset

    tok = _tokenizer(chatml_tokenizer, template)
    trajs = hand_trajectories(3)
    ds, counts = build_dataset(tok, trajs, max_length=4096)
    assert counts["examples"] == 3
    for row, traj in zip(ds, trajs, strict=True):
        trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
        masked = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == -100])
        assert MARK not in trained and "```output" not in trained
        assert MARK in masked and traj.prompt[-1]["content"] in masked
        model_text = traj.model_text()
        end = "<|im_end|>" if template == "chatml" else "<|eot_id|>"
        assert trained == model_text + end  # exactly the model's own text, then the turn end it must learn


def test_sequences_over_max_length_are_dropped(chatml_tokenizer):
    from codeground.pipeline.stages.sft import build_dataset

    trajs = hand_trajectories(2)
    trajs[1].segments[0].text += "padding " * 300
    _, counts = build_dataset(chatml_tokenizer, trajs, max_length=200)
    assert counts == {"dropped_too_long": 1, "dropped_empty": 0, "examples": 1}
    with pytest.raises(StageError, match="maxLength"):
        build_dataset(chatml_tokenizer, trajs[1:], max_length=200)


def spec(model: str, **sft) -> dict:
    return {
        "apiVersion": "codeground.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "sftt"},
        "spec": {
            "model": {"name": model},
            "teacher": {"model": {"name": model}},
            "datasets": [{"name": "train", "source": "builtin:arith_train"}],
            "seed": 3,
            "stages": [
                {"name": "distill", "type": "distill", "distill": {"dataset": "train"}},
                {"name": "sft", "type": "sft", "sft": {"learningRate": 1e-3, "batchSize": 4, "microBatchSize": 2,
                                                        "epochs": 2, "maxLength": 512, **sft}},
            ],
        },
    }


@pytest.fixture()
def fake_distill(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEGROUND_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("CODEGROUND_SANDBOX_URL", "http://127.0.0.1:9")  # the fake distill runs no code
    state = {"n": 8}

    def distill(ctx: StageContext) -> StageResult:
        write_trajectories(ctx.out_dir / "trajectories.jsonl", hand_trajectories(state["n"]))
        return StageResult(metrics={"kept": state["n"]}, outputs={"trajectories": "trajectories.jsonl"})

    with stagekit.override("distill", distill):
        yield state


def _run(tmp_path, doc, *extra) -> dict:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(doc))
    main(["run", str(f), "--out", str(tmp_path / "store"), *extra])
    return json.loads((tmp_path / "store" / "sftt" / "status.json").read_text())


@pytest.mark.slow
def test_sft_trains_saves_plain_model_and_checkpoints(tmp_path, tiny_model, fake_distill):
    status = _run(tmp_path, spec(str(tiny_model)))
    assert status["phase"] == "Succeeded", status
    m = status["stages"][1]["metrics"]
    assert m["steps"] == 4 and m["examples"] == 8  # 8 examples / batch 4 × 2 epochs
    assert m["final_loss"] < m["first_loss"]
    out = tmp_path / "store" / "sftt" / "sft"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")  # a plain checkpoint
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    mirrored = [p for p in (out / "checkpoints").rglob("COMPLETE")]
    assert [p.parent.name for p in mirrored] == ["checkpoint-4"]  # newest checkpoint kept in the store


@pytest.mark.slow
def test_sft_resume_continues_from_last_complete_checkpoint(tmp_path, tiny_model, fake_distill, monkeypatch):
    from transformers import Trainer

    real = Trainer._save_checkpoint
    calls = {"n": 0}

    def flaky(self, model, trial):
        calls["n"] += 1
        if calls["n"] == 3:  # disk fills up while writing the third checkpoint
            real(self, model, trial)
            raise OSError(28, os.strerror(28))
        return real(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", flaky)
    doc = spec(str(tiny_model), epochs=4)  # 8 steps, a checkpoint every 2
    status = _run(tmp_path, doc)
    st = status["stages"][1]
    assert st["phase"] == "Failed"
    assert "out of disk space" in st["message"] and "checkpoint-4 is intact" in st["message"]
    monkeypatch.setattr(Trainer, "_save_checkpoint", real)
    status = _run(tmp_path, doc, "--resume")
    assert status["phase"] == "Succeeded", status
    rows = [json.loads(x) for x in (tmp_path / "store" / "sftt" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8]  # 5 and 6 redone after the resume, logged once


def test_zero_kept_trajectories_is_a_clear_error(tmp_path, tiny_model, fake_distill):
    fake_distill["n"] = 0
    status = _run(tmp_path, spec(str(tiny_model)))
    assert "kept zero trajectories" in status["stages"][1]["message"]


def test_missing_model_and_missing_chat_template(tmp_path, tiny_model, fake_distill):
    status = _run(tmp_path, spec(str(tmp_path / "nope")))
    assert "does not exist" in status["stages"][1]["message"]
    bare = tmp_path / "bare"
    import shutil

    shutil.copytree(tiny_model, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in bare.glob("chat_template.*"):
        extra.unlink()
    status = _run(tmp_path, spec(str(bare)))
    assert "no chat template" in status["stages"][1]["message"], status["stages"][1]["message"]


def test_checkpoints_from_another_spec_or_input_are_not_resumed(tmp_path):
    from codeground.pipeline.stages import trainutil as tu

    for step, stamp in ((2, "old"), (4, "new"), (6, None)):
        c = tmp_path / f"checkpoint-{step}"
        c.mkdir()
        if stamp:
            (c / tu.FINGERPRINT).write_text(stamp + "\n")
            (c / tu.COMPLETE).write_text("ok\n")
    tu.remove_incomplete(tmp_path, "new")
    assert [p.name for p in tu.complete_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert not (tmp_path / "checkpoint-6").exists()


def test_student_prompt_replaces_the_teachers_and_keeps_the_solution(chatml_tokenizer):
    from codeground.pipeline.rollout.prompts import build_messages
    from codeground.pipeline.spec import SFTParams
    from codeground.pipeline.stages.sft import build_dataset, reprompt, student_prompt

    default = SFTParams()
    assert student_prompt(default.shots, default.template) is None  # default: train on the teacher's prompt
    assert student_prompt(0, None) == (0, None)
    assert student_prompt(None, "thinc") == (3, "thinc")
    teacher = hand_trajectories(2)
    student = reprompt(teacher, 1, None)
    assert student[0].prompt == build_messages(teacher[0].problem, 1) != teacher[0].prompt
    assert [s.segments for s in student] == [t.segments for t in teacher]
    # the labels (model tokens) are the same; only the unlabelled prompt changed
    ds_t, _ = build_dataset(chatml_tokenizer, teacher, 4096)
    ds_s, _ = build_dataset(chatml_tokenizer, student, 4096)
    trained = lambda row: [x for x in row["labels"] if x != -100]  # noqa: E731
    assert trained(ds_t[0]) == trained(ds_s[0]) and len(ds_s[0]["input_ids"]) != len(ds_t[0]["input_ids"])
    teacher[1].problem = ""
    with pytest.raises(StageError, match="have none"):
        reprompt(teacher, 1, None)


def test_grpo_prompts_like_the_sft_student(tmp_path):
    from types import SimpleNamespace

    from codeground.pipeline.stages.grpo import prompt_format

    def ctx(**by_type):
        manifests = {t: SimpleNamespace(type=t, parameters=p) for t, p in by_type.items()}
        return SimpleNamespace(latest=lambda *types: next((m for t, m in manifests.items() if t in types), None))

    assert prompt_format(ctx()) == (3, None)
    assert prompt_format(ctx(distill={"shots": 7, "template": "thinc"})) == (7, "thinc")
    sft_plain = {"shots": None, "template": None}
    assert prompt_format(ctx(distill={"shots": 7, "template": "thinc"}, sft=sft_plain)) == (7, "thinc")
    assert prompt_format(ctx(distill={"shots": 7, "template": "thinc"},
                             sft={"shots": 3, "template": None})) == (3, None)
