"""The field reference of docs/spec.md, generated from the pydantic models and job READS.

Every field's type, unit, meaning and the job kinds that read it come from one place, so the
reference cannot drift from the code; a test fails when docs/spec.md is stale.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from compiler.analysis.catalogue import CATALOGUE, KIND_BOUNDS, KIND_OPS
from compiler.planning.jobs import KINDS, READS
from compiler.schema.spec import Spec

BEGIN = "<!-- BEGIN GENERATED REFERENCE (modelspec schema --format markdown) -->"
END = "<!-- END GENERATED REFERENCE -->"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        args = typing.get_args(tp)
        base = _type_name(args[0])
        bounds = []
        for meta in args[1:]:
            for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                for m in getattr(meta, "metadata", [meta]):
                    v = getattr(m, attr, None)
                    if v is not None:
                        bounds.append(f"{sym} {v}")
            if getattr(meta, "pattern", None):
                bounds.append(f"matches `{meta.pattern}`")
        return base + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" if not isinstance(a, bool) else f"`{str(a).lower()}`" for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + (
            " (optional)" if type(None) in typing.get_args(tp) else "")
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"map of name to {_type_name(typing.get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"mapping ({tp.__name__})"
    return {int: "int", float: "float", str: "string", bool: "bool"}.get(tp, str(tp))


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models_in(a)]


def _readers(path: str) -> str:
    plain = path.replace("[]", "").replace(".<name>", "")
    kinds = [k for k in KINDS if any(plain == r or plain.startswith(r + ".") or r.startswith(plain + ".") for r in READS[k])]
    return ", ".join(kinds) if kinds else "compiler only"


def _default(field) -> str:
    """A default as people read it: the value, or for a section built by a factory, that its fields default."""
    if field.default_factory is not None:
        return "every field's default"
    return f"`{field.default}`"


def _rows(model: type[BaseModel], prefix: str, out: list[str], seen: set[str]) -> None:
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        unit = (field.json_schema_extra or {}).get("unit", "") if isinstance(field.json_schema_extra, dict) else ""
        required = "yes" if field.is_required() else f"no (default {_default(field)})"
        key = f"{path}|{model.__name__}"
        if key in seen:
            continue
        seen.add(key)
        bounds = [f"{sym} {getattr(m, attr)}" for m in field.metadata for attr, sym in
                  (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if getattr(m, attr, None) is not None]
        bounds += [f"matches `{m.pattern}`" for m in field.metadata if getattr(m, "pattern", None)]
        type_text = _type_name(field.annotation) + (f" ({', '.join(bounds)})" if bounds else "")
        out.append(f"| `{path}` | {type_text} | {unit or '-'} | {required} | "
                   f"{(field.description or '').replace('|', '/')} | {_readers(path)} |")
        sub_prefix = path
        origin = typing.get_origin(field.annotation)
        if origin is list:
            sub_prefix = path + "[]"
        elif origin is dict:
            sub_prefix = path + ".<name>"
        for sub in _models_in(field.annotation):
            _rows(sub, sub_prefix, out, seen)


def reference_markdown() -> str:
    rows: list[str] = []
    _rows(Spec, "", rows, set())
    lines = [BEGIN, "", "### Fields", "",
             "| key path | type | unit | required | meaning | read by jobs |", "|---|---|---|---|---|---|", *rows, "",
             "### Gate metric catalogue", "",
             "| metric | kind | range | operators | measured by | samples (min_n) | meaning |", "|---|---|---|---|---|---|---|"]
    for m in CATALOGUE.values():
        lo, hi = KIND_BOUNDS[m.kind]
        lines.append(f"| `{m.name}` | {m.kind} | [{lo:g}, {hi:g}] | {' '.join(f'`{o}`' for o in KIND_OPS[m.kind])} | "
                     f"{m.producer} | {'yes' if m.has_n else 'no'} | {m.description} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def splice(doc: str) -> str:
    """Replace the generated section of docs/spec.md."""
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + reference_markdown().rstrip("\n") + tail
