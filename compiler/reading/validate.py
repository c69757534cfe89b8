"""Spec file -> validated `Spec`, or a `SpecError` listing every problem with its position."""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from compiler.reading import overrides as _overrides
from compiler.reading import rules
from compiler.reading.pairing import pairing
from compiler.core.errors import Path, Problem, SpecError, did_you_mean, format_path
from compiler.reading.loader import Document, load_file
from compiler.schema.spec import SUPPORTED_FORMATS, Spec


@dataclass(frozen=True)
class Validated:
    spec: Spec
    doc: Document
    path: str
    overrides: tuple[str, ...]

    @property
    def spec_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


def validate_file(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Validated:
    doc = load_file(path)
    _overrides.apply(doc, list(overrides))
    spec = validate_doc(doc, os.path.dirname(os.path.abspath(path)))
    return Validated(spec, doc, path, tuple(overrides))


def load_spec(path: str) -> Spec:
    """Another spec a spec names (a drafter's worker), validated like any."""
    return validate_doc(load_file(path), os.path.dirname(os.path.abspath(path)))


def validate_doc(doc: Document, spec_dir: str) -> Spec:
    data = doc.data
    version = data.get("modelspec")
    if "modelspec" not in data:
        raise SpecError([doc.problem((), "missing key 'modelspec' (the format version)", "add 'modelspec: 1' as the first key")])
    if type(version) is not int or version not in SUPPORTED_FORMATS:
        raise SpecError([doc.problem(("modelspec",), f"unsupported format version {version!r}",
                                     f"this compiler reads modelspec {', '.join(map(str, SUPPORTED_FORMATS))}")])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([_translate(doc, err) for err in exc.errors(include_url=False)]) from None
    findings = rules.check(spec, spec_dir) + list(pairing(spec, spec_dir, load_spec))
    if findings:
        raise SpecError([doc.problem(path, message, hint) for path, message, hint in findings])
    return spec


# Friendly rewrites kept as data: why a field only takes what it takes.
FIELD_HINTS = {
    "version": "quote a semver with three parts, e.g. version: 1.0.0",
    "architecture.rope.scaling": ("dynamic RoPE scaling depends on the padded length, so exported shapes would disagree; "
                                  "copy a checkpoint's static scaling as {kind: linear, ...} or {kind: llama3, ...}"),
    "shapes.batch": "on-device inference runs batch 1",
    "training.optimizer.name": "adamw is the only optimizer the runtime implements",
    "architecture.mlp.kind": "the student is a SwiGLU transformer",
    "training.optimizer.betas": "write [beta1, beta2], e.g. [0.9, 0.95]",
}


def _data_path(data: Any, loc: tuple, missing: bool) -> Path:
    """Drop union tags that pydantic inserts into `loc`; keep only real keys and indexes.

    A tag can equal a real key (the island union is tagged `module`/`op`): a key with a scalar
    value followed in `loc` by a sibling key (or a missing one) is a tag, not a step down.
    """
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        nxt = loc[i + 1] if i < len(loc) - 1 else None
        if (isinstance(node, dict) and isinstance(part, str) and part in node and nxt is not None
                and not isinstance(node[part], (dict, list)) and (nxt in node or (missing and i + 1 == len(loc) - 1))):
            continue
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif i == len(loc) - 1 and missing:
            out.append(part)
    return tuple(out)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "string": "a string",
               "dict": "a mapping", "list": "a list", "model": "a mapping"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}"


