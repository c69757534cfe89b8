"""The compiler's rules that JSON Schema can say, added to the pydantic models' schema.

`Spec.model_json_schema()` knows each field's type; the rules of `compiler/reading/rules.py`
(and the format check of `validate.py`) know more. Wherever the schema language can state a
rule (a const, an enum, a bound, a pattern, `required`, `uniqueItems`, `propertyNames`, or an
`if`/`then` on a sibling's value), it is stated here, from the same constants the compiler
checks, so an editor validating against `generated/modelspec.schema.json` refuses what
`modelspec validate` refuses. What it cannot say (comparisons between two values, arithmetic,
order, uniqueness of one key across list items or map values, what the architecture implies,
files on disk, YAML-level problems) stays with the compiler;
`tests/compiler/test_schema_agreement.py` checks both sides on a catalogue of wrong specs.
"""

from __future__ import annotations

import math
from typing import Any

from compiler.analysis.catalogue import CATALOGUE, KIND_BOUNDS, KIND_OPS
from compiler.reading.rules import REQUIRED_TOKENS, TOKEN_NAME, TOOL_TOKENS
from compiler.schema.spec import SUPPORTED_FORMATS

NOT_BLANK = r"\S"  # rules._paths: a path that is empty or only whitespace


def _when(key: str, values: list[Any], then: dict[str, Any], otherwise: dict[str, Any] | None = None) -> dict[str, Any]:
    cond = {"const": values[0]} if len(values) == 1 else {"enum": values}
    rule = {"if": {"properties": {key: cond}, "required": [key]}, "then": then}
    if otherwise is not None:
        rule["else"] = otherwise
    return rule


def add_rules(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (Spec's JSON Schema) with the expressible rules added, in place; returns it."""
    defs, props = schema["$defs"], schema["properties"]

    # validate.py: the format version
    formats = list(SUPPORTED_FORMATS)
    props["modelspec"] |= {"const": formats[0]} if len(formats) == 1 else {"enum": formats}

    # rules._paths: every path field (unit "path") must not be blank
    for model in defs.values():
        for field in model.get("properties", {}).values():
            if field.get("unit") == "path":
                field["pattern"] = NOT_BLANK

    # rules._teacher: the reserved HTTP teacher is refused
    props["teacher"]["not"] = {"properties": {"kind": {"const": "openai_compatible"}}, "required": ["kind"]}

    # rules._tokens: names, whitespace, the required tokens (the eval job's markers, every role)
    tokens = defs["Tokenizer"]["properties"]["special_tokens"]
    tokens["propertyNames"] = {"pattern": TOKEN_NAME.pattern}
    tokens["required"] = list(REQUIRED_TOKENS + TOOL_TOKENS)
    defs["SpecialToken"]["properties"]["text"]["pattern"] = r"^\S+$"
    conditions: list = []

    # rules._shapes: each prefill shape once
    defs["Shapes"]["properties"]["prefill"]["uniqueItems"] = True

    # rules._training: at least one loss term with a weight above 0 (a schedule counts), and
    # no multi-process training on mps
    losses = defs["Losses"]["properties"]
    active = {"anyOf": [{"type": "object"}, {"type": "number", "exclusiveMinimum": 0}]}
    defs["Losses"]["anyOf"] = [{"properties": {name: {"type": "object", "properties": {"weight": active}}}, "required": [name]}
                               for name in sorted(losses)]
    defs["Resources"].setdefault("allOf", []).append(
        _when("device", ["mps"], {"properties": {"nproc": {"const": 1}, "nodes": {"const": 1}}}))

    # rules._quantization: block_size exactly when granularity is per_block
    for name in ("Quantized", "QuantizedRule"):
        defs[name].setdefault("allOf", []).append(_when(
            "granularity", ["per_block"],
            {"required": ["block_size"], "properties": {"block_size": {"type": "integer"}}},
            {"properties": {"block_size": {"type": "null"}}}))

    # rules._gates: metrics from the catalogue; per kind the operators, the range, whole counts;
    # min_n only for metrics measured over samples
    gate = defs["Gate"]
    gate["properties"]["metric"]["enum"] = sorted(CATALOGUE)
    rules = []
    for kind in sorted({m.kind for m in CATALOGUE.values()}):
        names = sorted(n for n, m in CATALOGUE.items() if m.kind == kind)
        value: dict[str, Any] = {}
        lo, hi = KIND_BOUNDS[kind]
        if math.isfinite(lo):
            value["minimum"] = lo
        if math.isfinite(hi):
            value["maximum"] = hi
        if kind == "count":
            value["multipleOf"] = 1
        then: dict[str, Any] = {"properties": {"op": {"enum": list(KIND_OPS[kind])}}}
        if value:
            then["properties"]["value"] = value
        rules.append(_when("metric", names, then))
    without_n = sorted(n for n, m in CATALOGUE.items() if not m.has_n)
    rules.append(_when("metric", without_n, {"properties": {"min_n": {"type": "null"}}}))
    gate["allOf"] = rules

    schema["allOf"] = conditions
    return schema
