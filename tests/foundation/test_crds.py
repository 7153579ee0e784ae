"""The committed CRDs are generated from the API models, structural, and carry the CEL rules."""

from __future__ import annotations

from pathlib import Path

import yaml

from codeground.pipeline import spec as api
from codeground.pipeline.crdgen import render_crds

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_are_not_stale():
    for name, text in render_crds().items():
        committed = ROOT / "crds" / name
        assert committed.exists(), f"{committed} missing: run `codeground crds`"
        assert committed.read_text() == text, f"{committed} is stale: run `codeground crds`"
        chart_copy = ROOT / "charts" / "codeground" / "crds" / name
        if chart_copy.parent.exists():
            assert chart_copy.read_text() == text, f"{chart_copy} is stale: run `codeground crds`"


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schemas_are_structural():
    for text in render_crds().values():
        crd = yaml.safe_load(text)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            if not isinstance(node, dict):
                continue
            assert "$ref" not in node and "title" not in node and "const" not in node, path
            assert node.get("additionalProperties") is not False, path
            if "anyOf" in node:
                assert node.get("x-kubernetes-int-or-string") is True, path
                assert [o.get("type") for o in node["anyOf"]] == ["integer", "string"], path
            if path.endswith(".properties") or "x-kubernetes-int-or-string" in node:
                continue
            if isinstance(node.get("type"), str) or "x-kubernetes-int-or-string" in node:
                continue
            if any(k in node for k in ("properties", "items")):
                raise AssertionError(f"{path} has children but no type")


def test_crd_carries_rules_printer_columns_and_subresources():
    crds = {yaml.safe_load(t)["spec"]["names"]["kind"]: yaml.safe_load(t) for t in render_crds().values()}
    tr = crds["TrainingRun"]["spec"]["versions"][0]
    cols = [c["name"] for c in tr["additionalPrinterColumns"]]
    assert cols[:3] == ["Stage", "Phase", "Progress"] and cols[-1] == "Age"
    rules = [r["rule"] for _, n in _walk(tr["schema"]) if isinstance(n, dict) for r in n.get("x-kubernetes-validations", [])]
    for model in (api.TrainingRunSpec, api.StageSpec, api.GRPOParams, api.TeacherSpec, api.TrainingRun):
        for rule in model.rules:
            assert rule.cel in rules
    sbx = crds["Sandbox"]["spec"]["versions"][0]
    assert sbx["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert [c["name"] for c in sbx["additionalPrinterColumns"]] == ["Ready", "Replicas", "Runtime", "Age"]
    spec = sbx["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["runtimeClassName"]["default"] == "gvisor" and spec["limits"]["default"] == {}
