"""The generated CRDs in a real kube-apiserver: they load, default like the models, and the API
server and `codeground validate` refuse the same bad documents at the same field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from codeground.pipeline.errors import SpecError
from codeground.pipeline.specio import parse_object

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
RECIPE = yaml.safe_load((ROOT / "examples" / "thinc-recipe.yaml").read_text())


@pytest.fixture(scope="module")
def crds(kube_cluster):
    kube_cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for name in ("trainingruns.codeground.dev", "sandboxes.codeground.dev"):
        kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return kube_cluster


def _apply(cluster, ns, doc):
    return cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc), check=False)


def test_examples_apply_and_get_defaults(crds, kube_namespace):
    for f in ("thinc-recipe.yaml", "sandbox.yaml"):
        crds.kubectl("apply", "-n", kube_namespace, "-f", str(ROOT / "examples" / f))
    got = json.loads(crds.kubectl("get", "trainingrun", "thinc-qwen3-4b", "-n", kube_namespace, "-o", "json").stdout)
    local = parse_object(RECIPE)
    # the API server applied the same defaults the Python models apply
    assert got["spec"]["stages"][0]["distill"]["temperature"] == local.spec.stages[0].distill.temperature
    assert got["spec"]["stages"][1]["sft"]["warmupRatio"] == local.spec.stages[1].sft.warmup_ratio
    assert got["spec"]["sandbox"] == {"name": "interpreter"}
    assert "teacher" in got["spec"] and "endpoint" not in got["spec"]["teacher"]
    sbx = json.loads(crds.kubectl("get", "sandbox", "interpreter", "-n", kube_namespace, "-o", "json").stdout)
    assert sbx["spec"]["limits"]["timeoutSeconds"] == 10
    header = crds.kubectl("get", "trainingruns", "-n", kube_namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "STAGE", "PHASE", "PROGRESS", "REWARD", "AGE"]
    header = crds.kubectl("get", "sandboxes", "-n", kube_namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "REPLICAS", "RUNTIME", "AGE"]
    explain = crds.kubectl("explain", "trainingrun.spec.stages.grpo.curriculum").stdout
    assert "dropSolved" in explain and "Drop prompts solved" in explain


def _bad(fn):
    doc = copy.deepcopy(RECIPE)
    fn(doc)
    return doc


BAD = [
    ("unique stage names", lambda d: d["spec"]["stages"][3].update(name="distill"), "spec.stages", "stage names must be unique"),
    ("teacher required", lambda d: d["spec"].pop("teacher"), "spec.teacher", "distill stage needs spec.teacher"),
    ("undeclared dataset", lambda d: d["spec"]["stages"][3]["evaluate"].update(benchmarks=["hmmt"]), "spec.stages", "declared in spec.datasets"),
    ("params of other type", lambda d: d["spec"]["stages"][1].update(evaluate={"benchmarks": ["aime24"]}), "spec.stages[1].evaluate", "only allowed"),
    ("missing grpo params", lambda d: d["spec"]["stages"][2].pop("grpo"), "spec.stages[2].grpo", "needs its grpo parameters"),
    ("endpoint and vllm", lambda d: d["spec"]["teacher"].update(endpoint="http://t/v1"), "spec.teacher.endpoint", "either endpoint or vllm"),
    ("bad enum", lambda d: d["spec"]["stages"][1]["sft"].update(scheduler="step"), "spec.stages[1].sft.scheduler", ""),
    ("below minimum", lambda d: d["spec"]["stages"][2]["grpo"].update(numGenerations=1), "spec.stages[2].grpo.numGenerations", ""),
    ("zero lr", lambda d: d["spec"]["stages"][1]["sft"].update(learningRate=0), "spec.stages[1].sft.learningRate", ""),
    ("long run name", lambda d: d["metadata"].update(name="r" * 41), "metadata.name", "more than 40 bytes"),
    ("bad quantity", lambda d: d["spec"]["stages"][0]["resources"].update(memory="lots"), "spec.stages[0].resources.memory", ""),
    ("micro batch", lambda d: d["spec"]["stages"][1]["sft"].update(batchSize=10, microBatchSize=4), "spec.stages[1].sft.batchSize", "multiple"),
    ("unknown template", lambda d: d["spec"]["stages"][1]["sft"].update(template="arith_teacher"), "spec.stages[1].sft.template", "pipeline/templates"),
]


@pytest.mark.parametrize(("name", "change", "path", "words"), BAD, ids=[b[0] for b in BAD])
def test_server_and_validator_refuse_the_same_documents(crds, kube_namespace, name, change, path, words):
    doc = _bad(change)
    with pytest.raises(SpecError) as info:
        parse_object(doc)
    assert any(p == path and words in m for p, m in info.value.errors), info.value.errors
    result = _apply(crds, kube_namespace, doc)
    assert result.returncode != 0, f"API server accepted: {name}"
    assert path in result.stderr and words in result.stderr, result.stderr


def test_unknown_field_is_refused_by_both(crds, kube_namespace):
    doc = _bad(lambda d: d["spec"]["stages"][1]["sft"].update(learningrate=1e-5))
    with pytest.raises(SpecError, match="unknown field"):
        parse_object(doc)
    result = _apply(crds, kube_namespace, doc)  # kubectl's default --validate=strict
    assert result.returncode != 0 and "learningrate" in result.stderr


def test_scale_subresource(crds, kube_namespace):
    crds.kubectl("apply", "-n", kube_namespace, "-f", str(ROOT / "examples" / "sandbox.yaml"))
    crds.kubectl("scale", "sandbox/interpreter", "-n", kube_namespace, "--replicas=5")
    got = json.loads(crds.kubectl("get", "sandbox", "interpreter", "-n", kube_namespace, "-o", "json").stdout)
    assert got["spec"]["replicas"] == 5
