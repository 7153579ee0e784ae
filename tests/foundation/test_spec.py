"""The API models and the validator: good examples pass, every kind of bad input is refused by field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from codeground.pipeline import spec as api
from codeground.pipeline.errors import SpecError
from codeground.pipeline.specio import load_file, parse_documents, parse_object

ROOT = Path(__file__).resolve().parents[2]
RECIPE = yaml.safe_load((ROOT / "examples" / "thinc-recipe.yaml").read_text())


def errors_of(doc: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_object(doc)
    return info.value.errors


def mutate(fn) -> dict:
    doc = copy.deepcopy(RECIPE)
    fn(doc)
    return doc


def test_recipe_example_is_the_thinc_recipe():
    run = parse_object(RECIPE)
    assert isinstance(run, api.TrainingRun)
    distill, sft, grpo, evaluate = run.spec.stages
    assert distill.distill.shots == 3 and distill.distill.filters.min_code_blocks == 3
    assert distill.distill.filters.max_natural_language_fraction == 0.5
    assert (sft.sft.learning_rate, sft.sft.scheduler, sft.sft.batch_size, sft.sft.epochs, sft.sft.max_length) == (
        7e-6, "cosine", 16, 3, 32768)
    assert [(p.steps, p.max_length, p.max_tool_calls) for p in grpo.grpo.curriculum] == [
        (280, 16384, 20), (120, 16384, 20), (400, 32768, 40)]
    assert grpo.grpo.kl_coefficient == 0 and grpo.grpo.entropy_coefficient == 0
    assert evaluate.evaluate.samples == 16


def test_defaults_are_applied_like_the_api_server():
    run = parse_object(mutate(lambda d: d["spec"]["stages"][1].pop("sft")))
    assert run.spec.stages[1].params().learning_rate == 7e-6  # sft parameters all default
    assert run.spec.stages[0].resources.nodes == 1
    assert run.spec.backoff_limit == 2


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (lambda d: d["spec"].update(bogus=1), "spec.bogus", "unknown field"),
        (lambda d: d["spec"]["stages"][1]["sft"].update(learningRate=-1), "spec.stages[1].sft.learningRate", "greater than 0"),
        (lambda d: d["spec"]["stages"][1]["sft"].update(batchSize="big"), "spec.stages[1].sft.batchSize", "integer"),
        (lambda d: d["spec"].update(deterministic="sometimes"), "spec.deterministic", "boolean"),
        (lambda d: d["spec"]["stages"][0].update(type="pretrain"), "spec.stages[0].type", "distill"),
        (lambda d: d["spec"]["stages"][2]["grpo"].update(numGenerations=0), "spec.stages[2].grpo.numGenerations", "greater than or equal to 2"),
        (lambda d: d["spec"]["stages"][3].update(name="distill"), "spec.stages", "unique"),
        (lambda d: d["spec"]["datasets"].append({"name": "dapo", "source": "x.jsonl"}), "spec.datasets", "unique"),
        (lambda d: d["spec"].pop("teacher"), "spec.teacher", "distill stage needs spec.teacher"),
        (lambda d: d["spec"]["stages"][3]["evaluate"].update(benchmarks=["hmmt"]), "spec.stages", "declared in spec.datasets"),
        (lambda d: d["spec"]["stages"][1].update(grpo={"dataset": "dapo", "curriculum": [{"steps": 1, "maxLength": 64, "maxToolCalls": 1}]}),
         "spec.stages[1].grpo", "only allowed on a stage of type grpo"),
        (lambda d: d["spec"]["stages"][2].pop("grpo"), "spec.stages[2].grpo", "needs its grpo parameters"),
        (lambda d: d["spec"]["stages"][2]["grpo"]["curriculum"][0].update(dropSolved=True), "spec.stages[2].grpo.curriculum[0].dropSolved", "first phase"),
        (lambda d: d["spec"]["stages"][2]["grpo"].update(curriculum=[]), "spec.stages[2].grpo.curriculum", "at least 1"),
        (lambda d: d["spec"]["stages"][0]["resources"].update(memory="lots"), "spec.stages[0].resources.memory", "quantity"),
        (lambda d: d["spec"]["stages"][0]["resources"].update(gpus=-1), "spec.stages[0].resources.gpus", "greater than or equal to 0"),
        (lambda d: d["spec"]["teacher"].update(endpoint="http://x/v1"), "spec.teacher.endpoint", "either endpoint or vllm"),
        (lambda d: d["metadata"].update(name="x" * 41), "metadata.name", "more than 40 bytes"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "metadata.name", "pattern"),
        (lambda d: d["spec"]["stages"][0].update(name="Distill!"), "spec.stages[0].name", "pattern"),
        (lambda d: d["spec"]["model"].update(name="x" * 100_000), "spec.model.name", "at most 1024"),
        (lambda d: d.update(kind="Pod"), "kind", "TrainingRun"),
        (lambda d: d.update(apiVersion="v1"), "apiVersion", "codeground.dev/v1alpha1"),
        (lambda d: d["spec"]["stages"][1]["sft"].update(batchSize=10, microBatchSize=4), "spec.stages[1].sft.batchSize", "multiple"),
        (lambda d: d["spec"]["stages"][1]["sft"].update(template="arith_teacher"), "spec.stages[1].sft.template",
         "one of code_reasoning, thinc"),
        (lambda d: d["spec"]["stages"][0]["distill"].update(template="thnic"), "spec.stages[0].distill.template",
         "or a path to a .md file"),
        (lambda d: d["spec"]["stages"][3]["evaluate"].update(template="nope"), "spec.stages[3].evaluate.template",
         "one of code_reasoning"),
    ],
)
def test_bad_fields_are_named(change, path, words):
    errs = errors_of(mutate(change))
    assert any(p == path and words.lower() in m.lower() for p, m in errs), errs


def test_builtin_template_names_and_md_paths_are_accepted():
    def change(d):
        d["spec"]["stages"][0]["distill"]["template"] = "thinc"
        d["spec"]["stages"][1]["sft"]["template"] = "prompts/mine.md"

    run = parse_object(mutate(change))
    assert run.spec.stages[0].distill.template == "thinc" and run.spec.stages[1].sft.template == "prompts/mine.md"
    assert set(api.BUILTIN_TEMPLATES) >= {"code_reasoning", "thinc"}


def test_every_error_is_reported_at_once():
    def two(d):
        d["spec"]["stages"][1]["sft"]["learningRate"] = 0
        d["spec"]["stages"][2]["grpo"]["numGenerations"] = 1
    paths = {p for p, _ in errors_of(mutate(two))}
    assert {"spec.stages[1].sft.learningRate", "spec.stages[2].grpo.numGenerations"} <= paths


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"spec: [unclosed", "invalid YAML: line 1"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"a: &x [1, 2]\nb: *x\n", "anchors"),
        (b"- just\n- a list\n", "expected a mapping"),
        (b"", "no YAML document"),
    ],
)
def test_hostile_files_are_refused_before_parsing(raw, words):
    with pytest.raises(SpecError) as info:
        parse_documents(raw, "f.yaml")
    assert words in str(info.value) and "f.yaml" in str(info.value)


def test_alias_bomb_is_refused_quickly():
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(SpecError, match="anchors"):
        parse_documents(bomb.encode(), "bomb.yaml")


def test_huge_file_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: '" + b"x" * (100 << 20) + b"'\n")
    with pytest.raises(SpecError, match="at most"):
        load_file(big)


def test_multi_document_file_reports_the_document(tmp_path):
    f = tmp_path / "two.yaml"
    sbx = {"apiVersion": api.API_VERSION, "kind": "Sandbox", "metadata": {"name": "s"}, "spec": {"replicas": 5, "maxReplicas": 2}}
    f.write_text(yaml.safe_dump_all([RECIPE, sbx]))
    with pytest.raises(SpecError) as info:
        load_file(f)
    assert info.value.errors == [("document 2: spec.replicas", "replicas must not exceed maxReplicas")]


def test_every_field_has_a_description():
    def walk(model: type[api.ApiModel], path: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if name in ("api_version", "kind", "metadata", "spec", "status"):
                continue
            if not field.description:
                missing.append(f"{path}.{name}")
            for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
                for sub in [arg, *getattr(arg, "__args__", ())]:
                    if isinstance(sub, type) and issubclass(sub, api.ApiModel):
                        missing += walk(sub, f"{path}.{name}")
        return missing

    assert walk(api.TrainingRunSpec, "spec") + walk(api.SandboxSpec, "spec") + walk(api.TrainingRunStatus, "status") == []