def _translate(doc: Document, err: dict) -> Problem:
    kind, loc, value = err["type"], err["loc"], err.get("input")
    path = _data_path(doc.data, loc, kind == "missing")
    if kind == "extra_forbidden":
        key = path[-1]
        allowed = _allowed_keys(doc.data, path[:-1])
        return doc.problem(path, f"unknown key '{key}'", did_you_mean(str(key), allowed) or
                           (f"allowed keys here: {', '.join(sorted(allowed))}" if allowed else None), key=True)
    if kind == "missing":
        return doc.problem(path, f"missing required key '{path[-1]}'",
                           "write the value explicitly: modelspec has no code defaults for values that shape a model")
    expected = kind.removesuffix("_type")
    if kind.endswith("_type") and expected in _TYPE_NAMES:
        hint = FIELD_HINTS.get(format_path(path))
        if expected == "bool":
            hint = "write true or false (in YAML 1.2 yes/no/on/off are strings, and types are strict)"
        elif isinstance(value, str) and expected in ("int", "float"):
            hint = "remove the quotes: types are strict (no \"400\" for a number)"
        elif isinstance(value, bool) and expected in ("int", "float"):
            hint = "write a number"
        elif isinstance(value, float) and expected == "int":
            hint = "write a whole number without a decimal point"
        return doc.problem(path, f"expected {_TYPE_NAMES[expected]}, got {_describe(value)}", hint)
    if kind == "literal_error":
        expected_values = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected_values.replace(" or ", ",").split(",") if c.strip()]
        return doc.problem(path, f"{_describe(value)} is not allowed; expected {expected_values}",
                           (did_you_mean(str(value), choices) if isinstance(value, str) else None) or FIELD_HINTS.get(format_path(path)))
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag_key = ctx.get("discriminator", "").strip("'")
        choices = [c.strip().strip("'") for c in ctx.get("expected_tags", "").split(",")]
        return doc.problem(path + ((tag_key,) if tag_key and isinstance(value, dict) and tag_key in value else ()),
                           f"unknown {tag_key} {ctx.get('tag')!r}; expected one of {', '.join(choices)}",
                           did_you_mean(str(ctx.get("tag")), choices))
    if kind == "union_tag_not_found":
        tag_key = err.get("ctx", {}).get("discriminator", "").strip("'")
        return doc.problem(path, f"missing required key {tag_key}", f"add {tag_key}: ... to say which kind this is")
    if kind in ("too_short", "too_long"):
        ctx = err.get("ctx", {})
        lo, hi = ctx.get("min_length"), ctx.get("max_length")
        want = f"exactly {lo}" if kind == "too_short" and lo == _max_len(err) else (f"at least {lo}" if kind == "too_short" else f"at most {hi}")
        return doc.problem(path, f"expected {want} items, got {ctx.get('actual_length')}", FIELD_HINTS.get(format_path(path)))
    if kind == "string_pattern_mismatch":
        if path and path[-1] == "api_key_env":  # never echo what may be a key: it names a variable
            return doc.problem(path, f"not an environment variable name (must match {err['ctx']['pattern']})",
                               "name the variable that holds the key, e.g. MOONSHOT_API_KEY; never write the key itself in a spec")
        return doc.problem(path, f"{_describe(value)} does not match {err['ctx']['pattern']}",
                           "names are lowercase letters, digits and '-', starting with a letter or digit; versions are semver like 1.2.0")
    message = err["msg"]
    if kind == "rope_scaling":
        return doc.problem(path, f"{message} (got {_describe(value)})", FIELD_HINTS["architecture.rope.scaling"])
    if message.startswith("Input should be"):
        message = "must be" + message[len("Input should be"):]
    return doc.problem(path, f"{message} (got {_describe(value)})" if not isinstance(value, (dict, list)) else message, None)


def _max_len(err: dict) -> int | None:
    return 2 if err["loc"][-1:] == ("betas",) else None


def _allowed_keys(data: Any, path: Path) -> list[str]:
    """Field names of the model at `path`, following the data to pick union members."""
    model: Any = Spec
    node = data
    for part in path:
        model = _element_type(model, part, node)
        node = node[part]
        if model is None:
            return []
    model = _pick_model(model, node)
    return list(model.model_fields) if model else []


def _element_type(model: Any, part: Any, node: Any) -> Any:
    model = _pick_model(model, node)
    if isinstance(model, type) and issubclass(model, BaseModel):
        field = model.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    origin = typing.get_origin(model)
    if origin in (list, dict):
        return typing.get_args(model)[-1]
    return None


def _pick_model(tp: Any, node: Any) -> Any:
    """Unwrap Annotated/Optional/Union to the model class that best fits `node`'s keys."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [_pick_model(a, node) for a in typing.get_args(tp)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if not models:
            return members[0] if members else None
        keys = set(node) if isinstance(node, dict) else set()
        return max(models, key=lambda m: (_tag_agrees(m, node), len(keys & set(m.model_fields)), -len(m.model_fields)))
    return tp


def _tag_agrees(model: type[BaseModel], node: Any) -> int:
    """1 when every Literal field present in `node` has an allowed value (the discriminator), else 0."""
    if not isinstance(node, dict):
        return 0
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is typing.Literal and name in node:
            if node[name] not in typing.get_args(field.annotation):
                return 0
    return 1
