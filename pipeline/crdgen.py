"""Generate the CustomResourceDefinitions from the API models in :mod:`codeground.pipeline.spec`.

Called by ``codeground crds`` (which writes ``crds/*.yaml`` and the chart's copy) and by the test that
fails when the committed files are stale. Pydantic emits JSON Schema 2020-12; Kubernetes wants a
*structural* OpenAPI v3 schema, so this module inlines ``$ref``s, turns ``anyOf [X, null]`` into X,
rewrites numeric ``exclusiveMinimum`` into the boolean form, drops ``title`` and
``additionalProperties: false`` (the API server prunes and, with strict field validation, rejects
unknown fields itself), and attaches the cross-field :class:`~codeground.pipeline.spec.Rule`s as
``x-kubernetes-validations``.

It does not check the result against an API server: the cluster tests apply the files for real.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from . import spec as api

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "TrainingRun": [
        {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage", "description": "Current stage."},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Run phase."},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "description": "Progress of the current stage."},
        {"name": "Reward", "type": "number", "jsonPath": ".status.reward", "description": "Latest mean GRPO reward."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "Sandbox": [
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready replicas."},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired replicas."},
        {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtimeClassName", "description": "RuntimeClass."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}
SHORT_NAMES = {"TrainingRun": ["tr", "trun"], "Sandbox": ["sbx"]}



def _structural(node: Any, defs: dict[str, Any], in_spec: bool) -> Any:
    """Rewrite one pydantic schema node into a Kubernetes structural schema node."""
    if isinstance(node, list):
        return [_structural(n, defs, in_spec) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = target
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                rest.pop("default")
            merged = _structural(options[0], defs, in_spec)
            merged.update({k: v for k, v in rest.items() if k in ("description", "default")})
            # `X | None` fields stay absent when unset (no `default: {}`), so CEL's has() means "set".
            merged["x-codeground-optional"] = True
            node = merged
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(key), (int, float)) and not isinstance(node.get(key), bool):
            node[bound] = node.pop(key)
            node[key] = True
    rules = node.pop("x-codeground-rules", None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(v, defs, in_spec) for name, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf"):
            out[key] = _structural(value, defs, in_spec)
        else:
            out[key] = value
    if rules:
        out["x-kubernetes-validations"] = rules
    if out.get("type") == "object" and "properties" in out:
        required = set(out.get("required", []))
        for name, prop in out["properties"].items():
            is_object = prop.get("type") == "object" and "properties" in prop
            optional = prop.pop("x-codeground-optional", False)
            # Nested objects with defaults get `default: {}` so the API server fills their fields in.
            if in_spec and is_object and name not in required and "default" not in prop and not optional:
                prop["default"] = {}
    return out


def _attach_rules(model: type[api.ApiModel], defs: dict[str, Any], schema: dict[str, Any]) -> None:
    """Put each model's rules into its schema node, as CEL with the message and field path."""
    seen: set[type] = set()

    def visit(m: type[api.ApiModel]) -> None:
        if m in seen:
            return
        seen.add(m)
        node = schema if m is model else defs.get(m.__name__)
        if node is not None and m.rules:
            entries = []
            for rule in m.rules:
                entry: dict[str, Any] = {"rule": rule.cel, "message": rule.message}
                if rule.field and "[" not in rule.field:
                    entry["fieldPath"] = "." + rule.field
                entries.append(entry)
            node["x-codeground-rules"] = entries
        for field in m.model_fields.values():
            for sub in _model_types(field.annotation):
                visit(sub)

    visit(model)


def _model_types(annotation: Any) -> list[type[api.ApiModel]]:
    if isinstance(annotation, type) and issubclass(annotation, api.ApiModel):
        return [annotation]
    out: list[type[api.ApiModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_model_types(arg))
    return out


def openapi_schema(part: type[api.ApiModel], *, in_spec: bool) -> dict[str, Any]:
    raw = part.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    _attach_rules(part, defs, raw)
    return _structural(raw, defs, in_spec)


def build_crd(kind: type[api.ApiModel]) -> dict[str, Any]:
    """Return the CustomResourceDefinition of ``TrainingRun`` or ``Sandbox`` as a dict."""
    name = kind.kind_name  # type: ignore[attr-defined]
    plural = kind.plural  # type: ignore[attr-defined]
    spec_model = kind.model_fields["spec"].annotation
    status_model = _model_types(kind.model_fields["status"].annotation)[0]
    spec_schema = openapi_schema(spec_model, in_spec=True)  # type: ignore[arg-type]
    spec_schema["description"] = kind.model_fields["spec"].description or spec_model.__doc__ or ""  # type: ignore[union-attr]
    status_schema = openapi_schema(status_model, in_spec=False)
    root: dict[str, Any] = {
        "type": "object",
        "description": (kind.__doc__ or "").strip(),
        "properties": {
            "apiVersion": {"type": "string", "description": "codeground.dev/v1alpha1"},
            "kind": {"type": "string", "description": name},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": kind.name_max_length}},  # type: ignore[attr-defined]
            },
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"] if "spec" in kind.model_fields and kind.model_fields["spec"].is_required() else [],
    }
    if not root["required"]:
        root.pop("required")
        # A default is validated (CEL included) without nested defaults applied: spell it out whole.
        spec_schema["default"] = spec_model().model_dump(by_alias=True, exclude_none=True, mode="json")  # type: ignore[misc, operator]
    if kind.rules:
        root["x-kubernetes-validations"] = [
            {"rule": r.cel, "message": r.message, **({"fieldPath": "." + r.field} if r.field else {})} for r in kind.rules
        ]
    subresources: dict[str, Any] = {"status": {}}
    if name == "Sandbox":
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}", "labels": {"app.kubernetes.io/part-of": "codeground"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": name,
                "listKind": f"{name}List",
                "plural": plural,
                "singular": name.lower(),
                "shortNames": SHORT_NAMES[name],
                "categories": ["codeground"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": PRINTER_COLUMNS[name],
                }
            ],
        },
    }


HEADER = "# Generated by `codeground crds` from pipeline/spec.py. Do not edit by hand.\n"


def render_crds() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    out = {}
    for kind in (api.TrainingRun, api.Sandbox):
        crd = build_crd(kind)
        text = yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)
        out[f"{crd['metadata']['name']}.yaml"] = HEADER + text
    return out
