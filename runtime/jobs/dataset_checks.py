"""Per-sample checks of the dataset job: the tool registry, splits, and one sample's validation
(keys and types, the tool call's name and JSON arguments against the registry, spans).

Split out of runtime/jobs/dataset.py, which tokenizes and writes; these are pure functions.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

VAL_FRACTION = 0.05
SPAN_MASKS = ("tool_name_mask", "json_args_mask", "integration_mask")
KEYS = {"id": str, "kind": str, "prompt": str, "target": str, "integration": list, "pii": list}
JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}
DEFAULT_MARKERS = {
    "tool_call_start": "<tool_call>", "tool_call_end": "</tool_call>",
    "tool_result_start": "<tool_result>", "tool_result_end": "</tool_result>",
    "think_end": "</think>",
}
_WS = re.compile(r"[ \t\n\r]*")


class Drops:
    """Dropped samples counted per output split and per input file, with up to 10 example ids per reason."""

    def __init__(self, splits: tuple[str, ...], files: list[str]) -> None:
        from collections import Counter

        self.by_split: dict[str, Counter] = {s: Counter() for s in splits}
        self.by_file: dict[str, Counter] = {f: Counter() for f in files}
        self.examples: dict[str, list[str]] = {}

    def add(self, split: str, fname: str, reason: str, sid: Any = None, raw: str = "") -> None:
        self.by_split[split][reason] += 1
        self.by_file[fname][reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < 10 and (isinstance(sid, str) or raw):
            bucket.append(sid if isinstance(sid, str) else raw[:80])


class DatasetJobError(RuntimeError):
    """Inputs the job cannot work with at all (missing files, a malformed registry, a wrong tokenizer)."""


# --------------------------------------------------------------------------------------------
# Registry, split, validation
# --------------------------------------------------------------------------------------------


def load_registry(path: Path) -> dict[str, dict[str, Any]]:
    """tool name -> {"types": {arg: json type}, "required": [...]}; malformed registries raise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetJobError(f"tool registry {path}: {exc}") from exc
    tools = data.get("tools") if isinstance(data, dict) else None
    if not isinstance(tools, list):
        raise DatasetJobError(f"tool registry {path}: expected {{\"tools\": [...]}}")
    registry: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tool registry {path}: tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise DatasetJobError(f"{where}: needs a string 'name'")
        params = tool.get("parameters", {"properties": {}, "required": []})
        props = params.get("properties", {}) if isinstance(params, dict) else None
        required = params.get("required", []) if isinstance(params, dict) else None
        if not isinstance(props, dict) or not isinstance(required, list):
            raise DatasetJobError(f"{where} ({tool['name']}): parameters need 'properties' (object) and 'required' (list)")
        types = {}
        for arg, spec in props.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            if kind not in JSON_TYPES:
                raise DatasetJobError(f"{where} ({tool['name']}): argument '{arg}' has unsupported type {kind!r}")
            types[arg] = kind
        missing = [r for r in required if r not in types]
        if missing:
            raise DatasetJobError(f"{where} ({tool['name']}): required {missing} not among the properties")
        if tool["name"] in registry:
            raise DatasetJobError(f"{where}: tool '{tool['name']}' listed twice")
        registry[tool["name"]] = {"types": types, "required": list(required)}
    return registry


def split_of(sample_id: str, val_fraction: float = VAL_FRACTION) -> str:
    """'val' or 'train' for a train-file sample, from sha256(id) as a fraction of 2**64."""
    # surrogatepass: an id JSON spells with a lone surrogate still splits (its row is dropped for its schema)
    h = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return "val" if h / 2.0**64 < val_fraction else "train"


def top_level_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of each top-level value of a JSON object (``text`` must be valid JSON)."""
    dec = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if text[i:i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _WS.match(text, i + 1).end()
    spans: dict[str, tuple[int, int]] = {}
    if text[i:i + 1] == "}":
        return spans
    while True:
        if text[i:i + 1] != '"':
            raise ValueError(f"expected a key at {i}")
        key, i = json.decoder.scanstring(text, i + 1)
        i = _WS.match(text, i).end()
        if text[i:i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        i = _WS.match(text, i + 1).end()
        _, end = dec.raw_decode(text, i)
        spans[key] = (i, end)
        i = _WS.match(text, end).end()
        if text[i:i + 1] == ",":
            i = _WS.match(text, i + 1).end()
            continue
        if text[i:i + 1] == "}":
            return spans
        raise ValueError(f"expected ',' or '}}' at {i}")


def _final_answer_start(target: str, markers: dict[str, str]) -> int:
    for marker in (markers["tool_result_end"], markers["think_end"]):
        at = target.rfind(marker)
        if at >= 0:
            return at + len(marker)
    return 0


def check_sample(sample: Any, registry: dict, markers: dict[str, str], seen: set[str]) -> tuple[str | None, dict]:
    """(reason to drop or None, character spans within the target for the masks)."""
    if not isinstance(sample, dict):
        return "bad_line", {}
    for key, typ in KEYS.items():
        if not isinstance(sample.get(key), typ):
            return "bad_schema", {}
    if not all(isinstance(s, str) and s for s in sample["integration"] + sample["pii"]):
        return "bad_schema", {}
    call_field = sample.get("tool_call")
    if call_field is not None and not isinstance(call_field, dict):
        return "bad_schema", {}
    if sample["id"] in seen:
        return "duplicate_id", {}
    seen.add(sample["id"])
    target = sample["target"]
    if any(p in target for p in sample["pii"]):
        return "pii_in_target", {}

    start, end = markers["tool_call_start"], markers["tool_call_end"]
    n_start, n_end = target.count(start), target.count(end)
    spans: dict[str, list[tuple[int, int]]] = {m: [] for m in SPAN_MASKS}
    parsed = None
    if n_start or n_end:
        body_start = target.find(start) + len(start)
        body_end = target.find(end, body_start)
        if n_start != 1 or n_end != 1 or body_end < 0:
            return "bad_call_markup", {}
        body = target[body_start:body_end]
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            return "bad_json", {}
        if (not isinstance(parsed, dict) or set(parsed) != {"name", "arguments"} or not isinstance(parsed["name"], str)
                or not isinstance(parsed["arguments"], dict)):
            return "bad_call_shape", {}
        tool = registry.get(parsed["name"])
        if tool is None:
            return "unknown_tool", {}
        args = parsed["arguments"]
        if any(r not in args for r in tool["required"]):
            return "missing_required", {}
        for arg, value in args.items():
            if arg in tool["types"] and not JSON_TYPES[tool["types"][arg]](value):
                return "wrong_type", {}
        if any(arg not in tool["types"] for arg in args):
            return "unknown_argument", {}
        if parsed != call_field:
            return "call_mismatch", {}
        top = top_level_spans(body)
        ns, ne = top["name"]
        spans["tool_name_mask"].append((body_start + ns + 1, body_start + ne - 1))  # inside the quotes
        a_s, a_e = top["arguments"]
        spans["json_args_mask"].append((body_start + a_s, body_start + a_e))
    elif call_field is not None:
        return "call_mismatch", {}
    if parsed is not None and sample["kind"] == "control":
        return "control_with_tool_call", {}
    if parsed is None and sample["kind"] == "tool":
        return "tool_kind_without_call", {}
    answer = _final_answer_start(target, markers)
    for text in sample["integration"]:
        at = target.find(text, answer)
        if at < 0:
            return "integration_missing", {}
        while at >= 0:
            spans["integration_mask"].append((at, at + len(text)))
            at = target.find(text, at + len(text))
    return None, spans


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------
