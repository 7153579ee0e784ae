"""Read and validate TrainingRun and Sandbox documents: the door every spec comes through.

Used by ``codeground validate``, ``codeground run``, the stage entrypoint in pods and the operator.
It applies the same rules the API server applies with the generated CRDs: the schema (types, enums,
bounds, unknown fields) through the pydantic models, then every cross-field :class:`Rule`.
Every problem becomes one ``(field path, message)`` pair in a :class:`SpecError`.

Hostile input is refused before parsing: files over :data:`MAX_FILE_BYTES`, bytes that are not
UTF-8, and YAML anchors/aliases (an alias bomb expands a few hundred bytes into gigabytes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from . import spec as api
from .errors import SpecError

# The API server refuses objects over ~1.5 MB; a spec is a few KB. Refuse big files before parsing.
MAX_FILE_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                "while reading", None, "YAML aliases (*name) are not supported in codeground documents", event.start_mark
            )
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.MarkedYAMLError(
                "while reading", None, f"YAML anchors (&{anchor}) are not supported in codeground documents", event.start_mark
            )
        return super().compose_node(parent, index)


def read_documents(path: str | Path) -> list[dict[str, Any]]:
    """Return the YAML documents of ``path`` (``-`` is not supported); raise SpecError naming the file."""
    source = str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise SpecError([("", f"cannot read file: {exc.strerror}")], source) from None
    if size > MAX_FILE_BYTES:
        raise SpecError([("", f"file is {size} bytes; a spec may be at most {MAX_FILE_BYTES} bytes")], source)
    raw = p.read_bytes()
    return parse_documents(raw, source)


def parse_documents(raw: bytes | str, source: str = "<input>") -> list[dict[str, Any]]:
    if isinstance(raw, bytes):
        if len(raw) > MAX_FILE_BYTES:
            raise SpecError([("", f"input is {len(raw)} bytes; a spec may be at most {MAX_FILE_BYTES} bytes")], source)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError([("", f"not UTF-8: invalid byte at offset {exc.start}")], source) from None
    else:
        text = raw
    try:
        docs = [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError([("", f"invalid YAML: {where}{exc.problem or exc.context}")], source) from None
    except yaml.YAMLError as exc:
        raise SpecError([("", f"invalid YAML: {exc}")], source) from None
    if not docs:
        raise SpecError([("", "no YAML document found")], source)
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise SpecError([(f"document {i + 1}", f"expected a mapping with apiVersion and kind, got {type(doc).__name__}")], source)
    return docs


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "constrained-str", "function-after", "literal", "lax-or-strict") or (
            isinstance(part, str) and (part.startswith("function-") or part.startswith("json-or-python"))
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_errors(exc: ValidationError) -> list[tuple[str, str]]:
    by_path: dict[str, list[Any]] = {}
    for err in exc.errors(include_url=False):
        by_path.setdefault(_format_loc(err["loc"]), []).append(err)
    out: list[tuple[str, str]] = []
    for path, errs in by_path.items():
        types = {e["type"] for e in errs}
        if len(errs) > 1 and types <= {"int_type", "string_type", "int_parsing", "string_pattern_mismatch", "int_from_float", "greater_than_equal"}:
            out.append((path, f"expected an integer or a Kubernetes quantity such as 500m or 8Gi, got {_short(errs[0]['input'])}"))
            continue
        for e in errs:
            if e["type"] == "extra_forbidden":
                out.append((path, "unknown field"))
            elif e["type"] == "missing":
                out.append((path, "required field is missing"))
            else:
                out.append((path, f"{e['msg']} (got {_short(e['input'])})"))
    return out


def _rule_errors(obj: Any, path: str) -> list[tuple[str, str]]:
    """Evaluate every Rule of ``obj`` and its children; paths use the wire (camelCase) names."""
    out: list[tuple[str, str]] = []
    if isinstance(obj, api.ApiModel):
        for rule in type(obj).rules:
            try:
                ok = rule.check(obj)
            except Exception:  # a rule over a part that failed to parse; schema errors cover it
                ok = True
            if not ok:
                where = f"{path}.{rule.field}" if path and rule.field else (rule.field or path)
                out.append((where, rule.message))
        for name, field in type(obj).model_fields.items():
            alias = field.alias or name
            out.extend(_rule_errors(getattr(obj, name), f"{path}.{alias}" if path else alias))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            out.extend(_rule_errors(item, f"{path}[{i}]"))
    return out


def parse_object(doc: dict[str, Any], source: str | None = None) -> api.TrainingRun | api.Sandbox:
    """Validate one document exactly as the API server would and return the typed object."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version != api.API_VERSION:
        raise SpecError([("apiVersion", f"expected {api.API_VERSION}, got {_short(api_version)}")], source)
    model = api.KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SpecError([("kind", f"expected one of {', '.join(api.KINDS)}, got {_short(kind)}")], source)
    try:
        obj = model.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(_pydantic_errors(exc), source) from None
    errors = _rule_errors(obj, "")
    limit = getattr(model, "name_max_length", 253)
    if len(obj.metadata.name) > limit:  # type: ignore[attr-defined]
        errors.insert(0, ("metadata.name", f"may not be more than {limit} bytes (it prefixes the names of the objects it creates)"))
    if errors:
        raise SpecError(errors, source)
    return obj  # type: ignore[return-value]


def load_file(path: str | Path) -> list[api.TrainingRun | api.Sandbox]:
    """Read, parse and validate every document of a file; all errors of all documents at once."""
    docs = read_documents(path)
    objs: list[api.TrainingRun | api.Sandbox] = []
    errors: list[tuple[str, str]] = []
    for i, doc in enumerate(docs):
        prefix = f"document {i + 1}: " if len(docs) > 1 else ""
        try:
            objs.append(parse_object(doc))
        except SpecError as exc:
            errors.extend((p, prefix + m) if not p else (f"{prefix}{p}", m) for p, m in exc.errors)
    if errors:
        raise SpecError(errors, str(path))
    return objs


def load_training_run(path: str | Path) -> api.TrainingRun:
    """The single TrainingRun in ``path`` (a Sandbox beside it is allowed and ignored)."""
    runs = [o for o in load_file(path) if isinstance(o, api.TrainingRun)]
    if len(runs) != 1:
        raise SpecError([("kind", f"expected exactly one TrainingRun document, found {len(runs)}")], str(path))
    return runs[0]


def dump_object(obj: api.ApiModel) -> dict[str, Any]:
    """The wire form (camelCase, no None fields) of an API object, for ConfigMaps and manifests."""
    return obj.model_dump(by_alias=True, exclude_none=True, mode="json")
